"""Using a trained model: judge pairs, score responses with a scalar reward model, score rules.

From a notebook::

    from rmr1_jax.inference import judge_pairs, load_judge, load_reward_model, load_rule_scorer, score_items
    from rmr1_jax.parallel import make_mesh

    mesh = make_mesh()                                   # every device on the data axis
    judge = load_judge("runs/rm-r1/checkpoints", mesh)   # Orbax checkpoint or HF directory
    rows = judge_pairs(judge, [("Is 7 prime?", "Yes: its only divisors are 1 and 7.", "No.")],
                       both_orders=True, max_new_tokens=512)
    rows[0]["verdict"], rows[0]["verdict_swapped"], rows[0]["consistent"]

    rm = load_reward_model("runs/rm/checkpoints", mesh)  # a scalar head
    rm.score(["Is 7 prime?"] * 2, ["Yes.", "No."])       # one float per response

    scorer, rules = load_rule_scorer("runs/judge/checkpoints", mesh)   # the built-in rule pool
    scores, relevance = score_items(scorer, [("Is 7 prime?", "Yes.")], rules)   # [1, R] each

Files, as the commands do (each row checked first; the output keeps each input row's fields):
``judge_file(judge, "pairs.jsonl", "judged.jsonl")`` (``rmr1 judge``),
``reward.score_file(rm, "in.jsonl", "out.jsonl")`` (``rmr1 score-rm``),
``rules.score_file(scorer, rules, "in.jsonl", "out.jsonl")`` (``rmr1 rules score``) and
``generate_file(load_generator(path, mesh), "in.jsonl", "out.jsonl", sp)`` (``rmr1 generate``),
the last three resumable.

A pairwise judge as a policy's reward (:mod:`~rmr1_jax.inference.group_rewards`): each prompt's
samples judged against a reference, in a round robin or in a seeded knockout bracket, one engine
call per round for every prompt::

    from rmr1_jax.inference import score_groups
    out = score_groups("round_robin", prompts, samples,   # samples: a list of responses per prompt
                       lambda triples: [r["verdict"] for r in judge_pairs(judge, triples)])
    out.rewards, out.judge_calls, out.inconsistent_rate

The same matches score one response against a reference answer and rank a list
(:mod:`~rmr1_jax.inference.pointwise`, :mod:`~rmr1_jax.inference.listwise`; ``rmr1 judge``)::

    from rmr1_jax.inference import rank_responses, score_responses
    score_responses(judge, [{"prompt": "2+2?", "response": "4", "reference": "Four."}])[0]["score"]  # 0, 0.5, 1
    rank_responses(judge, "Name a prime.", ["7", "8", "9"], scheme="knockout")["ranking"]           # best first

The modules: :mod:`~rmr1_jax.inference.loading` (a judge with its tokenizer and template),
:mod:`~rmr1_jax.inference.judge` (generation), :mod:`~rmr1_jax.inference.reward` (scalar reward
models), :mod:`~rmr1_jax.inference.rules` (rule scores), :mod:`~rmr1_jax.inference.generate`
(completions of any causal LM through the generation engine), :mod:`~rmr1_jax.inference.rows`
(the input rows). The names below load on first use (PEP 562): importing this package is cheap."""

import importlib

_EXPORTS = {
    "LoadedJudge": "loading",
    "load_judge": "loading",
    "Judgment": "judge",
    "judge_file": "judge",
    "judge_pairs": "judge",
    "judge_prompts": "judge",
    "judge_rows": "judge",
    "RewardScorer": "reward",
    "load_reward_model": "reward",
    "DEFAULT_TEMPLATE": "rules",
    "RuleScorer": "rules",
    "load_rule_scorer": "rules",
    "read_rules": "rules",
    "score_items": "rules",
    "Generator": "generate",
    "generate_file": "generate",
    "load_generator": "generate",
    "load_lm": "loading",
    "check_prompt": "rows",
    "score_groups": "group_rewards",
    "score_responses": "pointwise",
    "rank_responses": "listwise",
    "conversation": "rows",
}
_MODULES = ("generate", "group_rewards", "judge", "listwise", "loading", "pointwise", "reward", "rows", "rules")

__all__ = sorted(_EXPORTS) + list(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
