"""A multi-host job equals a single-host one: two local JAX processes with four CPU devices each
(loopback, gloo collectives) run the jobs that one process with eight devices runs -- distillation
stopped at ``train.max_steps`` and resumed to more steps, then GRPO from that checkpoint, stopped
by SIGTERM inside a rollout (with a mini-batch of it still to train on) and resumed, then policy GRPO
rewarded by the distilled checkpoint as a judge (knockout brackets, each process judging its own
samples through the judge's generation engine) -- on the same
(data, fsdp, tensor) mesh, whose fsdp axis spans the two processes (parameters and batch rows
are split between them). Both jobs must log the same per-step losses and metrics and end with
the same parameters (in memory and in the checkpoints), and what a job writes once (the resolved
config.yaml, metrics.jsonl, TensorBoard events, the tokenized records, the checkpoint's JSON
items) is written once, by one process: the files equal the single-process run's."""

import itertools
import json
import os
import time

import grain
import numpy as np
import pytest
import yaml

from mp_launch import start_job
from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.demos.rmr1 import write_demo_prompts
from rmr1_jax.text.tokenizer import train_sentencepiece


def multihost(test):
    """The tests of the two jobs: several local processes, and a while."""
    return pytest.mark.multiprocess(pytest.mark.slow(test))


MESH = {"data": 1, "fsdp": 4, "tensor": 2}  # fsdp over both processes' devices, tensor inside each
SFT_STOP, SFT_STEPS = 3, 6
ROLLOUTS, UPDATES = 3, 2  # GRPO: rollout steps, updates per rollout (ppo_epochs=2)
GRPO_STOP = 3  # SIGTERM during the first update of the second rollout: one mini-batch held
POLICY_ROLLOUTS = 2  # policy GRPO: rollout steps, one update each
RUNS = {"1x8": (1, 8), "2x4": (2, 4)}  # name: (processes, devices per process)
# per-step values that are timings (or derived from them), not results
TIMINGS = {"step_time_s", "tokens_per_s", "mfu", "rollout_tokens_per_s", "time_rollout_s", "time_reference_s",
           "time_old_logprobs_s", "time_update_s", "time_reward_s"}
# Measured on CPU (float32): losses and metrics within ~1e-6 relative (KL ~2e-6), parameters
# within ~2e-6 (SFT) and ~4e-5 (GRPO) absolute, the largest where the true gradient is zero
# (the key-projection bias: softmax ignores a shift shared by every key), so Adam's normalized
# update turns rounding noise into steps of the learning rate's size. A real divergence (other
# rows, other samples) moves every parameter by about the learning rate (3e-3).
RTOL = {"sft": 1e-5, "grpo": 1e-4, "policy": 1e-4}
PARAM_ATOL = 1e-4
PARAM_BULK_ATOL, PARAM_BULK_FRACTION = 1e-6, 1e-3  # all but this fraction of the values within it
# less LLVM optimization: compiles dominate the test's time (both jobs use the same flags)
XLA_FLAGS = "--xla_backend_optimization_level=0"


def _grpo_seed():
    """A seed whose shuffle of the two GRPO prompts puts them out of order (prompt 1 first), so
    the test sees how the prompts are dealt: GRPO shuffles its prompts globally, then deals
    each update's block of them to the processes (rmr1_jax/train/grpo.py ``prompt_stream``), so
    process p draws what the one-process run draws for its rows. Dealt before shuffling (each
    process shuffling its own half), process p would draw prompt p at every rollout, here not
    what the one-process run draws. (The samples are the same too: each row's key depends on
    the seed, the rollout count and the prompt's index in the rollout step, not on the
    process.)"""
    for seed in range(1000):
        if list(grain.MapDataset.range(2).shuffle(seed=seed))[0] == 1:
            return seed
    raise AssertionError("no seed puts the GRPO prompts out of order")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("multihost"))


