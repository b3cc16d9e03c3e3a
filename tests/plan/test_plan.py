"""`rmr1 plan`: FLOPs counted from the jaxpr against XLA's own cost analysis and the 6N
formula, Splash attention's FLOPs under a mesh equal to its one-device count, plans on a
simulated CPU mesh and (with libtpu) on a TPU slice, the rule adapter planned at the rows
training uses, and a job that does not fit exiting non-zero with a suggestion that,
re-planned, does fit."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import pytest

from rmr1_jax.cli import main
from rmr1_jax.models.decoder import DecoderLM
from rmr1_jax.models.presets import preset
from rmr1_jax.parallel.mesh import MeshConfig, make_mesh
from rmr1_jax.plan import steps as S
from rmr1_jax.plan.flops import step_flops
from rmr1_jax.schema import OptimSpec
from rmr1_jax.train.flops import train_flops_per_token
from rmr1_jax.train.loop import make_train_step
from rmr1_jax.train.optim import make_optimizer
from rmr1_jax.train.sft import sft_loss_fn

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
TINY = "configs/distill/tiny.yaml"


def _sft_step(scan: bool, remat: str, accum: int, rows=4, length=256, chunk=64):
    cfg = preset("bench-100m", dtype="float32", scan_layers=scan, remat_policy=remat, num_hidden_layers=3)
    model = DecoderLM(cfg)
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    opt, sched = make_optimizer(OptimSpec(), 10)
    state = S.abstract_state(S.abstract_params(model, mesh, None), opt, mesh)
    batch = S.rows_abstract(mesh, {k: ((rows, length), jnp.int32)
                                   for k in ("input_ids", "segment_ids", "positions", "loss_mask")})
    step = make_train_step(sft_loss_fn(model, loss_chunk=chunk), opt, sched, accum, mesh,
                           jax.tree.map(lambda x: x.sharding, state))
    return cfg, model, step.jitted, (state, batch, S.rng_abstract(mesh))


def _xla_flops(f, *args):
    ca = f.lower(*args).compile().cost_analysis()
    return (ca[0] if isinstance(ca, (list, tuple)) else ca)["flops"]


def test_flops_from_the_jaxpr_agree_with_xla_where_xla_sees_no_loop():
    from rmr1_jax.models.logprobs import response_logprobs

    cfg, model, _, (state, _, _) = _sft_step(scan=False, remat="none", accum=1)
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    batch = S.rows_abstract(mesh, {k: ((4, 256), jnp.int32) for k in ("input_ids", "attention_mask")})
    fwd = jax.jit(lambda p, b: response_logprobs(model, p, b, chunk=256))
    ours, xla = step_flops(fwd, state["params"], batch), _xla_flops(fwd, state["params"], batch)
    assert 0.97 * xla <= ours <= xla  # XLA also counts elementwise work


def test_flops_count_every_layer_micro_batch_and_recomputation():
    cfg, _, f_unrolled, args = _sft_step(scan=False, remat="none", accum=1)
    ours = step_flops(f_unrolled, *args)
    tokens = 4 * 256
    # the textbook accounting (6 x parameters without the embedding lookup x tokens, plus
    # attention), and the LM head's forward once more: the chunked loss recomputes its logits
    head_recompute = 2 * cfg.hidden_size * cfg.vocab_size * tokens
    assert ours == pytest.approx(train_flops_per_token(cfg, 256) * tokens + head_recompute, rel=0.03)
    # scanned layers and two accumulated micro-batches are the same arithmetic: the count
    # holds, where XLA's cost analysis counts one loop body
    _, _, f_scan, args_scan = _sft_step(scan=True, remat="none", accum=2)
    assert step_flops(f_scan, *args_scan) == pytest.approx(ours, rel=1e-6)
    assert _xla_flops(f_scan, *args_scan) < 0.3 * ours
    # full remat recomputes each layer's forward, its projections (2 x weights x tokens) and
    # attention scores (4 x heads x head dim x context per token; the CPU path computes causal
    # blocks only, about half of the square)
    _, _, f_remat, args_remat = _sft_step(scan=True, remat="full", accum=1)
    layer_weights = 3 * cfg.hidden_size * cfg.intermediate_size + 2 * cfg.hidden_size * (
        cfg.num_attention_heads + cfg.num_key_value_heads) * cfg.dim_head
    forward = cfg.num_hidden_layers * tokens * (2 * layer_weights + 0.5 * 4 * cfg.num_attention_heads * cfg.dim_head * 256)
    # at most the whole forward again; less where the backward needs no recomputed output
    # (the output projections' results feed nothing the backward reads)
    assert 0.6 * forward < step_flops(f_remat, *args_remat) - ours <= 1.0 * forward


def _plan(tmp_path, capsys, *argv):
    out = tmp_path / "plan.json"
    rc = main(["plan", *argv, "--json", str(out)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, (json.loads(out.read_text()) if out.exists() else None)


def test_cpu_plan_reports_memory_flops_and_step_time(tmp_path, capsys):
    rc, out, err, js = _plan(tmp_path, capsys, TINY, "--topology", "cpu:8", "train.micro_batch=4")
    assert rc == 0, err
    assert "fits: peak" in out and "optimizer state" in out and "step time at 40% MFU" in out
    ph = js["phases"][0]
    assert js["fits"] and js["devices"] == 8 and ph["name"] == "SFT step"
    n = preset("demo", vocab_size=js["params"] and 1024).num_params()  # configs/distill/tiny.yaml: demo, 1K vocab
    # parameters over data=8 are replicated: every device holds all of them (f32) and the two Adam moments
    assert ph["parts"]["parameters"] == pytest.approx(4 * js["params"], rel=0.01)
    assert ph["parts"]["optimizer state"] == pytest.approx(2 * 4 * js["params"], rel=0.01)
    assert js["params"] == n
    assert ph["flops_per_device"] > 0 and ph["temp_bytes"] > 0


def test_a_plan_that_does_not_fit_exits_nonzero_and_its_suggestion_fits(tmp_path, capsys):
    base = [TINY, "--topology", "cpu:8", "train.global_batch=64", "train.micro_batch=64", "data.max_length=1024",
            "mesh.data=1", "mesh.fsdp=8"]
    rc, _, err, js = _plan(tmp_path, capsys, *base)
    assert rc == 0, err
    ph = js["phases"][0]
    fixed = ph["peak_bytes"] - ph["temp_bytes"]
    budget = (fixed + 0.5 * ph["temp_bytes"]) / 2**30  # room for about half the temporaries
    rc, out, err, _ = _plan(tmp_path, capsys, *base, "--hbm-gib", f"{budget:.6f}")
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("rmr1 plan: error: does not fit: the SFT step needs") and "train.micro_batch=" in line
    suggested = line.split("train.micro_batch=")[1].split()[0]
    assert int(suggested) < 64 and 64 % int(suggested) == 0
    rc, out, err, js2 = _plan(tmp_path, capsys, *base, f"train.micro_batch={suggested}", "--hbm-gib", f"{budget:.6f}")
    assert rc == 0, err
    assert js2["fits"] and "fits: peak" in out


def test_bad_topology_and_recipe_errors_are_one_line(tmp_path, capsys):
    for argv, needle in (([TINY, "--topology", "v9x:2x2"], "--topology 'v9x:2x2'"),
                         ([TINY, "--topology", "v5p:2x2"], "3 positive integer"),
                         ([str(tmp_path / "none.yaml"), "--topology", "cpu:8"], "no such recipe"),
                         ([TINY, "--topology", "cpu:8", "model.remat_policy=some"], "model.remat_policy")):
        rc, _, err, _ = _plan(tmp_path, capsys, *argv)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_cpu_grpo_plan_prices_the_rollout_on_the_engine(tmp_path, capsys):
    """On simulated CPU devices (whose decode calls carry CPU compiler options) the GRPO plan
    compiles the engine's calls, one shard a device, and prices a long-tailed rollout. The
    recipe is a policy GRPO one (its policy_reward: section names the objective): the policy's
    phases are stage 2's, and the plan says the reward model is not priced."""
    from rmr1_jax.plan.commands import objective_of

    assert objective_of("configs/grpo/tiny.yaml") == "grpo"
    assert objective_of("configs/policy_grpo/tiny.yaml") == "policy-grpo"
    rc, out, err, js = _plan(tmp_path, capsys, "configs/policy_grpo/tiny.yaml", "--topology", "cpu:8",
                             "model.architecture=demo", "model.init_checkpoint=null", "grpo.n=2",
                             "grpo.prompts_per_step=16", "grpo.minibatch_prompts=8", "grpo.max_prompt_tokens=64",
                             "grpo.max_response_tokens=64", "grpo.expected_response_tokens=16")
    assert rc == 0, err
    assert [p["name"] for p in js["phases"]][2] == "engine prefill"
    assert "rollout on the generation engine" in out and "8 shards" in out and "mean 16" in out
    assert js["objective"] == "policy-grpo" and "the policy's phases only" in out


