"""LoRA training through the one runner: only the adapters move, and they learn.

The task is test_learning's: judge which of two replies follows "reply with one word in capital
letters" (synthetic ``caps_word``), the judge's reply being the verdict alone, so a small model
learns it in a CPU-sized run; held-out pairs come from another seed, judged greedily in both A/B
orders (chance 50%).

* LoRA distillation lowers the held-out loss, the base stays bit-identical, and the checkpoint
  holds the adapters (and their optimizer moments) only.
* A stop by SIGTERM and a resume give bit-identical adapters to an uninterrupted LoRA run.
* LoRA GRPO (k3 KL against the frozen base) lifts the held-out accuracy of a briefly distilled
  judge; its checkpoint loads, base found through the metadata, as the merged judge.
* A LoRA Bradley-Terry reward model (adapters plus the fresh score head) learns the preference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import numpy as np
import pytest

from rmr1_jax.checkpoint.convert import checkpoint_metadata
from rmr1_jax.checkpoint.loading import load_model
from rmr1_jax.checkpoint.manager import CheckpointManager
from rmr1_jax.worlds import judging_tasks as synthetic
from rmr1_jax.data.pipeline import eval_batches, pair_eval_batches
from rmr1_jax.data.records import RecordOptions, build_records
from rmr1_jax.errors import CheckpointError, ConfigError
from rmr1_jax.inference.judge import judge_pairs
from rmr1_jax.inference.loading import LoadedJudge
from rmr1_jax.models import lora
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.params import num_params
from rmr1_jax.parallel.mesh import MeshConfig, make_mesh
from rmr1_jax.schema import CheckpointSpec, DataSpec, ModelSpec, OptimSpec, PromptSpec, TokenizerSpec, TrainSpec
from rmr1_jax.train import runner
from rmr1_jax.train.grpo import GRPOConfig, GRPOSpec, reference_model, reference_params, run_grpo
from rmr1_jax.train.reward_model import RewardConfig, bt_loss_fn, heldout_pairs
from rmr1_jax.train.setup import load_template
from rmr1_jax.train.sft import DistillConfig, heldout_loss, run_distill, sft_loss_fn

from rmr1_jax.text.tokenizer import train_sentencepiece
import verdict_task

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sigterm_hook import sigterm_at_step  # noqa: E402

pytestmark = pytest.mark.slow  # learning runs (about 3 CPU-minutes in all)

KIND = verdict_task.KIND
MESH = MeshConfig(data=-1)
QUIET = dict(log=lambda *_: None)


@dataclasses.dataclass
class Task:
    root: str
    traces: str
    few_traces: str  # the first 64 traces: enough rows for the runs that check mechanics, not learning
    held_traces: str
    rl_pairs: str
    held: list
    tok_dir: str
    tokenizer: object
    template: object
    prompt: PromptSpec


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Task:
    root = str(tmp_path_factory.mktemp("lora"))
    w = verdict_task.build(root)
    paths = {k: os.path.join(root, f"{k}.jsonl") for k in ("traces", "few_traces", "held_traces", "rl")}
    synthetic.write_traces_jsonl(paths["traces"], w.traces)
    synthetic.write_traces_jsonl(paths["few_traces"], w.traces[:64])
    synthetic.write_traces_jsonl(paths["held_traces"], w.verdict_traces(w.held, 1))
    synthetic.write_pairs_jsonl(paths["rl"], w.pairs[1500:])  # GRPO judges each in both A/B orders
    return Task(root, paths["traces"], paths["few_traces"], paths["held_traces"], paths["rl"], w.held, w.tok_dir,
                w.tokenizer, w.template, w.prompt)


def _model_spec(task, **kw):
    kw = {"preset": "demo", "scan_layers": False, **kw}
    return ModelSpec(param_dtype="float32", dtype="float32", vocab_size=task.tokenizer.vocab_size, **kw)


def _distill_cfg(task, name, steps, *, lr=3e-3, mesh=MESH, global_batch=16, micro_batch=None, save_every=None,
                 eval_data=True, few=False, **model):
    return DistillConfig(
        model=_model_spec(task, **model), mesh=mesh, tokenizer=TokenizerSpec(path=task.tok_dir), prompt=task.prompt,
        data=DataSpec(train=[task.few_traces if few else task.traces], eval=[task.held_traces] if eval_data else [],
                      max_length=160, overlong="skip"),
        optim=OptimSpec(lr=lr, schedule="cosine", min_lr_ratio=0.1, warmup_ratio=0.05, b2=0.95, weight_decay=0.0),
        train=TrainSpec(run_dir=os.path.join(task.root, name), global_batch=global_batch, micro_batch=micro_batch,
                        max_steps=steps, progress=False, peak_flops=1e12, log_every=10),
        checkpoint=CheckpointSpec(save_every=save_every or steps, keep=5))


def _leaves(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _same(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return la.keys() == lb.keys() and all(np.array_equal(la[k], lb[k]) for k in la)


def _logits(model, params, ids):
    """The model's logits, compiled as one program (run op by op, each op compiles on its own)."""
    return np.asarray(jax.jit(model.apply)({"params": params}, ids))