def make_data(root):
    """Distillation traces (train, held out) and two GRPO pairs, the demo's judge prompt files
    and a SentencePiece tokenizer trained on the traces."""
    pairs = synthetic.generate_pairs(40, seed=5, kinds=("compare", "caps_word"))
    files, template = write_demo_prompts(str(root / "prompts"))  # the demo's short judge prompt
    traces = synthetic.make_distillation_examples(pairs, seed=0, template=template, style="compact")
    paths = {"sft_train": str(root / "traces.jsonl"), "sft_eval": str(root / "heldout.jsonl"),
             "grpo_train": str(root / "pairs.jsonl")}
    synthetic.write_traces_jsonl(paths["sft_train"], traces[:32])
    synthetic.write_traces_jsonl(paths["sft_eval"], traces[32:38])
    synthetic.write_pairs_jsonl(paths["grpo_train"], pairs[:2])
    paths["policy_train"] = str(root / "policy_prompts.jsonl")
    with open(paths["policy_train"], "w") as f:
        for p in pairs[2:4]:
            f.write(json.dumps({"prompt": p.prompt[-1]["content"], "answer": p.chosen[-1]["content"]}) + "\n")
    texts = [m["content"] for ex in traces for m in ex.messages] + [ex.target for ex in traces]
    train_sentencepiece(texts, str(root / "tok"), vocab_size=400)
    return root, paths, str(root / "tok"), files


def _job_spec(root, name, paths, tok_dir, files):
    """The worker's spec for one job: its configs (run directories under ``root/name``)."""
    base = root / name
    os.makedirs(base)
    prompt = {"variant": "instruct", "system_file": files["system"], "user_file": files["user"],
              "user_multiturn_file": files["user_multiturn"]}
    common = {"mesh": MESH, "tokenizer": {"path": tok_dir}, "prompt": prompt}

    def write(fname, cfg):
        with open(base / fname, "w") as f:
            yaml.safe_dump({**common, **cfg}, f)
        return str(base / fname)

    sft_dir = str(base / "sft")
    sft = {
        "model": {"preset": "tiny", "dtype": "float32", "param_dtype": "float32", "scan_layers": False},
        "data": {"train": [paths["sft_train"]], "eval": [paths["sft_eval"]], "max_length": 384,
                 "overlong": "skip"},
        "optim": {"lr": 3e-3, "schedule": "constant", "warmup_steps": 1},  # one program for both runs
        "train": {"run_dir": sft_dir, "global_batch": 8, "micro_batch": 4, "max_steps": SFT_STOP,
                  "progress": False, "peak_flops": 1e12, "log_every": 1},
        "checkpoint": {"save_every": 1000, "keep": 3},
    }
    sft_resume = {**sft, "train": {**sft["train"], "max_steps": SFT_STEPS}}
    grpo = {
        "model": {"preset": None, "init_checkpoint": os.path.join(sft_dir, "checkpoints"), "dtype": "float32",
                  "param_dtype": "float32", "scan_layers": False},
        "data": {"train": [paths["grpo_train"]], "max_length": 384},
        "optim": {"lr": 3e-3, "schedule": "constant", "warmup_ratio": 0.0},
        # the entropy and KL terms give every row a gradient, so the parameters move at each update
        "grpo": {"n": 4, "max_prompt_tokens": 384, "max_response_tokens": 8, "prompts_per_step": 2,
                 "minibatch_prompts": 2, "ppo_epochs": UPDATES, "rollout_steps": ROLLOUTS,
                 "logprob_batch": 4, "kl_estimator": "k3", "kl_coef": 0.1, "entropy_coef": 0.01},
        "train": {"run_dir": str(base / "grpo"), "seed": _grpo_seed(), "progress": False, "peak_flops": 1e12,
                  "log_every": 1},
        "checkpoint": {"save_every": 1000, "keep": 3},
    }
    # the policy: the distilled model, rewarded by the same checkpoint as a judge (its prompt files
    # from its run config); a knockout's ties (a tiny judge seldom writes a verdict) go by a coin
    # keyed by the prompt, so the rewards vary within a group and agree across process counts
    policy = {**grpo, "data": {"train": [paths["policy_train"]]},
              "grpo": {**grpo["grpo"], "ppo_epochs": 1, "rollout_steps": POLICY_ROLLOUTS},
              "policy_reward": {"kind": "judge", "ckpt": os.path.join(sft_dir, "checkpoints"), "scheme": "knockout",
                                "max_new_tokens": 6, "batch_size": 8, "check": "oracle", "check_weight": 0.5},
              "train": {**grpo["train"], "run_dir": str(base / "policy")}}
    spec = {"sft": [write("sft.yaml", sft), write("sft_resume.yaml", sft_resume)], "grpo": write("grpo.yaml", grpo),
            "policy": write("policy.yaml", policy),
            "grpo_stop_at": GRPO_STOP, "out": str(base), "compilation_cache": str(base / "jax-cache")}
    with open(base / "spec.json", "w") as f:
        json.dump(spec, f)
    return str(base / "spec.json")


