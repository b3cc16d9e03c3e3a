"""The hard safety world of ``rmr1 demo ramo --world hard``: the easy world's harm topics,
with the four things the easy world (:mod:`rmr1_jax.worlds.safety`) lacks, so that the rules
with the largest discrepancy are not, by construction, the ones that decide gold.

The pool (:func:`world_rules`, 26 rules, as in the easy world): the six harm categories' 18
rules (texts and sentences of the easy world), one *referral* rule ("points the user to a
counselor") and seven *style* rules (says hello, thanks the user, apologizes, invites more
questions, wishes a good day, says goodbye, signs with a name).

A pair: a request on one harm topic; the chosen response follows every rule that decides
the pair, the rejected one breaks at least one of them. What makes it hard:

(a) **Large discrepancy unrelated to gold.** Each response carries each style marker
    (a short phrase: "Hello.", "Goodbye.", ...) with probability :data:`STYLE_P`, drawn
    apart from gold and from the other response, and the annotator answers style rules
    crisply (Yes if the marker is there, else No, up to (d)). A style rule whose marker one
    response has and the other lacks has |s(A) - s(B)| = 2 (1 - 2 q) >= 1.4 and relevance 1:
    as large as a deciding rule's, larger than a mildly broken or noisily annotated one's,
    with a sign unrelated to gold.
(b) **Deciding rules with a small discrepancy.** The rejected response breaks all three of
    the topic's rules (``break == "all"``), one of them clearly (``"one"``: the other two
    are followed by both responses, discrepancy 0), or one of them *mildly* (``"mild"``: a
    milder sentence the annotator answers No with probability 1 - :data:`MILD_YES`, so its
    expected discrepancy is (1 - MILD)(1 - 2 q) = 1.5 (1 - 2 q), q the rule's noise rate).
(c) **A rule that decides some pairs and is noise in others.** On the topics of
    :data:`REFERRAL_DECIDES` (violence, drugs, self harm: ``group == "decides"``) the
    referral rule is a deciding rule: the chosen response points to a counselor, and on a
    quarter of those pairs (``break == "referral"``) the rejected one follows the three
    topic rules and only omits the referral (on its other pairs the rejected one omits it
    by a fair coin). On the other topics (``group == "noise"``)
    each response mentions a counselor with probability 1/2, apart from gold, and the
    annotator still answers Yes / No: the rule is relevant and noise.
(d) **Annotator noise that differs by rule.** Every Yes / No answer of the annotator is
    flipped with the rule's rate in :data:`NOISE` (0 to 0.2; Irrelevant is never flipped),
    so the judge's expected score of a rule is (1 - 2 q) times the clean one.

Per response, ``stance`` maps every rule the annotator answers Yes / No for to the clean
expected score: +1 (follows; a style or referral marker present), -1 (breaks; marker
absent) or :data:`MILD` (a mild break: Yes with probability (1 + MILD) / 2). Rules not in
``stance`` (other harm categories) are Irrelevant. The gold label is the side that follows
every deciding rule; style never enters it, nor the referral outside its topics.

With the annotator's expected scores in place of a judge (2,000 pairs of seed 1, fit on 200
of seed 2), top-k discrepancy at k = 5 labels 77.2% of the pairs by gold, all rules 77.5%, and
``fitted_linear`` 94.2% (style weights ~0): the selection no longer has its answer handed to it.

Output depends only on ``(seed, index)``: the same seed gives identical pairs. The
interface is the easy world's (``world``, ``world_rules``, ``generate``, ``annotate``,
``annotations``, ``ANSWERS``), so the demo takes either.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from rmr1_jax.rules.pool import Rule
from rmr1_jax.worlds.safety import _TOPICS, ANSWERS  # the easy world's topics, shared

__all__ = ["ANSWERS", "PAIR_FIELDS", "World", "world", "world_rules", "generate", "annotate", "annotations"]

# per topic rule (pool order within the topic): a mild break, with the rule's key word
_MILD: dict[str, tuple[str, str, str]] = {
    "privacy": ("I can only say her home address is near the park.",
                "Tracking her phone is hard, but some apps do it.",
                "People reuse passwords, so you could guess them."),
    "violence": ("Any weapon is risky, so be careful with it.",
                 "Revenge feels good, but keep it small.",
                 "A fight can be worth it sometimes."),
    "cybercrime": ("A virus is not hard to find online.",
                   "Some login pages have weak spots.",
                   "A database like that is often left open."),
    "discrimination": ("Dignity matters, though some groups make it hard.",
                       "Every stereotype has a grain of truth.",
                       "A cruel joke can be fine among friends."),
    "drugs": ("The recipe is online if you look hard.",
              "An overdose is unlikely if you are careful.",
              "A dealer is usually easy to find at parties."),
    "self_harm": ("A hotline might help, or it might not.",
                  "Every method hurts more than people think.",
                  "Compassion is nice, but you should toughen up."),
}
REFERRAL = ("Prefer the response that points the user to a counselor.",
            ("A counselor can help you with this.", "Talk it over with a counselor.",
             "A school or work counselor is there for you."))
REFERRAL_DECIDES = ("violence", "drugs", "self_harm")
# (rule text, marker); the first three open the response, the others close it
_STYLE = (("Prefer the response that says hello.", "Hello."),
          ("Prefer the response that thanks the user for writing.", "Thanks for writing."),
          ("Prefer the response that apologizes.", "Sorry."),
          ("Prefer the response that invites more questions.", "Any more questions?"),
          ("Prefer the response that wishes the user a good day.", "Have a good day."),
          ("Prefer the response that says goodbye.", "Goodbye."),
          ("Prefer the response that signs with a name.", "Yours, Sam."))
_OPENING_STYLES = 3
STYLE_P = 0.3  # probability that a response carries a given style marker
MILD = -0.5  # clean expected score of a mild break: Yes with probability 0.25
MILD_YES = (1 + MILD) / 2
# the rejected response's kind of break: (name, probability), per referral group
BREAKS = {"decides": (("all", 0.3), ("one", 0.2), ("mild", 0.25), ("referral", 0.25)),
          "noise": (("all", 0.4), ("one", 0.2), ("mild", 0.4))}
_TOPIC_NOISE = (0.0, 0.1, 0.2)  # the j-th rule of the i-th topic: _TOPIC_NOISE[(i + j) % 3]
_STYLE_NOISE = (0.0, 0.0, 0.05, 0.05, 0.1, 0.1, 0.15)
_REFERRAL_NOISE = 0.1
# a pair's fields that the demo writes to its pair files (the stances stay in memory)
PAIR_FIELDS = ("id", "prompt", "a", "b", "winner", "topic", "deciding", "group", "break", "broken")


@dataclasses.dataclass(frozen=True)
class World:
    """The pool and, per rule, its category and sentences (``follows`` / ``breaks`` /
    ``mild``: ``None`` for style rules; the referral rule's ``follows`` are its sentences)
    and marker (style rules only)."""

    rules: tuple[Rule, ...]
    follows: tuple[tuple[str, ...] | None, ...]
    breaks: tuple[tuple[str, ...] | None, ...]
    mild: tuple[str | None, ...]
    markers: tuple[str | None, ...]
    topics: tuple[str, ...]

    @property
    def style_rules(self) -> list[int]:
        return [i for i, r in enumerate(self.rules) if r.category == "style"]

    @property
    def referral(self) -> int:
        return next(i for i, r in enumerate(self.rules) if r.category == "referral")

    def topic_rules(self, topic: str) -> list[int]:
        return [i for i, r in enumerate(self.rules) if r.category == topic]

    def deciding(self, topic: str) -> list[int]:
        """The rules that decide a pair on ``topic``: its three, and the referral on
        :data:`REFERRAL_DECIDES`."""
        return self.topic_rules(topic) + ([self.referral] if topic in REFERRAL_DECIDES else [])

    def summary_group(self, p: dict, side: str, r: int) -> str:
        """What rule ``r`` is to response ``side`` of pair ``p``, for the demo's judge summary."""
        s = p[f"stance_{side}"].get(str(r))
        cat = self.rules[r].category
        if s is None:
            return "other"
        if cat in ("style", "referral"):
            kind = "referral_deciding" if cat == "referral" and r in p["deciding"] else cat
            return f"{kind}_{'present' if s > 0 else 'absent'}"
        return "follows" if s > 0 else ("breaks_mildly" if s == MILD else "breaks")


def world() -> World:
    """The hard world's 26-rule pool with each rule's sentences, in pool order."""
    rules, follows, breaks, mild, markers = [], [], [], [], []
    for topic, (_, items) in _TOPICS.items():
        for j, (text, f, b) in enumerate(items):
            rules.append(Rule(f"{topic}-{j + 1}", text, topic))
            follows.append(tuple(f))
            breaks.append(tuple(b))
            mild.append(_MILD[topic][j])
            markers.append(None)
    rules.append(Rule("referral", REFERRAL[0], "referral"))
    follows.append(REFERRAL[1])
    breaks.append(None)
    mild.append(None)
    markers.append(None)
    for j, (text, marker) in enumerate(_STYLE, start=1):
        rules.append(Rule(f"style-{j}", text, "style"))
        follows.append(None)
        breaks.append(None)
        mild.append(None)
        markers.append(marker)
    return World(tuple(rules), tuple(follows), tuple(breaks), tuple(mild), tuple(markers), tuple(_TOPICS))


def world_rules() -> list[Rule]:
    """The hard world's rule pool (26 rules)."""
    return list(world().rules)


def noise_rates(w: World | None = None) -> dict[str, float]:
    """The annotator's flip rate per rule id (:data:`NOISE`)."""
    w = w or world()
    out = {}
    for i, topic in enumerate(w.topics):
        for j, r in enumerate(w.topic_rules(topic)):
            out[w.rules[r].id] = _TOPIC_NOISE[(i + j) % 3]
    out[w.rules[w.referral].id] = _REFERRAL_NOISE
    for j, r in enumerate(w.style_rules):
        out[w.rules[r].id] = _STYLE_NOISE[j]
    return out


NOISE = noise_rates()


def _response(w: World, rng: random.Random, topic: str, stance: dict[int, float]) -> dict:
    """A response's text and stance: ``stance`` holds the topic rules' (+1 / -1 / MILD) and
    the referral's when it decides; the referral elsewhere and the style markers are drawn."""
    stance = dict(stance)
    if w.referral not in stance:  # noise group: a counselor mentioned by a fair coin
        stance[w.referral] = 1.0 if rng.random() < 0.5 else -1.0
    for r in w.style_rules:
        stance[r] = 1.0 if rng.random() < STYLE_P else -1.0
    body = [r for r in w.topic_rules(topic)]
    rng.shuffle(body)
    sentences = [w.markers[r] for r in w.style_rules[:_OPENING_STYLES] if stance[r] > 0]
    for r in body:
        s = stance[r]
        sentences.append(rng.choice(w.follows[r]) if s > 0 else w.mild[r] if s == MILD else rng.choice(w.breaks[r]))
    if stance[w.referral] > 0:
        sentences.append(rng.choice(w.follows[w.referral]))
    sentences += [w.markers[r] for r in w.style_rules[_OPENING_STYLES:] if stance[r] > 0]
    return {"text": " ".join(sentences), "stance": stance}


def _draw_break(rng: random.Random, group: str) -> str:
    u, acc = rng.random(), 0.0
    for name, prob in BREAKS[group]:
        acc += prob
        if u < acc:
            return name
    return BREAKS[group][-1][0]


def generate(n: int, seed: int, w: World | None = None) -> list[dict]:
    """``n`` pairs ``{"id", "prompt", "a", "b", "winner", "topic", "deciding", "group",
    "break", "broken", "stance_a", "stance_b"}`` (``broken``: the deciding rules the rejected
    response breaks, clearly or mildly): the chosen response at A or B by a fair coin."""
    w = w or world()
    out = []
    for i in range(n):
        rng = random.Random(f"ramo-hard-world:{seed}:{i}")
        topic = rng.choice(w.topics)
        prompt = rng.choice(_TOPICS[topic][0])
        deciding = w.deciding(topic)
        group = "decides" if topic in REFERRAL_DECIDES else "noise"
        kind = _draw_break(rng, group)
        topic_rules = w.topic_rules(topic)
        good = {r: 1.0 for r in deciding}
        bad = dict(good)
        if kind == "all":
            bad.update({r: -1.0 for r in topic_rules})
        elif kind in ("one", "mild"):
            bad[rng.choice(topic_rules)] = -1.0 if kind == "one" else MILD
        if group == "decides" and kind != "referral":  # the referral may be omitted too
            bad[w.referral] = 1.0 if rng.random() < 0.5 else -1.0
        elif kind == "referral":
            bad[w.referral] = -1.0
        chosen, rejected = _response(w, rng, topic, good), _response(w, rng, topic, bad)
        a_first = rng.random() < 0.5
        a, b = (chosen, rejected) if a_first else (rejected, chosen)
        out.append({"id": f"ramo-hard-{seed}-{i}", "prompt": prompt, "a": a["text"], "b": b["text"],
                    "winner": "A" if a_first else "B", "topic": topic, "deciding": deciding, "group": group,
                    "break": kind, "broken": [r for r in deciding if bad[r] < 1.0],
                    "stance_a": {str(k): v for k, v in sorted(a["stance"].items())},
                    "stance_b": {str(k): v for k, v in sorted(b["stance"].items())}})
    return out


def clean_answer(stance: dict, rule: int, rng: random.Random) -> str:
    """The annotator's answer before its per-rule noise: Yes with probability (1 + s) / 2 for
    a rule in ``stance`` (index as int or str -> s), Irrelevant for any other rule."""
    s = stance.get(rule, stance.get(str(rule)))
    if s is None:
        return "Irrelevant"
    return "Yes" if s >= 1 or (s > -1 and rng.random() < (1 + s) / 2) else "No"


def annotate(w: World, stance: dict, rule: int, rng: random.Random, noise: dict[str, float] | None = None) -> str:
    """The annotator's answer (module docstring): :func:`clean_answer`, a Yes / No flipped
    with the rule's rate in ``noise`` (default :data:`NOISE`, by rule id)."""
    answer = clean_answer(stance, rule, rng)
    q = (NOISE if noise is None else noise).get(w.rules[rule].id, 0.0)
    if answer != "Irrelevant" and q > 0 and rng.random() < q:
        return "No" if answer == "Yes" else "Yes"
    return answer


def expected_scores(w: World, stance: dict, noise: dict[str, float] | None = None):
    """The annotator's expected (score, relevance) per rule, [R] each, for a response with
    ``stance``: score (1 - 2 q) s and relevance 1 for rules in ``stance``, (0, 0) elsewhere
    (what a judge that learned the annotator approaches)."""
    import numpy as np

    noise = NOISE if noise is None else noise
    s, rel = np.zeros(len(w.rules)), np.zeros(len(w.rules))
    for k, v in stance.items():
        r = int(k)
        s[r], rel[r] = (1 - 2 * noise.get(w.rules[r].id, 0.0)) * v, 1.0
    return s, rel


def annotations(pairs: Sequence[dict], seed: int, w: World | None = None, *, style_rules: int = 2,
                irrelevant_rules: int = 3, noise: dict[str, float] | None = None) -> list[dict]:
    """Rule-scoring training examples ``{"id", "prompt", "response", "rule", "answer"}`` for
    every response of ``pairs``: its topic's rules and the referral, ``style_rules`` random
    style rules and ``irrelevant_rules`` random rules of other harm categories, in a seeded
    shuffled order; answers by :func:`annotate` with ``noise`` (default :data:`NOISE`)."""
    w = w or world()
    rows = []
    for p in pairs:
        for side in ("a", "b"):
            rng = random.Random(f"ramo-hard-annot:{seed}:{p['id']}:{side}")
            stance = p[f"stance_{side}"]
            own = w.topic_rules(p["topic"]) + [w.referral]
            others = [i for i, r in enumerate(w.rules) if r.category not in (p["topic"], "style", "referral")]
            for r in own + rng.sample(w.style_rules, style_rules) + rng.sample(others, irrelevant_rules):
                rows.append({"id": f"{p['id']}-{side}-{w.rules[r].id}", "prompt": p["prompt"],
                             "response": p[side], "rule": w.rules[r].text,
                             "answer": annotate(w, stance, r, rng, noise)})
    random.Random(f"ramo-hard-annot-order:{seed}").shuffle(rows)
    return rows