def _saved_leaf_names(ckpt_dir, step, key):
    with CheckpointManager(ckpt_dir, read_only=True) as mgr:
        tree = mgr.saved_tree(step, key)
    return [str(getattr(p[-1], "key", p[-1])) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _records(cache_dir, files, tokenizer, prompt: PromptSpec, opts: RecordOptions):
    """The held-out records of ``files`` as a training run tokenizes them: ``{"eval": source}``."""
    sources, _ = build_records(cache_dir, {"eval": files}, tokenizer, load_template(prompt), opts, log=lambda *_: None)
    return sources


def heldout_accuracy(task: Task, model, params) -> float:
    """Greedy verdicts on the held-out pairs in both A/B orders; no verdict counts as wrong."""
    judge = LoadedJudge(model, params, task.tokenizer, task.template, source="test")
    triples, winners = [], []
    for i, p in enumerate(task.held):
        a, b, w = (p.chosen, p.rejected, "A") if i % 2 == 0 else (p.rejected, p.chosen, "B")
        triples.append((p.prompt, a, b))
        winners.append(w)
    out = judge_pairs(judge, triples, both_orders=True, max_new_tokens=8, batch_size=64, mesh=make_mesh(MESH))
    return sum((r["verdict"] == w) + (r["verdict_swapped"] == w) for r, w in zip(out, winners)) / (2 * len(out))


@pytest.fixture(scope="module")
def judge(task):
    """A briefly distilled judge (full fine-tuning): it has learned the answer format but not yet
    the check, held-out accuracy ~50%. The base of the LoRA distillation and GRPO runs below."""
    model, params, _, _ = run_distill(_distill_cfg(task, "judge", 90, eval_data=False), **QUIET)
    return model, params, os.path.join(task.root, "judge", "checkpoints"), heldout_accuracy(task, model, params)


def test_lora_distillation_lowers_the_heldout_loss_and_trains_the_adapters_only(task, judge):
    model0, params0, start, acc0 = judge
    cfg = _distill_cfg(task, "sft-lora", 40, lora_rank=8, lora_alpha=16.0, preset=None, init_checkpoint=start)
    logs = []
    model, params, result, _ = run_distill(cfg, log=logs.append)
    assert model.cfg.lora_rank == 8
    adapters, base = lora.split_params(params)
    n_ad, n_all = num_params(adapters), num_params(params)
    assert n_ad == lora.adapter_count(model.cfg) and f"{n_ad:,} trainable parameters" in "\n".join(logs)
    assert _same(base, params0)  # the base is bit for bit the judge the run started from
    # held-out loss: the base (the LoRA model at B = 0) before, the trained adapters after
    src = _records(os.path.join(task.root, "held-records"), [task.held_traces], task.tokenizer, task.prompt,
                   RecordOptions(kind="sft", max_length=160, overlong="skip"))
    batches = lambda: eval_batches(src["eval"], batch_size=16, max_length=160, pad_id=task.tokenizer.pad_id)  # noqa
    before = heldout_loss(model0, params0, batches(), make_mesh(MESH))["loss"]
    after = result.eval_metrics["loss"]
    acc = heldout_accuracy(task, model, params)
    print(f"LoRA SFT: {n_ad} of {n_all} parameters trained ({100 * n_ad / n_all:.2f}%); held-out loss "
          f"{before:.4f} -> {after:.4f}, accuracy {acc0:.3f} -> {acc:.3f}")
    assert after < 0.85 * before and acc >= acc0 + 0.2, (before, after, acc0, acc)
    np.testing.assert_allclose(after, heldout_loss(model, params, batches(), make_mesh(MESH))["loss"], rtol=1e-5)
    # the checkpoint: the adapters and their optimizer moments, no second base
    ckpt = os.path.join(task.root, "sft-lora", "checkpoints")
    names = _saved_leaf_names(ckpt, 40, "params")
    assert names and all(lora.is_adapter(n) for n in names)
    moments = [n for n in _saved_leaf_names(ckpt, 40, "opt_state") if n != "count"]
    assert moments and all(lora.is_adapter(n) for n in moments)


def test_a_stopped_lora_run_resumes_bit_identically(task):
    mesh = MeshConfig(data=2, fsdp=2, tensor=2)
    kw = dict(lr=1e-2, mesh=mesh, global_batch=4, micro_batch=2, save_every=2, eval_data=False, few=True,
              preset="tiny", scan_layers=True, lora_rank=4, lora_targets=["q_proj", "v_proj", "o_proj", "down_proj"])
    _, straight, r1, _ = run_distill(_distill_cfg(task, "resume-straight", 6, **kw), **QUIET)
    cfg = _distill_cfg(task, "resume-stopped", 6, **kw)
    remove = sigterm_at_step(4)
    try:
        _, at_stop, r2, _ = run_distill(cfg, **QUIET)
    finally:
        remove()
    assert r2.stopped_early and r2.step == 4
    ckpt = os.path.join(task.root, "resume-stopped", "checkpoints")
    with CheckpointManager(ckpt, read_only=True) as mgr:
        assert mgr.all_steps() == [2, 4]
    model, resumed, r3, _ = run_distill(cfg, **QUIET)
    assert r1.step == r3.step == 6
    assert _same(straight, resumed)  # adapters (and the base) bit for bit
    assert not _same(lora.split_params(at_stop)[0], lora.split_params(resumed)[0])  # and they moved after the stop
    assert all(lora.is_adapter(n) for n in _saved_leaf_names(ckpt, 6, "params"))
    # the checkpoint loads without its base in it: the preset initialized again from the seed,
    # checked against the fingerprint in the metadata, the adapters merged (another layout too)
    merged_model, merged = load_model(ckpt, mesh=make_mesh(mesh), scan_layers=False)
    assert merged_model.cfg.lora_rank == 0 and not merged_model.cfg.scan_layers
    ids = np.arange(40, dtype=np.int32)[None] % task.tokenizer.vocab_size
    err = np.abs(_logits(model, resumed, ids) - _logits(merged_model, merged, ids)).max()
    assert err < 1e-4, err


def test_a_lora_run_refuses_to_resume_on_another_base(task):
    """The run's base is an Orbax checkpoint (``model.init_checkpoint``, its latest step); a new
    step saved there meanwhile (other weights) must stop the resume in one line, not train the
    saved adapters on top of it."""
    mesh = make_mesh(MESH)
    spec = _model_spec(task, preset="tiny")
    model, params = load_model("tiny", mesh=mesh, dtype="float32", vocab_size=spec.vocab_size)
    base = os.path.join(task.root, "rebase-base")
    with CheckpointManager(base, async_save=False) as mgr:
        mgr.save(0, {"params": params}, metadata=checkpoint_metadata(model.cfg), force=True)
    kw = dict(global_batch=4, eval_data=False, few=True, preset=None, init_checkpoint=base, lora_rank=4)
    run_distill(_distill_cfg(task, "rebase", 1, **kw), **QUIET)
    ckpt = os.path.join(task.root, "rebase", "checkpoints")
    with CheckpointManager(base, async_save=False) as mgr:  # the base directory gets a newer step
        changed = dict(params, norm={"scale": params["norm"]["scale"] * 1.5})
        mgr.save(1, {"params": changed}, metadata=checkpoint_metadata(model.cfg), force=True)
    with pytest.raises(CheckpointError) as e:
        run_distill(_distill_cfg(task, "rebase", 2, **kw), **QUIET)
    msg = str(e.value)
    assert "\n" not in msg and "cannot resume this LoRA run" in msg, msg
    assert f"{base} step 1" in msg and f"{base} step 0" in msg and "norm/scale differs" in msg, msg
    with CheckpointManager(ckpt, read_only=True) as mgr:
        assert mgr.all_steps() == [1]  # nothing trained on the wrong base


def test_grpo_with_lora_lifts_the_heldout_accuracy_of_a_briefly_distilled_judge(task, judge):
    _, params0, start, before = judge
    cfg = GRPOConfig(
        model=_model_spec(task, preset=None, init_checkpoint=start, lora_rank=8, lora_alpha=16.0),
        mesh=MESH, tokenizer=TokenizerSpec(path=task.tok_dir), prompt=task.prompt,
        data=DataSpec(train=[task.rl_pairs], max_length=160),
        optim=OptimSpec(lr=3e-3, schedule="constant", warmup_ratio=0.0, b2=0.99, weight_decay=0.0),
        grpo=GRPOSpec(n=8, max_prompt_tokens=160, max_response_tokens=8, prompts_per_step=16, minibatch_prompts=8,
                      both_orders=True, rollout_steps=12, logprob_batch=64, kl_estimator="k3",
                      kl_coef=0.001),
        train=TrainSpec(run_dir=os.path.join(task.root, "grpo"), progress=False, peak_flops=1e12, log_every=1),
        checkpoint=CheckpointSpec(save_every=10**9, keep=1))
    model, params, result, _ = run_grpo(cfg, **QUIET)
    after = heldout_accuracy(task, model, params)
    with open(os.path.join(task.root, "grpo", "metrics.jsonl")) as f:
        train_rows = [r for r in map(json.loads, f) if r.get("split") == "train"]
    rewards = [round(r["reward_mean"], 2) for r in train_rows if "reward_mean" in r]
    print(f"LoRA GRPO: held-out accuracy {before:.3f} -> {after:.3f}; rollout rewards {rewards}")
    assert result.step == 24 and len(rewards) == 12
    assert abs(train_rows[0]["kl"]) < 1e-6  # the first update's policy is the reference: the frozen base
    assert before <= 0.65 and after >= 0.75 and after - before >= 0.2, (before, after)
    assert _same(lora.split_params(params)[1], params0)  # the base never moved
    # the checkpoint holds the adapters; it loads (its base found through the metadata) as the merged judge
    ckpt = os.path.join(task.root, "grpo", "checkpoints")
    assert all(lora.is_adapter(n) for n in _saved_leaf_names(ckpt, 24, "params"))
    merged_model, merged = load_model(ckpt, "lm", mesh=make_mesh(MESH))
    ids = np.arange(48, dtype=np.int32)[None] % task.tokenizer.vocab_size
    err = np.abs(_logits(model, params, ids) - _logits(merged_model, merged, ids)).max()
    assert err < 1e-4, err


def test_the_grpo_reference_of_a_lora_policy_is_the_frozen_base_not_a_copy(task):
    model, params = load_model("tiny", mesh=make_mesh(MESH), dtype="float32", lora_rank=4)
    spec = GRPOSpec(kl_estimator="k3", kl_coef=0.01)
    ref = reference_params(spec, params, model.cfg)
    base = lora.split_params(params)[1]
    flat_ref, flat_base = jax.tree_util.tree_leaves_with_path(ref), jax.tree_util.tree_leaves_with_path(base)
    assert [p for p, _ in flat_ref] == [p for p, _ in flat_base]
    assert all(a is b for (_, a), (_, b) in zip(flat_ref, flat_base))  # the same arrays: no second copy
    ref_model = reference_model(model)
    assert ref_model.cfg.lora_rank == 0
    ids = np.arange(24, dtype=np.int32)[None] % model.cfg.vocab_size
    assert np.array_equal(np.asarray(ref_model.apply({"params": ref}, ids)),
                          np.asarray(model.apply({"params": params}, ids)))
    assert reference_params(GRPOSpec(kl_estimator="none", kl_coef=0.0), params, model.cfg) is None


def _pairs_rows(pairs):
    return [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen[-1]["content"], "rejected": p.rejected[-1]["content"]}
            for p in pairs]