@pytest.fixture(scope="module")
def runs(data):
    """Both jobs, started together (each is mostly start-up and compiles), and what they wrote."""
    root, paths, tok_dir, files = data
    worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
    t0 = time.perf_counter()
    jobs = {name: start_job(worker, [_job_spec(root, name, paths, tok_dir, files)], processes=n, devices=d,
                            xla_flags=XLA_FLAGS) for name, (n, d) in RUNS.items()}
    try:
        for job in jobs.values():
            job.wait(timeout=400)
    finally:  # one job failed: the other is not left running
        for job in jobs.values():
            job.kill()
    out = {}
    for name, (n, _) in RUNS.items():
        results = []
        for pid in range(n):
            with open(root / name / f"result.{pid}.json") as f:
                results.append(json.load(f))
        out[name] = results
        print(f"\n{name}: seconds per stage (process 0): {results[0]['seconds']}")
    print(f"both jobs: {time.perf_counter() - t0:.0f} s")
    return root, out


def _rows(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert len(lines) == len(set(lines)), f"{path}: repeated lines"
    rows = [json.loads(line) for line in lines]
    keys = [(r["step"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)), f"{path}: a step logged twice: {keys}"
    return rows


def _npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@multihost
def test_both_jobs_ran_as_planned(runs):
    _, res = runs
    for name, (n, d) in RUNS.items():
        assert len(res[name]) == n
        for r in res[name]:
            assert (r["process_count"], r["device_count"], r["local_devices"]) == (n, 8, d)
            st = r["stages"]
            assert (st["sft_stop"]["step"], st["sft_resume"]["step"]) == (SFT_STOP, SFT_STEPS)
            assert st["sft_stop"]["resumed"] == [] and len(st["sft_resume"]["resumed"]) == 1
            assert st["sft_resume"]["resumed"][0].endswith(f"at step {SFT_STOP}")
            assert st["grpo_stop"]["stopped"] and st["grpo_stop"]["step"] == GRPO_STOP
            assert len(st["grpo_stop"]["received_signal"]) == 1  # every process stops, signalled or not
            assert st["grpo_resume"]["step"] == ROLLOUTS * UPDATES and not st["grpo_resume"]["stopped"]
            assert len(st["grpo_resume"]["resumed"]) == 1
            assert st["grpo_resume"]["resumed"][0].endswith(f"at step {GRPO_STOP}")
            assert st["policy"]["step"] == POLICY_ROLLOUTS and not st["policy"]["stopped"]


@multihost
@pytest.mark.parametrize("stage", ["sft", "grpo", "policy"])
def test_same_losses_and_metrics(runs, stage):
    root, _ = runs
    one, two = (_rows(root / name / stage / "metrics.jsonl") for name in RUNS)
    want_train = list(range(1, {"sft": SFT_STEPS, "grpo": ROLLOUTS * UPDATES, "policy": POLICY_ROLLOUTS}[stage] + 1))
    assert [r["step"] for r in one if r["split"] == "train"] == want_train
    assert [(r["step"], r["split"]) for r in one] == [(r["step"], r["split"]) for r in two]
    worst = {}
    for a, b in zip(one, two):
        assert a.keys() == b.keys(), (a["step"], sorted(set(a) ^ set(b)))
        for k in sorted(set(a) - TIMINGS - {"step", "split"}):
            rel = abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) if a[k] != b[k] else 0.0
            worst[k] = max(worst.get(k, 0.0), rel)
    print(f"\n{stage}: max relative difference per metric: {json.dumps(worst)}")
    for a, b in zip(one, two):
        for k in sorted(set(a) - TIMINGS - {"step", "split"}):
            assert a[k] == pytest.approx(b[k], rel=RTOL[stage], abs=1e-6), (a["step"], a["split"], k, a[k], b[k])
    if stage == "sft":
        assert len([r for r in one if r["split"] == "eval"]) == 2  # at the stop and at the end
    else:  # the rewards vary, so the advantages and the clipped loss are not all zero
        assert any(r["zero_advantage_rate"] < 1 for r in one if "zero_advantage_rate" in r)
    if stage == "policy":  # the judge ran on both jobs: a knockout of 4 is 3 matches, 6 judgments a prompt
        assert [r["judge_calls_per_prompt"] for r in one if "judge_calls_per_prompt" in r] == [6.0] * POLICY_ROLLOUTS
        assert [r["judge_calls_per_step"] for r in two if "judge_calls_per_step" in r] == [12.0] * POLICY_ROLLOUTS


@multihost
@pytest.mark.parametrize("stage", ["sft", "grpo", "policy"])
def test_same_final_parameters(runs, stage):
    """In memory (gathered by the worker) and as saved in the last checkpoint."""
    root, _ = runs
    one, two = (_npz(root / name / f"{stage}.npz") for name in RUNS)
    assert one.keys() == two.keys() and one
    diffs = np.concatenate([np.abs(one[k] - two[k]).ravel() for k in sorted(one)])
    loose = float(np.mean(diffs > PARAM_BULK_ATOL))
    print(f"\n{stage}: max |param difference| in memory: {diffs.max():.3g} (fraction over {PARAM_BULK_ATOL:g}: "
          f"{loose:.2g} of {diffs.size})")
    assert diffs.max() <= PARAM_ATOL and loose <= PARAM_BULK_FRACTION
    start = _npz(root / "2x4" / "sft.npz") if stage != "sft" else None
    if start is not None:  # GRPO moved the parameters (by far more than the two jobs differ)
        moved = max(float(np.max(np.abs(two[k] - start[k]))) for k in two)
        assert moved > (100 if stage == "grpo" else 20) * PARAM_ATOL  # policy: 2 updates, grpo: 6

    import jax

    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.parallel.mesh import make_mesh

    mesh = make_mesh((1, 8, 1))
    for name, in_memory in zip(RUNS, (one, two)):  # each checkpoint holds what its run ended with
        _, params = load_model(str(root / name / stage / "checkpoints"), "lm", mesh=mesh, kind="orbax")
        saved = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
                 for path, x in jax.tree_util.tree_leaves_with_path(params)}
        assert saved.keys() == in_memory.keys()
        assert all(np.array_equal(saved[k], in_memory[k]) for k in saved), name


