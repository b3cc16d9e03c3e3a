"""Every ``rmr1`` parser, built in this one place from the shared options of
:mod:`rmr1_jax.cli.options`. Building them imports no JAX (``rmr1 --help`` answers at once);
each handler is imported by name when its command runs (:func:`_handler`).

The epilogs show the rows each command reads, so ``rmr1 CMD --help`` is enough to prepare a
file."""

from __future__ import annotations

import argparse

from rmr1_jax import __version__
from rmr1_jax.cli import options as opt

_RAW = argparse.RawDescriptionHelpFormatter
OBJECTIVES = (("distill", "distill", "stage 1: distill reasoning traces (SFT)"),
              ("grpo", "grpo", "stage 2: GRPO with the verifiable verdict reward"),
              ("policy-grpo", "policy-grpo", "GRPO of a policy whose reward is a trained judge or reward model"),
              ("train-rm", "reward-model", "a Bradley-Terry scalar reward model on preference pairs"),
              ("rule-adapter", "rule-adapter", "the RAMO Rule Adapter on selected-rule sets"))
PAIR_ROWS = """rows (JSONL, one per line; a prompt is a string or a list of {role, content} messages):
  {"prompt": "...", "a": "...", "b": "...", "winner": "A"}     winner (optional, gold): A, B, model_a, model_b
  ("response_a" / "response_b" are read as "a" / "b")"""


def _handler(module: str, name: str):
    """``module.name(args)``, imported when the command runs."""
    def run(args):
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return run


