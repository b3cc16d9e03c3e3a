"""The file-to-file commands and the newer training jobs in a two-process job whose meshes
interleave the processes' devices, as a TPU slice's mesh may (CPU devices come in process order,
which hides code that assumes each process's rows are a contiguous block).

One two-process job (4 CPU devices each, ``cli_worker.py --interleave``) runs, in order:
``score-rm``, ``rules score``, ``rules apply``, ``rmr1 eval`` with a scalar model (RewardBench
and RewardBench 2) and with a generative judge, ``rmr1 generate`` (sampled, 2 completions a
prompt, 3 slots a shard so slots refill), ``train-rm`` and ``rule-adapter`` with 9 held-out
rows (which two processes cannot split evenly), and finally ``train-rm`` with a config file and
``score-rm`` with an input that the last process alone cannot read or finds malformed. The same commands run in a one-process job (8 devices) give
the reference: every output file equals it (byte for byte where nothing is a float computed on
another mesh; the scores within float tolerance), the training jobs' losses and held-out metrics
match, and each failing command exits 2 on both processes with one line, within seconds."""

import json
import os

import jax
import numpy as np
import pytest
import yaml

from hf_models import make_answer_judge
from mp_launch import start_job
from rmr1_jax.checkpoint.hf import save_hf
from rmr1_jax.models import DecoderLM, init_params, preset
from rmr1_jax.text.tokenizer import train_sentencepiece

WORDS = ("please help me write a short polite note to my neighbour about the noise late at night and ask "
         "them kindly to keep it down after ten while staying calm honest and friendly").split()
RULES = ["Be polite to the user.", "Do not reveal private data.", "Answer the question that was asked."]
# less LLVM optimization (both jobs, so their programs are built alike): compiles are most of
# the file's time, and these tiny models run a few steps
XLA_FLAGS = "--xla_backend_optimization_level=0"