def _normalized(text, name):
    return text.replace(f"/{name}/", "/RUN/")


def _files(run_dir):
    """Relative paths of every file in a run directory, but for the Orbax state items (written
    by every process: each writes its own shards) and the TensorBoard event files (their names
    hold the host and time)."""
    out = []
    for dirpath, _, names in os.walk(run_dir):
        rel = os.path.relpath(dirpath, run_dir)
        if "/state" in f"/{rel}" or "/source" in f"/{rel}" or rel.startswith("tb"):
            continue
        out += [os.path.normpath(os.path.join(rel, n)) for n in names]
    return sorted(out)


@multihost
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_written_once(runs, stage):
    root, _ = runs
    dirs = {name: root / name / stage for name in RUNS}
    # config.yaml: the resolved config, by process 0 alone (atomic write: no temporary left over)
    texts = {name: _normalized((d / "config.yaml").read_text(), name) for name, d in dirs.items()}
    assert texts["1x8"] == texts["2x4"]
    assert _files(dirs["1x8"]) == _files(dirs["2x4"])  # the same files, the record cache's included
    # one TensorBoard event file per run() (stop and resume), written by process 0
    for d in dirs.values():
        assert len(os.listdir(d / "tb")) == 2, os.listdir(d / "tb")
    # the checkpoints' steps and their JSON items (written by process 0: Orbax's JSON handler)
    from rmr1_jax.checkpoint.manager import CheckpointManager

    items = {}
    for name, d in dirs.items():
        with CheckpointManager(str(d / "checkpoints"), read_only=True) as m:
            steps = m.all_steps()
        items[name] = {step: {item: json.loads(_normalized((d / "checkpoints" / str(step) / item / "metadata")
                                                           .read_text(), name))
                              for item in ("config", "extra", "metadata")} for step in steps}
    stop, end = (SFT_STOP, SFT_STEPS) if stage == "sft" else (GRPO_STOP, ROLLOUTS * UPDATES)
    assert sorted(items["1x8"]) == sorted(items["2x4"]) == [stop, end]
    if stage == "grpo":  # the stop fell inside a rollout: its last mini-batch was saved with it
        assert items["1x8"][stop]["extra"]["data"]["queued"] == 1
        assert os.path.isdir(dirs["2x4"] / "checkpoints" / str(stop) / "source")
        # GRPO's prompt iterator is per process (each draws its block of every update's prompts;
        # the one saved is process 0's): one process has drawn twice as many as each of two
        for name, k in (("1x8", 2), ("2x4", 1)):
            for step in (stop, end):
                prompts = items[name][step]["extra"]["data"].pop("prompts")
                assert prompts == {"grain": {"next_index": k * items[name][step]["extra"]["data"]["rollouts"]}}
    assert items["1x8"] == items["2x4"]