def _command(sub, name: str, help: str, module: str, func: str, *, epilog: str | None = None, required=()):
    p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
                       formatter_class=_RAW)
    p.set_defaults(func=_handler(f"rmr1_jax.cli.{module}", func))
    opt.require(p, *required)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmr1", description="Reasoning reward models (RM-R1) and rule-labeled "
                                "reward models (RAMO) in JAX, from a laptop CPU to a TPU pod.")
    p.add_argument("--version", action="version", version=f"rmr1 {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo(sub)
    _training(sub)
    _plan(sub)
    _judge(sub)
    _score_rm(sub)
    _generate(sub)
    _serve(sub)
    _eval(sub)
    _rules(sub.add_parser("rules", help="RAMO labeling: score rules with a model, select rules per pair, "
                                       "label pairs, apply a Rule Adapter").add_subparsers(
        dest="rules_command", required=True, metavar="STEP"))
    _convert(sub.add_parser("convert", help="convert checkpoints between Hugging Face and Orbax").add_subparsers(
        dest="direction", required=True, metavar="DIRECTION"))
    _tokenizer(sub.add_parser("tokenizer", help="train a SentencePiece tokenizer on your own texts")
               .add_subparsers(dest="tokenizer_command", required=True, metavar="STEP"))
    return p


def _demo(sub) -> None:
    d = _command(sub, "demo", "a whole pipeline on the embedded default (synthetic data, CPU): RM-R1 or RAMO",
                 "jobs", "cmd_demo")
    d.add_argument("which", nargs="?", choices=("rm-r1", "ramo", "policy"), default="rm-r1",
                   help="rm-r1 (default): distillation + GRPO of a reasoning judge; ramo: rule scoring, "
                        "selection, Rule Adapter and reward models; policy: GRPO of a policy rewarded by the "
                        "rm-r1 demo's judges (run that first)")
    opt.out_dir(d, "run directory (default: runs/demo, runs/demo-ramo or runs/demo-policy)")
    d.add_argument("--seed", type=int, default=None, help="data and training seed (default: the recipes')")
    d.add_argument("--quick", action="store_true",
                   help="a seconds-long smoke run (no learning expected): the recipes' quick.yaml overrides")
    d.add_argument("--recipes", default=None, metavar="DIR",
                   help="recipe directory (default: configs/demo, configs/demo_ramo or configs/demo_policy)")
    d.add_argument("--judges", default=None, metavar="DIR",
                   help="demo policy: where `rmr1 demo` wrote its judges (default: runs/demo)")
    d.add_argument("--world", choices=("easy", "hard"), default=None,
                   help="demo ramo: easy (the recipe's default: the deciding rules are the largest-discrepancy "
                        "ones) or hard (style rules with large discrepancies unrelated to gold, mildly broken "
                        "deciding rules, a rule that decides some pairs and is noise in others, per-rule "
                        "annotator noise)")


def _training(sub) -> None:
    for name, objective, text in OBJECTIVES:
        t = _command(sub, name, text, "jobs", "cmd_train")
        t.add_argument("config", help="YAML recipe (configs/...)")
        t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=2e-6")
        t.set_defaults(objective=objective)


def _plan(sub) -> None:
    p = _command(sub, "plan", "compile a recipe's steps ahead of time for a TPU slice (or a simulated CPU mesh): "
                 "memory per device, FLOPs, step time, whether it fits", "jobs", "cmd_plan",
                 epilog="exit status 2 when the job does not fit the target's device memory")
    p.add_argument("config", help="YAML recipe (configs/...)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. mesh.tensor=4 train.micro_batch=8")
    p.add_argument("--topology", required=True,
                   help="v5p:2x2x2, v5p:4x4x4, v6e:4x4, v5e:8x8, v4:2x2x2 (needs the tpu extra: libtpu), or cpu:N")
    p.add_argument("--objective", choices=[o for _, o, _ in OBJECTIVES], default=None,
                   help="default: from the recipe's own section (policy_reward:, grpo:, reward:, adapter:; "
                        "else distill)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization the step time assumes")
    p.add_argument("--remat", default=None,
                   help="plan once per rematerialization policy, comma-separated, or 'all' (one row each)")
    p.add_argument("--hbm-gib", type=float, default=None,
                   help="device memory to plan against, GiB (default: the chip's HBM; cpu: host memory / N)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the plan as JSON to this file")


def _judge(sub) -> None:
    j = _command(sub, "judge", "judge a pair, score a response against a reference, or rank responses (or a JSONL "
                 "file of them) with a trained judge", "jobs", "cmd_judge",
                 required=("--ckpt",), epilog=PAIR_ROWS + "\n\n--out rows: the input row's fields, then "
                 "judgment, verdict (A, B or null), and with --both-orders judgment_swapped, verdict_swapped, "
                 "consistent; with --prob prob_a, prob_a_swapped (with --both-orders) and prob; with --json structured "
                 "(and structured_swapped)" + """

other rows (one shape a file; each may carry "principles": ["...", ...]):
  {"prompt": "...", "response": "...", "reference": "..."}   pointwise: the response against the reference, both
      orders -> score (1 better than the reference, 0.5 a tie or inconsistent, 0 worse), outcome, the verdicts
  {"prompt": "...", "responses": ["...", "...", ...]}         listwise: every pair (or a --scheme knockout
      bracket) in both orders -> scores, ranking (indices, best first), matches (i, j, verdicts, winner)""")
    opt.ckpt(j, "the judge: Orbax checkpoint, LoRA run, or HF causal-LM directory")
    j.add_argument("--prompt", help="the client question")
    j.add_argument("--a", help="response A")
    j.add_argument("--b", help="response B")
    j.add_argument("--response", help="pointwise: the response to score against --reference")
    j.add_argument("--reference", help="pointwise: the reference answer --response is judged against")
    opt.in_file(j, "JSONL file of pairs, pointwise or listwise rows (instead of --prompt ...)", old="--pairs")
    opt.out_file(j, "write the judgments as JSONL here (default: print them)")
    j.add_argument("--both-orders", action="store_true", help="also judge with A and B swapped (pointwise and "
                   "listwise rows are always judged in both orders)")
    j.add_argument("--scheme", choices=("round_robin", "knockout"), default="round_robin",
                   help="listwise rows: every pair (n (n - 1) judgments) or a seeded knockout bracket "
                        "(2 (n - 1)); default round_robin")
    j.add_argument("--seed", type=int, default=0, help="listwise --scheme knockout: the brackets' seed")
    j.add_argument("--prob", action="store_true", help="also read the verdict's probability: P([[A]]) against "
                   "P([[B]]) where the judge wrote its verdict (prob_a; prob: response a better, both orders' mean)")
    j.add_argument("--principles", default=None, metavar="FILE", help="principles to judge by, one per line (e.g. "
                   "RAMO's rules): the judge builds its rubric from them; a row's own \"principles\" list (any "
                   "row shape) replaces them for that row")
    j.add_argument("--json", action="store_true", dest="structured", help="also each judgment as JSON: task type, "
                   "rubric items and weights, solution, evidence (quotes checked word for word against the "
                   "responses), verdict, and errors field by field (structured, structured_swapped)")
    opt.max_new_tokens(j)
    opt.batch_size(j, "judgments generated together")
    opt.tokenizer(j)
    opt.prompt_template(j)
    opt.mesh(j)


def _score_rm(sub) -> None:
    s = _command(sub, "score-rm", "score responses or pairs (JSONL) with a scalar reward model", "jobs",
                 "cmd_score_rm", required=("--ckpt", "--in", "--out"), epilog="""rows (JSONL, one shape per row):
  {"prompt": "...", "response": "..."}                 -> "score"
  {"prompt": "...", "a": "...", "b": "..."}            -> "score_a", "score_b"
  {"prompt": "...", "chosen": "...", "rejected": "..."} -> "score_chosen", "score_rejected" (training's pair rows)
  {"text": "..."}                                      -> "score" (the text as is, no chat template)
a prompt is a string or a list of {role, content} messages ending with a user turn""")
    opt.ckpt(s, "Orbax reward-model checkpoint or HF *ForSequenceClassification directory")
    opt.in_file(s, "JSONL rows to score")
    opt.out_file(s, "output JSONL: each input row with its scores (resumed if it exists)")
    opt.batch_size(s, "rows per forward pass and per fsynced write")
    opt.overlong(s)
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    opt.tokenizer(s)
    opt.mesh(s)


def _generate(sub) -> None:
    g = _command(sub, "generate", "generate completions of JSONL prompts with any causal LM (the generation engine)",
                 "jobs", "cmd_generate", required=("--ckpt", "--in", "--out"), epilog="""rows (JSONL): {"prompt": "..."} or {"prompt": [{"role": "user", "content": "..."}, ...]}, other fields kept
  messages (and a text without --raw) are rendered with the checkpoint's chat template and its generation prompt;
  with --raw the text's own tokens are sent, nothing added
--out rows: the input row, then "line" and n of each: "completions" (texts), "token_ids", "logprobs" (of the
  tokens drawn, at the temperature), "finished" (ended by EOS or a stop string, not --max-new-tokens)""")
    opt.ckpt(g, "the model: Orbax checkpoint, LoRA run, or HF causal-LM directory")
    opt.in_file(g, "JSONL rows {prompt}")
    opt.out_file(g, "output JSONL: each input row with its completions (resumed if it exists)")
    opt.max_new_tokens(g, "completion")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0: greedy (default 1.0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the likeliest tokens "
                   "up to this probability (default 1.0: off)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default 0: off)")
    g.add_argument("--n", type=int, default=1, help="completions per prompt (default 1)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end a completion at this text, kept in it (repeatable)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed; a row's samples depend on it and on "
                   "the row's place in the file only (default 0)")
    g.add_argument("--raw", action="store_true", help="send each prompt text as is, without the chat template")
    # engine sizes: None leaves EngineConfig's default (named in the help; importing it here would import JAX)
    g.add_argument("--max-slots", type=int, default=None,
                   help="sequences decoding at once on each data-parallel shard of the mesh (default 32)")
    g.add_argument("--page-size", type=int, default=None, help="tokens per KV-cache page (default 16)")
    g.add_argument("--kv-pages", type=int, default=None, help="KV-cache pages in a shard's pool (default: half the "
                   "free accelerator memory; on CPU enough for every slot at its longest)")
    g.add_argument("--prefill-chunk", type=int, default=None,
                   help="prompt tokens per prompt per prefill call (default 256)")
    opt.tokenizer(g)
    opt.mesh(g)


def _serve(sub) -> None:
    s = _command(sub, "serve", "serve a judge or scalar reward model over HTTP (OpenRLHF, vLLM and OpenAI routes)",
                 "jobs", "cmd_serve", required=("--ckpt",), epilog="""routes:
  GET  /health
  POST /judge                {"pairs": [{"prompt", "response_a", "response_b"}], "both_orders": true}   (a judge)
  POST /get_reward           {"query": [...], "prompts": [...], "labels": [...]}   (OpenRLHF's remote reward)
  POST /classify, /score     vLLM's shapes   (a scalar reward model)
  POST /v1/chat/completions  OpenAI's shape: messages, n, temperature, top_p, max_tokens, stop   (a judge)""")
    opt.ckpt(s, "the model: Orbax checkpoint or HF directory (a causal LM is served as a judge, a scalar head "
                "as a reward model)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--max-batch", type=int, default=64,
                   help="most pairs, texts or conversations one model call (and one request) takes (default 64)")
    s.add_argument("--max-queue", type=int, default=256, help="requests waiting at most; more are refused with "
                   "503 (default 256)")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take before a 504 "
                   "(default 600)")
    s.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body in MiB (default 8)")
    s.add_argument("--max-slots", type=int, default=None,
                   help="a judge's sequences decoding at once on each data-parallel shard (default 32)")
    opt.max_new_tokens(s, "judgment (a request's max_new_tokens or max_tokens overrides it)")
    opt.tokenizer(s)
    opt.prompt_template(s)
    opt.mesh(s)