@pytest.mark.skipif(not HAS_LIBTPU, reason="compiling for a TPU slice needs libtpu (the tpu extra)")
def test_tpu_grpo_plan_compiles_every_phase(tmp_path, capsys):
    """GRPO on a v5e 2x2 slice, the rollout on the generation engine: each of the 4 fsdp shards
    its own slots and page pool, its attention the Pallas ragged paged attention kernel (a
    model with 128-wide heads, as the kernel needs), compiled under shard_map."""
    import transformers

    hf = tmp_path / "hf"
    transformers.Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                             max_position_embeddings=2048).save_pretrained(hf)
    rc, out, err, js = _plan(tmp_path, capsys, "configs/grpo/tiny.yaml", "--topology", "v5e:2x2",
                             "mesh.data=1", "mesh.fsdp=4", f"model.hf_dir={hf}",
                             "grpo.n=4", "grpo.prompts_per_step=16", "grpo.minibatch_prompts=8", "sampling.max_slots=8",
                             "sampling.kv_pages=40", "grpo.logprob_batch=16", "grpo.max_prompt_tokens=128",
                             "grpo.max_response_tokens=64", "grpo.expected_response_tokens=16")
    assert rc == 0, err
    names = [p["name"] for p in js["phases"]]
    assert names[:3] == ["policy update", "log-prob pass", "engine prefill"] and names[3].startswith("engine decode")
    assert js["devices"] == 4 and js["device_hbm_bytes"] == 16 * 2**30
    dec = js["phases"][3]
    # a device holds its shard's pool: 40 pages x layers x page size x (keys and values) x kv heads
    # x head dim (float32)
    assert dec["parts"]["KV page pool"] == 40 * 2 * 16 * 2 * 1 * 128 * 4
    assert all(p["compile_s"] >= 0 and p["flops_per_device"] > 0 for p in js["phases"])
    assert "one rollout step" in out and "attention ragged" in out and "4 shards" in out