@pytest.mark.parametrize("kind", ["sft-packed", "sft", "pair", "rules"])
@pytest.mark.parametrize("epochs", [1, None])
def test_training_pipelines_give_the_same_global_batches_on_any_process_count(kind, epochs):
    """The data half of the equality, for every training pipeline (distillation packed or not,
    the reward model's pairs, the rule adapter's examples): the processes' batches, in process
    order, are the one-process batches, as many of them (no process runs out first), and the
    iterator state a checkpoint keeps (process 0's) is every process's."""
    from rmr1_jax.data.pipeline import CheckpointableIterator, pair_dataset, rules_dataset, sft_dataset

    rng = np.random.default_rng(0)
    recs = []
    for _ in range(23):  # not a multiple of any global batch here
        n = int(rng.integers(5, 20))
        recs.append({"input_ids": rng.integers(1, 50, n).astype(np.int32), "loss_mask": np.ones(n, np.uint8),
                     "chosen_ids": rng.integers(1, 50, 7).astype(np.int32),
                     "rejected_ids": rng.integers(1, 50, 9).astype(np.int32), "labels": np.array([1, 0], np.uint8)})

    def make(batch_size, p, n):
        kw = dict(batch_size=batch_size, seed=3, pad_id=0, epochs=epochs, process_index=p, process_count=n)
        if kind.startswith("sft"):
            return sft_dataset(recs, max_length=40, pack=kind == "sft-packed", **kw)
        if kind == "pair":
            return pair_dataset(recs, max_length=12, **kw)
        return rules_dataset(recs, max_length=12, num_labels=3, **kw)

    for n in (2, 3):
        steps = None if epochs else 9
        one = list(itertools.islice(make(2 * n, 0, 1), steps))
        its = [CheckpointableIterator(make(2, p, n)) for p in range(n)]
        hosts = [list(itertools.islice(it, steps)) for it in its]
        assert one and all(len(h) == len(one) for h in hosts), (len(one), [len(h) for h in hosts])
        for k, batch in enumerate(one):
            for key in batch:
                np.testing.assert_array_equal(batch[key], np.concatenate([h[k][key] for h in hosts]))
        assert all(it.state() == its[0].state() for it in its)