def _eval(sub) -> None:
    from rmr1_jax.eval.registry import BENCHMARKS

    e = _command(sub, "eval", "RewardBench / RewardBench 2 / RM-Bench / RMB with the official formulas", "evaluate",
                 "cmd_eval", required=("--benchmark",))
    e.add_argument("mode", nargs="?", choices=["run", "score"], default="run",
                   help="run (judge or score, then report) or score (re-score a results file)")
    e.add_argument("--benchmark", choices=BENCHMARKS, default=None)
    opt.ckpt(e, "a generative judge, or a scalar reward model (Orbax or HF directory)")
    e.add_argument("--data", metavar="PATH", help="benchmark file or directory (JSON / JSONL / Parquet)")
    e.add_argument("--results", nargs="+", metavar="FILE",
                   help="per-example results JSONL (for score); several: side by side")
    opt.out_dir(e, "report directory (results.jsonl, report.md, summary JSON, charts; default runs/eval/BENCHMARK)")
    e.add_argument("--no-verdict", choices=["zero", "half"], default="zero",
                   help="score of an output without a verdict: 0 (RM-R1) or 0.5 (upstream RewardBench)")
    e.add_argument("--order", choices=["random", "both"], default="random",
                   help="A/B order: seeded random per example, or both orders (position consistency)")
    e.add_argument("--seed", type=int, default=0)
    opt.max_new_tokens(e)
    opt.batch_size(e, "judgments generated (or rows scored) together")
    e.add_argument("--limit", type=int, default=None, help="judge only the first N comparisons")
    e.add_argument("--keep-text", action="store_true", help="store judgment texts in the results")
    e.add_argument("--prob", action="store_true", help="generative judges: also read each judgment's verdict "
                   "probability (prob_a in the results; calibration: ECE, Brier, a reliability plot in the report)")
    e.add_argument("--samples", type=int, default=1, metavar="K",
                   help="generative judges: K sampled judgments per pair and order, drawn in one engine call "
                   "(the prompt's pages shared), aggregated by --vote; the results keep every vote (votes, "
                   "votes_swapped) and the report adds accuracy against k = 1, 2, 4, ... K (default 1: one "
                   "greedy judgment)")
    e.add_argument("--vote", choices=["majority", "mean-prob"], default=None,
                   help="with --samples K > 1, how the K judgments make one verdict: majority (of the parsed "
                   "verdicts; a tie, or none, is no verdict, scored as --no-verdict says) or mean-prob (the mean "
                   "of the samples' P([[A]]), read as --prob does, against 0.5) (default majority)")
    e.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="sampling temperature of the judgments (default 1.0 with --samples K > 1, else 0: greedy)")
    e.add_argument("--scheme", choices=("round_robin", "knockout"), default=None,
                   help="rmb-bon: how an item's candidates are ranked from pairwise verdicts in both orders: "
                        "round_robin (every pair, the default) or knockout (a bracket keyed by the item, N - 1 "
                        "matches)")
    opt.overlong(e, what="scalar reward models: ")
    opt.tokenizer(e)
    opt.prompt_template(e)
    opt.mesh(e)


