"""Where one GRPO step spends its time: rollout (sampling) / reference log-probs / old-policy
log-probs / policy update, on a small judge model; and the whole step with the generation
engine (what ``run_grpo`` rolls out with) against the static sampler (what it used before).

Setup (all local, seeded): synthetic verifiable judging pairs from ``rmr1_jax.worlds.judging_tasks``,
a SentencePiece tokenizer trained on them with ``rmr1_jax.text.tokenizer.train_sentencepiece``,
judge prompts rendered with the demo's compact Chain-of-Rubrics template and the tokenizer's chat
template, and a randomly initialized ``demo`` preset model (``--preset tiny`` also works). The
step is driven exactly as ``run_grpo`` drives it: a ``RolloutSource`` (its generator, reference
and old log-prob passes) feeds ``make_train_step(grpo_loss_fn(model, spec), ...)``; one GRPO step
is one rollout of ``--prompts`` prompts x ``--n`` samples followed by ``prompts / minibatch``
optimizer updates.

``--generator``: ``engine`` (``Engine``, ``--slots`` slots, every prompt of the step in one call),
``sampler`` (the static ``Sampler``, the step's ``prompts x n`` rows in one batch, decoding until
the longest ends) or ``both`` (the default: both on the same model, prompts and seeds, one after
the other, then the ratios ``sampler / engine`` of the whole step and of the rollout). A random
model has no natural length (it writes until the budget), so each prompt's response length is
fixed by a per-prompt budget drawn as ``benchmarks/engine.py`` draws them (log-normal, mean a
quarter of ``--response``, capped at it: RM-R1's long tail); ``--equal`` gives every response
the whole ``--response`` budget instead. Both generators draw the same samples for a seed, so
both steps train on the same rows.

    python benchmarks/grpo_step.py [--generator both] [--preset demo] [--prompts 16] [--n 4]
                                   [--minibatch 8] [--response 80] [--slots 16] [--steps 3]
                                   [--logprob-buckets 8]
                                   [--json out.jsonl]

Phase times come from ``RolloutSource``'s own timers (``time_rollout_s``, ``time_reference_s``,
``time_old_logprobs_s``) and from timing each update (``step_fn`` + ``block_until_ready``).
The first ``--warmup`` steps compile the generator's programs, the log-prob forward and the
train step (ragged responses cut the update rows to a few widths, each compiled once); their
excess over as many timed steps (the median) is reported as compile time.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_json, busy_cores, busy_flagged, busy_line, machine_info, median  # noqa: E402
from engine import long_tail_lengths  # noqa: E402

PHASES = ("rollout", "reference_logprobs", "old_logprobs", "policy_update")
GENERATORS = ("sampler", "engine")


def build_prompts(tmp: str, n_pairs: int, seed: int, vocab: int, log):
    """(tokenizer, [{"input_ids", "winner"}]) from synthetic pairs, like the demo."""
    from rmr1_jax.worlds import judging_tasks as synthetic
    from rmr1_jax.demos.rmr1 import PROTOCOL_SYMBOLS, DemoSettings, write_demo_prompts
    from rmr1_jax.text.prompts import build_judge_messages
    from rmr1_jax.text.tokenizer import train_sentencepiece

    _, template = write_demo_prompts(tmp)
    kinds = DemoSettings().kinds
    pairs = synthetic.generate_pairs(n_pairs + 300, seed=seed, kinds=kinds)
    traces = synthetic.make_distillation_examples(pairs[n_pairs:], seed=seed, template=template,
                                                  style="compact")
    texts = []
    for ex in traces:
        texts += [m["content"] for m in ex.messages] + [ex.target]
    t0 = time.perf_counter()
    tok = train_sentencepiece(texts, os.path.join(tmp, "tokenizer"), vocab_size=vocab, seed=seed,
                              extra_symbols=PROTOCOL_SYMBOLS)
    log(f"tokenizer: SentencePiece, {tok.vocab_size} pieces, trained in {time.perf_counter() - t0:.2f} s "
        f"(pad {tok.pad_id}, eos {tok.eos_ids})")
    recs = []
    for i, p in enumerate(pairs[:n_pairs]):
        a, b, w = (p.chosen, p.rejected, "A") if i % 2 == 0 else (p.rejected, p.chosen, "B")
        text = tok.apply_chat_template(build_judge_messages(p.prompt, a, b, template), add_generation_prompt=True)
        recs.append({"input_ids": np.asarray(tok.encode(text), np.int32), "winner": w})
    return tok, recs


class _Prompts:
    """Endless prompt iterator with the ``state``/``restore`` RolloutSource expects."""

    def __init__(self, recs):
        self._it = itertools.cycle(recs)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def state(self):
        return {}

    def restore(self, state):
        pass


def with_budgets(generator, seed: int, equal: bool):
    """``generator`` whose ``generate`` bounds each prompt's samples by a budget drawn per call
    (the same budgets for the same seed and call count, whichever the generator): the long-tailed
    lengths of ``benchmarks/engine.py``, or the whole budget with ``equal``."""
    inner, calls = generator.generate, itertools.count()

    def generate(params, prompts, sp, **kw):
        rng = np.random.default_rng((seed, next(calls)))
        budgets = (np.full(len(prompts), sp.max_new_tokens) if equal
                   else long_tail_lengths(rng, len(prompts), sp.max_new_tokens))
        return inner(params, prompts, sp, budgets=[int(b) for b in budgets], **kw)

    generator.generate = generate  # on the instance: it stays an Engine (RolloutSource frees its pool)
    return generator


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="both", choices=("engine", "sampler", "both"),
                    help="what samples the rollouts (both: each in turn, and their ratios)")
    ap.add_argument("--preset", default="demo", help="model preset (demo: ~1M params with a 1K vocabulary)")
    ap.add_argument("--vocab", type=int, default=1024, help="SentencePiece vocabulary size (upper bound)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per GRPO step")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--minibatch", type=int, default=8, help="prompts per optimizer update")
    ap.add_argument("--response", type=int, default=80, help="max response tokens")
    ap.add_argument("--equal", action="store_true",
                    help="every response at the --response budget (default: long-tailed per-prompt budgets)")
    ap.add_argument("--slots", type=int, default=16, help="the engine's max_slots")
    ap.add_argument("--page-size", type=int, default=16, help="the engine's page size")
    ap.add_argument("--old-logprobs", default="recompute", choices=("recompute", "sampler"))
    ap.add_argument("--logprob-buckets", type=int, default=8,
                    help="grpo.logprob_buckets (1: every log-prob forward at the whole budget)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="Sampler decode chunk (default: 1/8 of --response, 16 to 64)")
    ap.add_argument("--scan", action="store_true", help="scan over layers (default unrolled, as the demo on CPU)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="warm-up steps (compiles; ragged responses give the log-prob passes and updates a few "
                         "widths, and the engine a few slot counts, each compiled once)")
    ap.add_argument("--steps", type=int, default=5, help="timed GRPO steps after the warm-up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append one JSON line with the results to this file")
    args = ap.parse_args(argv)

    import jax

    from rmr1_jax.models import DecoderLM, init_params, preset
    from rmr1_jax.parallel import make_mesh
    from rmr1_jax.sampling.engine import Engine, EngineConfig
    from rmr1_jax.sampling.sampler import Sampler
    from rmr1_jax.train.grpo import GRPOSpec, RolloutSource, grpo_loss_fn
    from rmr1_jax.train.loop import init_state, make_train_step, to_global
    from rmr1_jax.schema import OptimSpec
    from rmr1_jax.train.optim import make_optimizer

    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.prompts % args.minibatch:
        ap.error("--minibatch must divide --prompts")
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1")
    mesh = make_mesh()
    with tempfile.TemporaryDirectory(prefix="rmr1-bench-grpo-") as tmp:
        tok, recs = build_prompts(tmp, max(64, args.prompts * (args.steps + 1)), args.seed, args.vocab, log)
    lens = [len(r["input_ids"]) for r in recs]
    cfg = preset(args.preset, vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                 pad_token_id=tok.pad_id, scan_layers=args.scan)
    model = DecoderLM(cfg)
    params = init_params(model, jax.random.key(args.seed), mesh)
    ref_params = jax.tree.map(lambda x: x.copy(), params)
    spec = GRPOSpec(n=args.n, max_prompt_tokens=max(lens), max_response_tokens=args.response,
                    prompts_per_step=args.prompts, minibatch_prompts=args.minibatch,
                    logprob_batch=args.minibatch * args.n, old_logprobs=args.old_logprobs,
                    logprob_buckets=args.logprob_buckets)
    updates = args.prompts // args.minibatch
    optimizer, schedule = make_optimizer(OptimSpec(lr=1e-4, schedule="constant", warmup_steps=0), 1000)
    step_fn = make_train_step(grpo_loss_fn(model, spec), optimizer, schedule, 1, mesh,
                              jax.tree.map(lambda x: x.sharding, init_state(params, optimizer)))
    generators = {
        "sampler": lambda: Sampler(model, eos_ids=tok.eos_ids, pad_id=tok.pad_id, mesh=mesh, chunk=args.chunk),
        "engine": lambda: Engine(model, eos_ids=tok.eos_ids, pad_id=tok.pad_id, mesh=mesh,
                                 config=EngineConfig(max_slots=args.slots, page_size=args.page_size,
                                                     decode_steps=args.chunk)),
    }
    kinds = GENERATORS if args.generator == "both" else (args.generator,)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    log(f"model: {args.preset} ({n_params / 1e6:.2f}M params, vocab {cfg.vocab_size}, "
        f"{'scanned' if args.scan else 'unrolled'} layers); prompts {min(lens)}-{max(lens)} tokens "
        f"(padded to {-(-max(lens) // 32) * 32}); {args.prompts} prompts x {args.n} samples x <= {args.response} "
        f"tokens per step ({'every response at the budget' if args.equal else 'long-tailed per-prompt budgets'}), "
        f"{updates} updates of {args.minibatch * args.n} rows; old log-probs: {args.old_logprobs}; "
        f"sampler chunk {args.chunk or 'default'} ({decode_steps(args.response, args.chunk)} decode steps for "
        f"{args.response} tokens); engine {args.slots} slots, pages of {args.page_size} tokens")

    def grpo_step(source, state, step_idx):
        out = {}
        rng = jax.random.key(step_idx)
        upd = 0.0
        for u in range(updates):
            local = source.next_batch(state["params"])  # runs the rollout when the queue is empty
            if u == 0:
                m = source.pop_metrics()
                out["rollout"] = m["time_rollout_s"]
                out["reference_logprobs"] = m["time_reference_s"]
                out["old_logprobs"] = m["time_old_logprobs_s"]
                out["response_length"] = m["response_length"]
                out["rollout_tokens_per_s"] = m["rollout_tokens_per_s"]
            t0 = time.perf_counter()
            state, metrics = step_fn(state, to_global(local, mesh), jax.random.fold_in(rng, u))
            jax.block_until_ready((state, metrics))
            upd += time.perf_counter() - t0
        out["policy_update"] = upd
        return state, out

    def run(kind: str) -> dict:
        """Warm-up and timed steps with one generator, from the same parameters and prompts."""
        gen = with_budgets(generators[kind](), args.seed, args.equal)
        source = RolloutSource(model=model, ref_params=ref_params, generator=gen, tokenizer=tok,
                               prompts=_Prompts(recs), spec=spec, mesh=mesh, per_host_prompts=args.prompts,
                               per_host_minibatch_prompts=args.minibatch, seed=args.seed)
        state = init_state(jax.tree.map(lambda x: x.copy(), params), optimizer)
        log(f"\n[{kind}]")
        t0 = time.perf_counter()
        state, warm = grpo_step(source, state, 0)
        for w in range(1, args.warmup):
            state, more = grpo_step(source, state, w)
            warm = {k: warm[k] + more[k] for k in PHASES}
        warm_total = time.perf_counter() - t0
        log(f"{args.warmup} warm-up step(s) (compiles): {warm_total:.1f} s")
        timed = []
        for s in range(args.warmup, args.warmup + args.steps):
            t0 = time.perf_counter()
            state, r = grpo_step(source, state, s)
            r["total"] = time.perf_counter() - t0
            timed.append(r)
            log(f"  step {s}: " + ", ".join(f"{k} {r[k]:.2f} s" for k in PHASES) + f", total {r['total']:.2f} s")
        med = {k: median([r[k] for r in timed]) for k in PHASES + ("total",)}
        parts = sum(med[k] for k in PHASES)
        compile_s = {k: warm[k] - args.warmup * med[k] for k in PHASES}
        resp = median([r["response_length"] for r in timed])
        log(f"GRPO step with the {kind}: median of {args.steps} steps after {args.warmup} warm-up; "
            f"{machine_line_short()}")
        log(f"{'phase':<22}{'s':>9}{'share':>9}{'compile s':>12}")
        for k in PHASES:
            log(f"{k:<22}{med[k]:>9.2f}{100 * med[k] / parts:>8.1f}%{compile_s[k]:>12.1f}")
        log(f"{'(sum of phases)':<22}{parts:>9.2f}")
        log(f"{'whole step':<22}{med['total']:>9.2f}   (the rest: data prep, advantages, host copies)")
        log(f"rollout: {args.prompts * args.n} sequences, mean response {resp:.1f} tokens, "
            f"{median([r['rollout_tokens_per_s'] for r in timed]):.0f} generated tokens/s")
        log(f"compile (warm-up steps minus as many timed steps): {warm_total - args.warmup * med['total']:.1f} s "
            f"in all")
        return {"median_s": med, "share": {k: med[k] / parts for k in PHASES}, "compile_s": compile_s,
                "warmup_step_s": warm_total, "warmup_phases_s": {k: warm[k] for k in PHASES}, "timed_steps": timed,
                "response_length": resp, "engine_stats": {k: float(v) for k, v in (getattr(gen, "stats", None) or {}).items()
                                 if isinstance(v, (int, float, np.number))}}

    busy_before = busy_cores()
    runs = {kind: run(kind) for kind in kinds}
    busy_after = busy_cores()
    ratios = {}
    if len(runs) == 2:
        s, e = runs["sampler"], runs["engine"]
        ratios = {"step": s["median_s"]["total"] / e["median_s"]["total"],
                  "rollout": s["median_s"]["rollout"] / e["median_s"]["rollout"]}
        log(f"\nsampler / engine, median seconds (above 1: the engine is faster): whole GRPO step "
            f"{s['median_s']['total']:.2f} / {e['median_s']['total']:.2f} = {ratios['step']:.2f}x, rollout "
            f"{s['median_s']['rollout']:.2f} / {e['median_s']['rollout']:.2f} = {ratios['rollout']:.2f}x "
            f"(mean response {s['response_length']:.1f} / {e['response_length']:.1f} tokens; engine slot use "
            f"{e['engine_stats'].get('slot_use', float('nan')):.2f})")
    bl = busy_line(busy_before, busy_after)
    if bl:
        log(bl)
    result = {"benchmark": "grpo_step", "generator": args.generator, "preset": args.preset, "params": n_params,
              "vocab": cfg.vocab_size, "prompts": args.prompts, "n": args.n, "minibatch": args.minibatch,
              "response": args.response, "lengths": "equal" if args.equal else "long-tail", "slots": args.slots,
              "page_size": args.page_size, "old_logprobs": args.old_logprobs, "chunk": args.chunk,
              "decode_steps": decode_steps(args.response, args.chunk), "scan_layers": args.scan, "warmup": args.warmup,
              "steps": args.steps, "prompt_tokens": [min(lens), max(lens)], **machine_info(), "runs": runs,
              "ratio_sampler_over_engine": ratios,
              "other_busy_cores_before": busy_before, "other_busy_cores_after": busy_after,
              "busy_flagged": busy_flagged(busy_before, busy_after)}
    append_json(args.json, result)
    return result


def decode_steps(max_new: int, chunk: int | None) -> int:
    """Decode steps the sampler runs for ``max_new`` tokens when no sequence ends early: equal
    chunks that tile the budget (as ``Sampler.generate`` splits it)."""
    from rmr1_jax.sampling.sampler import decode_schedule

    step, n_chunks = decode_schedule(max_new, chunk)
    return step * n_chunks


def machine_line_short() -> str:
    import jax

    from common import usable_cpus

    return f"usable cpus {usable_cpus()} of {os.cpu_count()}, jax {jax.__version__} ({jax.default_backend()})"


if __name__ == "__main__":
    main()