def _s(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


def _jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _rows(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def _models(root):
    """A tokenizer and three random tiny models as HF directories: a causal LM (judge and rule
    scorer, its answer words given prompt-dependent probabilities), a scalar reward model and a
    three-rule adapter."""
    answers = ("Yes", "No", "Irrelevant")  # the rule scorer's answer words: one token each
    tok = train_sentencepiece([_s(i, 12) for i in range(80)] + RULES, str(root / "tok"), vocab_size=300,
                              extra_symbols=[*answers, *("\u2581" + a for a in answers)])
    dirs = {"lm": str(root / "lm")}
    make_answer_judge(dirs["lm"], tok, answers, [_s(i, 6 + i % 9) for i in range(32)])
    for name, kw in (("rm", {"head": "scalar"}), ("adapter", {"head": "multilabel", "num_labels": 3})):
        cfg = preset("tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                     dtype="float32", **kw)
        model = DecoderLM(cfg)
        params = init_params(model, jax.random.key(len(dirs)))
        # a large head: scores and adapter logits that differ from row to row by far more than
        # the comparison's tolerance, so a score on the wrong row shows
        params["score"] = params["score"] * 30.0
        dirs[name] = save_hf(model, params, str(root / name), dtype="float32", tokenizer_dir=str(root / "tok"))
    return str(root / "tok"), dirs


def _recipes(root, tok_dir):
    """train-rm and rule-adapter recipes whose held-out sets have 9 rows."""
    pairs = [{"id": i, "prompt": _s(i, 6) + "?", "chosen": _s(i + 1, 5), "rejected": _s(i + 2, 7)} for i in range(41)]
    adapter = [{"id": i, "prompt": _s(i, 6) + "?", "a": _s(i + 3, 5), "b": _s(i + 4, 6),
                "rule_indices": [i % 3, (i + 1) % 3] if i % 2 else [i % 3]} for i in range(41)]
    out = {}
    for name, objective, rows, extra in (("rm", "train-rm", pairs, {}),
                                         ("adapter", "rule-adapter", adapter, {"adapter": {"k": 2}})):
        cfg = {"model": {"preset": "tiny", "dtype": "float32", "scan_layers": False,
                         **({"num_labels": 3} if name == "adapter" else {})},
               "mesh": {"data": -1}, "tokenizer": {"path": tok_dir},
               "data": {"train": [_jsonl(root / f"{name}-train.jsonl", rows[:32])],
                        "eval": [_jsonl(root / f"{name}-eval.jsonl", rows[32:])], "max_length": 192},
               "optim": {"lr": 1e-3, "warmup_steps": 1},
               "train": {"global_batch": 8, "max_steps": 4, "eval_every": 2, "progress": False, "peak_flops": 1e12,
                         "log_every": 1, "seed": 3},
               "checkpoint": {"save_every": 1000, "keep": 1, "async_save": False}, **extra}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        (root / f"{name}.yaml.again").write_text(yaml.safe_dump(cfg))  # for a failure on one process
        out[name] = (objective, str(path))
    return out


def _inputs(root):
    prompts = [_s(i, 6) + "?" for i in range(6)]
    responses = [_s(i + 9, 8) for i in range(6)]
    score_rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
    score_rows += [{"prompt": [{"role": "user", "content": p}], "a": r, "b": r[::-1]}
                   for p, r in zip(prompts[:4], responses[2:])]
    bad = list(score_rows)
    bad[4] = {"prompt": prompts[0], "response": 7}
    rb = [{"id": i, "prompt": prompts[i % 6], "chosen": responses[i % 6], "rejected": _s(i + 20, 5),
           "subset": ("alpacaeval-easy", "mt-bench-hard", "donotanswer", "math-prm", "hep-cpp")[i % 5]}
          for i in range(10)]
    rb2 = []
    for i, subset in enumerate(("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties", "Ties")):
        chosen = [_s(i + 30, 5)] + ([_s(i + 31, 6)] if subset == "Ties" else [])
        rejected = [_s(i + 32 + k, 4 + k) for k in range(3 if subset != "Ties" else 2)]
        rb2.append({"id": f"{'ref' if subset == 'Ties' else subset[:3]}:{i}", "prompt": prompts[i % 6],
                    "chosen": chosen, "rejected": rejected, "num_correct": len(chosen),
                    "num_incorrect": len(rejected), "total_completions": len(chosen) + len(rejected),
                    "models": ["m"] * (len(chosen) + len(rejected)), "subset": subset})
    return {"score": _jsonl(root / "score-in.jsonl", score_rows), "bad": _jsonl(root / "bad-in.jsonl", bad),
            "score_again": _jsonl(root / "score-in-again.jsonl", score_rows),
            "rules": _jsonl(root / "rules.jsonl", [{"id": f"r{j}", "text": t} for j, t in enumerate(RULES)]),
            "rules_in": _jsonl(root / "rules-in.jsonl", [{"prompt": prompts[i], "response": responses[i + k]}
                                                         for i in range(5) for k in (0, 1)]),
            "pairs": _jsonl(root / "pairs.jsonl", [{"prompt": prompts[i], "a": responses[i], "b": responses[i + 1]}
                                                   for i in range(5)]),
            "rb": _jsonl(root / "rb.jsonl", rb), "rb2": _jsonl(root / "rb2.jsonl", rb2),
            "prompts": _jsonl(root / "prompts.jsonl", [{"prompt": _s(i, 2 + 3 * i % 13)} for i in range(13)])}


def _commands(out, dirs, files, recipes) -> list[list[str]]:
    return [
        ["score-rm", "--ckpt", dirs["rm"], "--in", files["score"], "--out", f"{out}/score.jsonl", "--batch-size", "8"],
        ["rules", "score", "--ckpt", dirs["lm"], "--rules", files["rules"], "--in", files["rules_in"],
         "--out", f"{out}/rules.jsonl", "--batch-size", "16"],
        ["rules", "apply", "--ckpt", dirs["adapter"], "--scores", f"{out}/rules.jsonl", "--pairs", files["pairs"],
         "--rules", files["rules"], "--k", "2", "--out", f"{out}/apply.jsonl", "--batch-size", "8"],
        ["eval", "--benchmark", "rewardbench", "--ckpt", dirs["rm"], "--data", files["rb"], "--out-dir", f"{out}/ev-rm",
         "--batch-size", "8"],
        ["eval", "--benchmark", "rewardbench2", "--ckpt", dirs["rm"], "--data", files["rb2"], "--out-dir", f"{out}/ev-rb2",
         "--batch-size", "8"],
        ["eval", "--benchmark", "rewardbench", "--ckpt", dirs["lm"], "--data", files["rb"], "--out-dir", f"{out}/ev-judge",
         "--batch-size", "8", "--max-new-tokens", "5"],
        ["generate", "--ckpt", dirs["lm"], "--in", files["prompts"], "--out", f"{out}/generated.jsonl", "--n", "2",
         "--max-new-tokens", "6", "--max-slots", "3", "--seed", "4"],
        [recipes["rm"][0], recipes["rm"][1], f"train.run_dir={out}/rm"],
        [recipes["adapter"][0], recipes["adapter"][1], f"train.run_dir={out}/adapter"],
        [recipes["rm"][0], recipes["rm"][1] + ".again", f"train.run_dir={out}/never-rm"],
        ["score-rm", "--ckpt", dirs["rm"], "--in", files["score_again"], "--out", f"{out}/never.jsonl",
         "--batch-size", "8"],
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(reference output dir, two-process output dir, the job's per-process outputs, files)."""
    root = tmp_path_factory.mktemp("multihost-commands")
    tok_dir, dirs = _models(root)
    files, recipes = _inputs(root), _recipes(root, tok_dir)
    ref, mp = str(root / "ref"), str(root / "mp")
    worker = os.path.join(os.path.dirname(os.path.dirname(__file__)), "cli_worker.py")
    job = start_job(worker, ["--interleave", "--swap-on-last", files["score_again"] + "=" + files["bad"],
                             "--swap-on-last", recipes["rm"][1] + ".again=" + str(root / "missing.yaml")]
                    + [a for cmd in _commands(mp, dirs, files, recipes) for a in cmd + ["::"]][:-1],
                    processes=2, devices=4, xla_flags=XLA_FLAGS)
    # the reference: one process, 8 devices, the same commands but the two failing ones, meanwhile
    ref_job = start_job(worker, [a for cmd in _commands(ref, dirs, files, recipes)[:-2] for a in cmd + ["::"]][:-1],
                        processes=1, devices=8, xla_flags=XLA_FLAGS)
    try:
        ref_out = ref_job.wait(timeout=900)[0]
        outs = job.wait(timeout=900)
    finally:
        job.kill()
        ref_job.kill()
    assert [rc for rc, _ in _statuses(ref_out)] == [0] * 9, ref_out[-3000:]
    return ref, mp, outs, files


def _statuses(out: str) -> list[tuple[int, float]]:
    return [(int(p[2]), float(p[3])) for p in (line.split() for line in out.splitlines() if line.startswith("RMR1_RC"))]


def test_every_command_succeeds_on_both_processes_but_the_bad_one(runs):
    _, _, outs, files = runs
    for pid, out in enumerate(outs):
        st = _statuses(out)
        assert [rc for rc, _ in st] == [0] * 9 + [2, 2], (pid, out[-3000:])
        assert st[-1][1] < 30 and st[-2][1] < 30, st  # each failure reached both processes within seconds
    err1 = [line for line in outs[1].splitlines() if line.startswith("rmr1 score-rm: error:")]
    err0 = [line for line in outs[0].splitlines() if line.startswith("rmr1 score-rm: error:")]
    assert len(err1) == 1 and f"{files['bad']}:5" in err1[0] and "'response' must be a string" in err1[0]
    assert len(err0) == 1 and err0[0].startswith("rmr1 score-rm: error: process 1 failed: ") and \
        f"{files['bad']}:5" in err0[0]
    # a config file one host cannot read: before any collective, so nothing waits on that host
    cfg1 = [line for line in outs[1].splitlines() if line.startswith("rmr1 train-rm: error:")]
    cfg0 = [line for line in outs[0].splitlines() if line.startswith("rmr1 train-rm: error:")]
    assert len(cfg1) == 1 and "missing.yaml: config file not found" in cfg1[0]
    assert len(cfg0) == 1 and cfg0[0].startswith("rmr1 train-rm: error: process 1 failed: ")


def _same_rows(a: list[dict], b: list[dict], float_keys: tuple[str, ...]):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in float_keys} == {k: v for k, v in y.items() if k not in float_keys}
        for k in float_keys:
            if k in x or k in y:
                np.testing.assert_allclose(np.asarray(x[k], float), np.asarray(y[k], float), rtol=1e-4, atol=1e-5)


def _spread(rows, key) -> float:
    """The smallest gap between two different rows' values of ``key``: how far a value put on
    another row would be from the right one."""
    v = np.asarray([np.ravel(r[key]) for r in rows if key in r], float)
    gaps = np.abs(v[:, None, :] - v[None, :, :]).max(-1)
    return float(gaps[~np.eye(len(v), dtype=bool)].min())


def test_file_commands_put_every_score_on_its_row(runs):
    ref, mp, _, _ = runs
    # the one-process values differ from row to row far beyond the tolerance below
    assert _spread(_rows(f"{ref}/score.jsonl"), "score") > 1e-2
    assert _spread(_rows(f"{ref}/rules.jsonl"), "scores") > 1e-2
    assert _spread(_rows(f"{ref}/apply.jsonl"), "score_a") > 1e-2
    _same_rows(_rows(f"{mp}/score.jsonl"), _rows(f"{ref}/score.jsonl"), ("score", "score_a", "score_b"))
    _same_rows(_rows(f"{mp}/rules.jsonl"), _rows(f"{ref}/rules.jsonl"), ("scores", "relevance"))
    _same_rows(_rows(f"{mp}/apply.jsonl"), _rows(f"{ref}/apply.jsonl"), ("score_a", "score_b", "margin"))
    assert not os.path.exists(f"{mp}/never.jsonl") or not _rows(f"{mp}/never.jsonl")
    # sampled completions: the same draws wherever the mesh's shards ran each row
    gen = _rows(f"{ref}/generated.jsonl")
    assert len(gen) == 13 and len({tuple(map(tuple, r["token_ids"])) for r in gen}) >= 10
    _same_rows(_rows(f"{mp}/generated.jsonl"), gen, ("logprobs",))


def test_eval_results_files_equal_the_one_process_files(runs):
    ref, mp, _, _ = runs
    for name in ("ev-judge", "ev-rm", "ev-rb2"):  # byte for byte: each row's math is the same on either mesh
        with open(f"{mp}/{name}/results.jsonl", "rb") as a, open(f"{ref}/{name}/results.jsonl", "rb") as b:
            assert a.read() == b.read(), name
    for name in ("ev-rm", "ev-rb2"):
        mp_files = sorted(f for f in os.listdir(f"{mp}/{name}") if not f.endswith(".png"))
        assert mp_files == sorted(f for f in os.listdir(f"{ref}/{name}") if not f.endswith(".png"))
        assert not any(".tmp" in f or ".partial" in f for f in mp_files)


@pytest.mark.parametrize("job, metric", [("rm", "accuracy"), ("adapter", "macro_f1_rules")])
def test_training_jobs_match_with_an_uneven_heldout_set(runs, job, metric):
    ref, mp, _, _ = runs
    got, want = _rows(f"{mp}/{job}/metrics.jsonl"), _rows(f"{ref}/{job}/metrics.jsonl")
    for split in ("train", "eval"):
        g = [r for r in got if r["split"] == split]
        w = [r for r in want if r["split"] == split]
        assert [r["step"] for r in g] == [r["step"] for r in w] and w
        np.testing.assert_allclose([r["loss"] for r in g], [r["loss"] for r in w], rtol=1e-4)
    ev_g = [r for r in got if r["split"] == "eval"][-1]
    ev_w = [r for r in want if r["split"] == "eval"][-1]
    assert ev_g.get("pairs", ev_g.get("examples")) == 9 == ev_w.get("pairs", ev_w.get("examples"))
    np.testing.assert_allclose(ev_g[metric], ev_w[metric], atol=1e-6)
    if job == "adapter":
        assert json.load(open(f"{mp}/adapter/best.json"))["step"] == json.load(open(f"{ref}/adapter/best.json"))["step"]
