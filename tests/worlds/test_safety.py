"""The safety world of `rmr1 demo ramo` against its definition (rmr1_jax.worlds.safety's
docstring): the pool, what makes gold (the three deciding rules, never the tone), how the
discrepancy strategies read it with the annotator's expected scores, the annotator's noise,
and seeds."""

import collections
import random
import re

import numpy as np

from rmr1_jax.rules.select import label_arrays
from rmr1_jax.worlds import safety


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_the_pool_six_harm_categories_of_three_rules_and_eight_tone_rules_each_harm_rule_with_its_key_word():
    w = safety.world()
    assert len(w.rules) == 26 and [r.id for r in w.rules] == [r.id for r in safety.world_rules()]
    assert collections.Counter(r.category for r in w.rules) == {**{t: 3 for t in w.topics}, "tone": 8}
    assert len(w.topics) == 6 and len(w.tone_rules) == 8
    assert all((w.follows[i] is None) == (r.category == "tone") for i, r in enumerate(w.rules))
    requests = set().union(*(_words(q) for asks, _ in safety._TOPICS.values() for q in asks))
    openers = set().union(*(_words(x) for xs in safety._OPENERS.values() for x in xs))
    for i, r in enumerate(w.rules):
        if r.category == "tone":
            continue
        own = _words(r.text).intersection(*(_words(x) for x in w.follows[i] + w.breaks[i]))
        elsewhere = requests | openers | set().union(*(
            _words(q.text) | set().union(*(_words(x) for x in (w.follows[j] or ()) + (w.breaks[j] or ())))
            for j, q in enumerate(w.rules) if j != i))
        assert own - elsewhere, f"{r.id}: no key word of its own"


def test_pairs_gold_by_the_deciding_rules_tone_independent_and_seeded():
    """A pair's deciding rules are its topic's three; the chosen response follows them all,
    the rejected one breaks them all; the chosen side is a fair coin, and each response's tone
    (its opening phrase) is drawn apart from gold."""
    w = safety.world()
    pairs = safety.generate(2000, seed=5, w=w)
    assert pairs == safety.generate(2000, seed=5) and pairs[:50] == safety.generate(50, seed=5)
    assert [p["a"] for p in safety.generate(50, seed=6)] != [p["a"] for p in pairs[:50]]
    for p in pairs:
        assert p["deciding"] == w.topic_rules(p["topic"]) and p["prompt"] in safety._TOPICS[p["topic"]][0]
        chosen, rejected = ("a", "b") if p["winner"] == "A" else ("b", "a")
        assert p[f"stance_{chosen}"] == {str(i): 1 for i in p["deciding"]}
        assert p[f"stance_{rejected}"] == {str(i): -1 for i in p["deciding"]}
        for i in p["deciding"]:
            assert any(x in p[chosen] for x in w.follows[i]) and any(x in p[rejected] for x in w.breaks[i])
        for side in ("a", "b"):
            assert any(p[side].startswith(x) for x in safety._OPENERS[p[f"tone_{side}"]])
    a_wins = np.array([p["winner"] == "A" for p in pairs])
    warm_a = np.array([p["tone_a"] == "warm" for p in pairs])
    assert abs(a_wins.mean() - 0.5) < 0.04
    assert abs(warm_a[a_wins].mean() - warm_a[~a_wins].mean()) < 0.07  # tone says nothing of gold


def test_world_gold_is_decided_by_the_deciding_rules():
    """With the annotator's expected scores (Yes - No, and 1 - P(Irrelevant)), top-5
    discrepancy labels every pair by gold, all rules follow the tone whenever the tones
    differ and oppose gold, and the tone never decides gold."""
    w = safety.world()
    pairs = safety.generate(400, seed=3, w=w)
    r = len(w.rules)

    def expected(p, side):
        s, rel = np.zeros(r), np.zeros(r)
        for i in range(r):
            stance = p[f"stance_{side}"].get(str(i))
            if stance is not None:
                s[i], rel[i] = (1.0 if stance > 0 else -1.0), 1.0
            elif w.rules[i].category == "tone":
                y = safety.TONE_YES[p[f"tone_{side}"]]
                s[i], rel[i] = 2 * y - 1, 1.0
        return s, rel

    (sa, ra), (sb, rb) = ([np.stack(x) for x in zip(*[expected(p, side) for p in pairs])] for side in ("a", "b"))
    rel = (ra + rb) / 2  # a pair's relevance: the mean of its responses' (score_files.join_pairs)
    gold = np.array([p["winner"] == "A" for p in pairs])
    top = label_arrays(sa, sb, rel, "topk_discrepancy", 5)
    assert np.all((top.winner == 1) == gold)
    allr = label_arrays(sa, sb, rel, "all_rules", r)
    opposed = np.array([p["tone_a"] != p["tone_b"] and (p["tone_a"] == "warm") != (p["winner"] == "A") for p in pairs])
    assert opposed.mean() > 0.15
    assert np.all((allr.winner == 1)[opposed] != gold[opposed]) and np.all((allr.winner == 1)[~opposed] == gold[~opposed])


def test_the_annotator_exact_on_the_topic_irrelevant_off_it_noisy_on_tone():
    """Yes / No for the conversation's topic rules as the response follows or breaks them,
    Irrelevant for other harm categories, and for a tone rule Yes with probability 0.9 after a
    warm opener and 0.1 after a curt one."""
    w = safety.world()
    p = safety.generate(1, seed=3, w=w)[0]
    rng = random.Random(0)
    chosen, rejected = ("a", "b") if p["winner"] == "A" else ("b", "a")
    for d in p["deciding"]:
        assert safety.annotate(w, p[f"tone_{chosen}"], p[f"stance_{chosen}"], d, rng) == "Yes"
        assert safety.annotate(w, p[f"tone_{rejected}"], p[f"stance_{rejected}"], d, rng) == "No"
    for i in range(len(w.rules)):
        if w.rules[i].category not in (p["topic"], "tone"):
            assert safety.annotate(w, "warm", p["stance_a"], i, rng) == "Irrelevant"
    for tone in ("warm", "curt"):
        yes = sum(safety.annotate(w, tone, {}, w.tone_rules[0], rng) == "Yes" for _ in range(4000)) / 4000
        assert abs(yes - safety.TONE_YES[tone]) < 0.03
    assert safety.TONE_YES == {"warm": 0.9, "curt": 0.1}


def test_annotations_per_response_deciding_two_tone_and_three_other_rules_seeded():
    w = safety.world()
    pairs = safety.generate(20, seed=1, w=w)
    rows = safety.annotations(pairs, seed=4, w=w)
    assert rows == safety.annotations(pairs, seed=4) and rows != safety.annotations(pairs, seed=5)
    assert len(rows) == len(pairs) * 2 * (3 + 2 + 3)
    by_text = {r.text: r for r in w.rules}
    for p in pairs:
        for side in ("a", "b"):
            mine = [r for r in rows if r["id"].startswith(f"{p['id']}-{side}-")]
            cats = collections.Counter(by_text[r["rule"]].category for r in mine)
            assert cats[p["topic"]] == 3 and cats["tone"] == 2 and sum(cats.values()) == 8
            for r in mine:
                rule = by_text[r["rule"]]
                assert r["prompt"] == p["prompt"] and r["response"] == p[side] and r["answer"] in safety.ANSWERS
                if rule.category == p["topic"]:
                    assert r["answer"] == ("Yes" if (side == "a") == (p["winner"] == "A") else "No")
                elif rule.category != "tone":
                    assert r["answer"] == "Irrelevant"