def test_a_lora_reward_model_learns_the_preference_on_heldout_pairs(tmp_path):
    train = synthetic.generate_pairs(480, seed=11, kinds=KIND)
    seen = {(p.prompt[-1]["content"], p.chosen[-1]["content"]) for p in train}
    held = [p for p in synthetic.generate_pairs(400, seed=12, kinds=KIND)
            if (p.prompt[-1]["content"], p.chosen[-1]["content"]) not in seen][:96]
    tok_dir = str(tmp_path / "tok")
    tokenizer = train_sentencepiece([m["content"] for p in train for m in p.prompt + p.chosen + p.rejected] * 3,
                                    tok_dir, vocab_size=400)
    files = {}
    for name, ps in (("train", train), ("eval", held)):
        files[name] = [str(tmp_path / f"{name}.jsonl")]
        with open(files[name][0], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in _pairs_rows(ps))
    cfg = RewardConfig(
        model=ModelSpec(preset="tiny", dtype="float32", scan_layers=False, lora_rank=8, lora_alpha=16.0),
        mesh=MESH, tokenizer=TokenizerSpec(path=tok_dir),
        data=DataSpec(train=files["train"], eval=files["eval"], max_length=64),
        optim=OptimSpec(lr=1e-2, warmup_steps=5, schedule="cosine"),
        train=TrainSpec(run_dir=str(tmp_path / "run"), global_batch=16, max_steps=40, progress=False,
                        peak_flops=1e12, log_every=10),
        checkpoint=CheckpointSpec(save_every=1000, keep=1, async_save=False))
    out = runner.run(cfg, "reward-model", **QUIET)
    trained, frozen = lora.split_for(out.model.cfg, out.params)
    assert "score" in trained and set(trained) == {"layers_0", "layers_1", "score"}
    # before: the LoRA model at B = 0 with its fresh head is the preset initialization
    mesh = make_mesh(MESH)
    model0, params0 = load_model("tiny", "scalar", mesh=mesh, dtype="float32", scan_layers=False,
                                 tokenizer=tokenizer, seed=0)
    assert _same(frozen, lora.split_for(model0.cfg, params0)[1])  # the base never moved
    src = _records(str(tmp_path / "held-records"), files["eval"], tokenizer, PromptSpec(),
                   RecordOptions(kind="pair", max_length=64))
    before = heldout_pairs(bt_loss_fn(model0), params0, pair_eval_batches(
        src["eval"], batch_size=16, max_length=64, pad_id=tokenizer.pad_id), mesh)
    ev = out.result.eval_metrics
    print(f"LoRA reward model: {num_params(trained)} of {num_params(out.params)} parameters trained; held-out "
          f"accuracy {before['accuracy']:.3f} -> {ev['accuracy']:.3f}, loss {before['loss']:.3f} -> {ev['loss']:.3f}")
    assert before["accuracy"] < 0.75 and ev["accuracy"] >= 0.95 and ev["loss"] < 0.5 * before["loss"], (before, ev)
    names = _saved_leaf_names(str(tmp_path / "run" / "checkpoints"), 40, "params")
    assert "score" in names and all(lora.is_adapter(n) or n == "score" for n in names)