def _rules(rsub) -> None:
    from rmr1_jax.rules.select import STRATEGIES, TIES

    sc = _command(rsub, "score", "score every (prompt, response) against every rule: P(Yes) - P(No)", "rules",
                  "cmd_score", required=("--ckpt", "--in", "--out"), epilog="""rows (JSONL): {"prompt": "...", "response": "..."}, other fields kept
--out rows: the input row plus "scores" and "relevance" (one float per rule, pool order) and "line"
rule pool (--rules): JSONL {"id", "text", "category"?} per line, or YAML (a list, or {rules: [...]})
template (--template): text with {rule}, {prompt} and {response}; the judge answers Yes, No or Irrelevant
  (default: rmr1_jax.inference.rules.DEFAULT_TEMPLATE)""")
    opt.ckpt(sc, "the rule-scoring judge (Orbax or HF causal LM)")
    sc.add_argument("--rules", default=None, metavar="FILE", help="rule pool (default: the built-in 100 rules)")
    opt.in_file(sc, "JSONL rows {prompt, response}")
    opt.out_file(sc, "output JSONL (resumed if it exists)")
    sc.add_argument("--template", default=None, metavar="FILE", help="scoring prompt with {rule}, {prompt}, {response}")
    sc.add_argument("--no-chat-template", action="store_true", help="send the rendered template as is")
    sc.add_argument("--answers", nargs=3, default=["Yes", "No", "Irrelevant"], metavar=("YES", "NO", "IRRELEVANT"),
                    help="the judge's answer words; each must be one token after the prompt (default Yes No Irrelevant)")
    opt.batch_size(sc, "(response, rule) rows per forward pass")
    opt.tokenizer(sc)
    opt.mesh(sc)

    pairs_epilog = """--scores: a pairwise score file {"scores_a", "scores_b", "relevance", "winner"?} (or RAMO's
  {"scoresA", "scoresB", "relevance"}), or with --pairs the per-response file `rmr1 rules score` wrote
--pairs: """ + PAIR_ROWS.split(":", 1)[1].strip() + """
--k: rules kept per pair; it must not exceed the pool's size (the same rule for every k given)"""
    sel = _command(rsub, "select", "pick the rules of each pair (top-k discrepancy and baselines)", "rules",
                   "cmd_select", required=("--scores", "--out"), epilog=pairs_epilog)
    _selection(sel, STRATEGIES)
    lab = _command(rsub, "label", "label each pair from its selected rules, with diagnostics against gold",
                   "rules", "cmd_label", required=("--scores", "--out"), epilog=pairs_epilog)
    _selection(lab, STRATEGIES)
    lab.add_argument("--ties", default="skip", choices=TIES, help="what a tie becomes (default: skipped)")
    lab.add_argument("--diagnostics", default=None, metavar="FILE",
                     help="write agreement / mutual information JSON here")
    lab.add_argument("--ks", type=int, nargs="+", default=[3, 5, 8],
                     help="the diagnostics' k values (each must fit the pool)")
    lab.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")

    ap = _command(rsub, "apply", "label new pairs from the rules a trained Rule Adapter selects", "rules",
                  "cmd_apply", required=("--ckpt", "--scores", "--out"), epilog=pairs_epilog)
    opt.ckpt(ap, "the Rule Adapter: Orbax checkpoint or HF classifier directory", old="--adapter")
    ap.add_argument("--scores", default=None, metavar="FILE", help="pairwise score file, or per-response file with --pairs")
    ap.add_argument("--pairs", default=None, metavar="FILE", help="pairs {prompt, a, b, winner?} to join with --scores")
    opt.out_file(ap, "output JSONL (rules label rows, strategy 'adapter')")
    ap.add_argument("--rules", default=None, metavar="FILE", help="rule pool (default: the built-in pool)")
    ap.add_argument("--k", type=int, default=5, help="rules selected per pair")
    ap.add_argument("--ties", default="skip", choices=TIES, help="what a tie becomes (default: skipped)")
    ap.add_argument("--seed", type=int, default=0, help="for --ties random")
    opt.batch_size(ap, "pairs per forward pass")
    opt.overlong(ap, max_length=None)
    opt.tokenizer(ap)
    opt.mesh(ap)