def _splash_grad(mesh=None):
    """The gradient of Splash attention (interpret mode off TPU) over [8, 256, 4, 64] queries
    and 2 key/value heads, and its abstract arguments (rows over data x fsdp under ``mesh``)."""
    from jax.sharding import NamedSharding, PartitionSpec

    from rmr1_jax.models.attention import splash_attention

    b, t, n, k, h = 8, 256, 4, 2, 64
    sh = NamedSharding(mesh, PartitionSpec(("data", "fsdp"))) if mesh is not None else None
    args = tuple(jax.ShapeDtypeStruct(s, dt, sharding=sh) for s, dt in (
        ((b, t, n, h), jnp.float32), ((b, t, k, h), jnp.float32), ((b, t, k, h), jnp.float32), ((b, t), jnp.int32)))
    grad = jax.jit(jax.grad(lambda *a: splash_attention(*a, 0.125).sum(), argnums=(0, 1, 2)))
    return grad, args, (b, t, n, h)


def test_splash_flops_under_a_mesh_are_the_global_count():
    from rmr1_jax.parallel.sharding import activation_sharding

    grad, args, (b, t, n, h) = _splash_grad()
    one = step_flops(grad, *args)
    # forward QK^T, PV; dK/dV 4 matmuls; dQ 3; each 2 x B x N x T x T x H over the causal half
    # (and the backward's rowwise dO . O, under 0.1% more)
    assert one == pytest.approx((2 + 4 + 3) * 2 * b * n * t * t * h * 0.5, rel=2e-3)
    # under a mesh the kernel runs per device through shard_map, whose body is traced at one
    # device's shapes: counted at those shapes it read 1/8 of the work on 8 devices (and the
    # plan divided by the devices again). Rows over data x fsdp and key/value heads over tensor
    # split it over all 8 here, so the count under the mesh is the one-device count
    for shape in ({"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}):
        mesh = make_mesh(MeshConfig(**shape))
        assert mesh.size == 8
        grad, args, _ = _splash_grad(mesh)
        with activation_sharding(mesh):
            assert step_flops(grad, *args) == pytest.approx(one, rel=1e-9), shape
    # and the plan's figure per device is that count over the 8 devices, once
    step = S.compile_step("splash", grad, args, mesh=mesh, parts={}, tokens=b * t, log=lambda *_: None)
    assert step.flops == pytest.approx(one / 8, rel=1e-9)


def test_rule_adapter_plan_rows_are_the_rows_training_uses(tmp_path, capsys, monkeypatch):
    import types

    from rmr1_jax.schema import TrainSpec
    from rmr1_jax.train import rule_adapter

    # what training fills in for an unset train.global_batch: RuleAdapterObjective.plan's
    # train spec, caught where it asks for the steps per epoch
    class Caught(Exception):
        pass

    def caught(job, train):
        raise Caught(train.global_batch)

    monkeypatch.setattr(rule_adapter, "row_steps", caught)
    cfg = types.SimpleNamespace(train=TrainSpec(global_batch=None))
    job = types.SimpleNamespace(cfg=cfg, sources={}, mesh=None, model=None, process_count=1, process_index=0)
    with pytest.raises(Caught) as e:
        rule_adapter.RuleAdapterObjective().plan(job)
    trained = e.value.args[0]
    assert trained == 8
    rc, out, err, js = _plan(tmp_path, capsys, "configs/rule_adapter/tiny.yaml", "--topology", "cpu:8",
                             "train.global_batch=null", "mesh.data=8")
    assert rc == 0, err
    assert js["phases"][0]["tokens"] == trained * 256 and js["step"] == f"one optimizer step of {trained} rows of 256 tokens"