def test_lora_is_refused_by_an_objective_that_does_not_train_adapters(tmp_path):
    cfg = runner.load_config("rule-adapter", None, ["data.train=[x.jsonl]", "model.num_labels=4", "adapter.k=2", "model.lora_rank=4",
                                                    f"train.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"model\.lora_rank=4: the 'rule-adapter' objective does not train LoRA"):
        runner.run(cfg, "rule-adapter", **QUIET)


def test_the_lora_step_lowers_ahead_of_time_as_documented():
    """``run.jitted(state, batch, rng, frozen)`` from ShapeDtypeStructs alone (what ``rmr1 plan``
    does): the state (the adapters' params and optimizer moments) donated, the frozen base not."""
    from jax.sharding import NamedSharding, PartitionSpec

    from rmr1_jax.checkpoint.trees import abstract_like
    from rmr1_jax.models.params import abstract_params, param_shardings
    from rmr1_jax.models.presets import preset
    from rmr1_jax.parallel.hostlocal import batch_sharding
    from rmr1_jax.parallel.sharding import activation_sharding
    from rmr1_jax.train.loop import make_train_step
    from rmr1_jax.train.optim import make_optimizer, opt_state_shardings

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    cfg = lora.with_lora(preset("tiny", dtype="float32"), 4)
    shapes = abstract_params(DecoderLM(cfg))
    trainable, frozen = lora.split_for(cfg, abstract_like(shapes, param_shardings(shapes, mesh)))
    optimizer, schedule = make_optimizer(OptimSpec(lr=1e-3), 10)
    opt = jax.eval_shape(optimizer.init, trainable)
    replicated = NamedSharding(mesh, PartitionSpec())
    state = {"params": trainable, "opt_state": abstract_like(opt, opt_state_shardings(optimizer, trainable)),
             "step": jax.ShapeDtypeStruct((), np.int32, sharding=replicated)}
    rows = {k: (8, 32) for k in ("input_ids", "segment_ids", "positions", "loss_mask")}
    batch = {k: jax.ShapeDtypeStruct(s, np.int32, sharding=batch_sharding(mesh, s)) for k, s in rows.items()}
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
    run = make_train_step(sft_loss_fn(DecoderLM(cfg)), optimizer, schedule, 2, mesh)
    with activation_sharding(mesh):
        lowered = run.jitted.lower(state, batch, rng, frozen)
    state_info, _, _, frozen_info = lowered.args_info[0]
    assert all(a.donated for a in jax.tree.leaves(state_info))
    assert jax.tree.leaves(frozen_info) and not any(a.donated for a in jax.tree.leaves(frozen_info))
    out_state, _ = lowered.out_info
    assert jax.tree.structure(out_state) == jax.tree.structure(state)  # the adapters' state only
    lowered.compile()