def _selection(p, strategies) -> None:
    p.add_argument("--scores", default=None, metavar="FILE", help="pairwise score file, or per-response file with --pairs")
    p.add_argument("--pairs", default=None, metavar="FILE", help="pairs {prompt, a, b, winner?} to join with --scores")
    opt.out_file(p, "output JSONL")
    p.add_argument("--rules", default=None, metavar="FILE", help="rule pool (JSONL or YAML); default: the built-in pool")
    p.add_argument("--strategy", default="topk_discrepancy", choices=strategies)
    p.add_argument("--k", type=int, default=5, help="rules kept per pair (at most the pool's size)")
    p.add_argument("--weight", type=float, default=0.5, help="discrepancy weight of topk_discrepancy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-scores", default=None, metavar="FILE",
                   help="gold pairs for fitted_linear (default: the input's gold pairs)")
    p.add_argument("--fit-pairs", default=None, metavar="FILE", help="pairs file joined with --fit-scores")
    p.add_argument("--l2", type=float, default=1e-2, help="L2 strength of the fitted_linear fit")


def _convert(csub) -> None:
    h = _command(csub, "hf-to-orbax", "HF safetensors directory -> Orbax checkpoint", "jobs", "cmd_hf_to_orbax",
                 required=("--ckpt", "--out"))
    opt.ckpt(h, "the Hugging Face directory (config.json + safetensors)", old="--hf-dir")
    h.add_argument("--out", default=None, metavar="DIR", help="the Orbax checkpoint directory to write")
    h.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    h.add_argument("--unrolled", action="store_true", help="store layers unrolled instead of stacked")
    opt.mesh(h)
    o = _command(csub, "orbax-to-hf", "Orbax checkpoint -> HF directory transformers loads", "jobs",
                 "cmd_orbax_to_hf", required=("--ckpt", "--out"))
    opt.ckpt(o, "the Orbax checkpoint directory (a training run's checkpoints/)")
    o.add_argument("--out", default=None, metavar="DIR", help="the Hugging Face directory to write")
    o.add_argument("--step", type=int, default=None, help="default: latest")
    o.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    opt.tokenizer(o, "copy tokenizer files from here (default: the run's tokenizer)", old="--tokenizer-dir")
    o.add_argument("--overwrite", action="store_true")
    opt.mesh(o)


def _tokenizer(tsub) -> None:
    t = _command(tsub, "train", "train a byte-fallback SentencePiece tokenizer with the chat special tokens",
                 "jobs", "cmd_tokenizer_train", required=("--in", "--out"),
                 epilog="--in: text files (one document per file) or JSONL files whose rows' strings are all read "
                        "(prompt, responses, messages); several files may be given")
    t.add_argument("--in", dest="inp", nargs="+", default=None, metavar="FILE", help="training texts")
    t.add_argument("--out", default=None, metavar="DIR", help="the tokenizer directory to write")
    t.add_argument("--vocab-size", type=int, default=8000, help="an upper bound; a small corpus gives fewer pieces")
    t.add_argument("--seed", type=int, default=0)
