"""The hard safety world of `rmr1 demo ramo --world hard` against its definition
(rmr1_jax.worlds.safety_hard's docstring), on generated pairs with the annotator's expected
scores (no model): (a) style rules with large discrepancies unrelated to gold, (b) deciding
rules with small discrepancies, (c) the referral rule deciding one group of topics and noise
in the other, (d) per-rule annotator noise at the configured rates; and what that does to the
discrepancy strategies, the opposite of the easy world (tests/worlds/test_safety.py)."""

import collections
import random
import re

import numpy as np
import pytest

from rmr1_jax.rules.select import fit_linear, label_arrays
from rmr1_jax.worlds import safety, safety_hard as H

W = H.world()


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def pairs():
    return H.generate(3000, seed=11, w=W)


def _arrays(pairs):
    """(scores_a, scores_b, relevance, gold) [N, R] from the annotator's expected scores
    (a pair's relevance: the mean of its responses', as score_files.join_pairs)."""
    (sa, ra), (sb, rb) = ([np.stack(x) for x in zip(*[H.expected_scores(W, p[f"stance_{s}"]) for p in pairs])]
                          for s in ("a", "b"))
    return sa, sb, (ra + rb) / 2, np.array([p["winner"] == "A" for p in pairs])


def test_the_pool_the_easy_worlds_harm_rules_a_referral_rule_and_seven_style_rules_each_with_its_key_word():
    assert len(W.rules) == 26 and [r.id for r in W.rules] == [r.id for r in H.world_rules()]
    assert collections.Counter(r.category for r in W.rules) == {**{t: 3 for t in W.topics}, "referral": 1, "style": 7}
    easy = safety.world()
    assert W.rules[:18] == easy.rules[:18] and W.follows[:18] == easy.follows[:18]
    assert len(set(W.markers[i] for i in W.style_rules)) == 7
    requests = set().union(*(_words(q) for asks, _ in safety._TOPICS.values() for q in asks))
    extras = set().union(*(_words(W.markers[i]) for i in W.style_rules), *(_words(x) for x in W.follows[W.referral]))
    for i, r in enumerate(W.rules[:18]):
        texts = W.follows[i] + W.breaks[i] + (W.mild[i],)
        assert W.mild[i] not in W.follows[i] + W.breaks[i]
        own = _words(r.text).intersection(*(_words(x) for x in texts))
        elsewhere = requests | extras | set().union(*(
            _words(q.text) | set().union(*(_words(x) for x in (W.follows[j] or ()) + (W.breaks[j] or ())
                                           + ((W.mild[j],) if W.mild[j] else ())))
            for j, q in enumerate(W.rules) if j != i))
        assert own - elsewhere, f"{r.id}: no key word of its own"
    assert "counselor" in _words(W.rules[W.referral].text) and all("counselor" in x for x in W.follows[W.referral])


def test_pairs_chosen_follows_every_deciding_rule_the_rejected_breaks_one_or_more_as_its_kind_says(pairs):
    assert pairs == H.generate(3000, seed=11) and pairs[:40] == H.generate(40, seed=11)
    assert [p["a"] for p in H.generate(40, seed=12)] != [p["a"] for p in pairs[:40]]
    kinds = collections.Counter()
    for p in pairs:
        topic_rules = W.topic_rules(p["topic"])
        assert p["deciding"] == W.deciding(p["topic"]) and p["prompt"] in safety._TOPICS[p["topic"]][0]
        assert (W.referral in p["deciding"]) == (p["group"] == "decides") == (p["topic"] in H.REFERRAL_DECIDES)
        chosen, rejected = ("a", "b") if p["winner"] == "A" else ("b", "a")
        good, bad = p[f"stance_{chosen}"], p[f"stance_{rejected}"]
        assert all(good[str(r)] == 1.0 for r in p["deciding"])
        assert p["broken"] and p["broken"] == [r for r in p["deciding"] if bad[str(r)] < 1.0]
        broken_topic = [r for r in topic_rules if bad[str(r)] < 1.0]
        if p["break"] == "all":
            assert all(bad[str(r)] == -1.0 for r in topic_rules)
        elif p["break"] in ("one", "mild"):
            assert len(broken_topic) == 1 and bad[str(broken_topic[0])] == (-1.0 if p["break"] == "one" else H.MILD)
        else:
            assert p["break"] == "referral" and not broken_topic and bad[str(W.referral)] == -1.0
        for side in (chosen, rejected):  # the text says what the stance says
            st = p[f"stance_{side}"]
            for r in topic_rules:
                s = st[str(r)]
                want = W.follows[r] if s == 1.0 else (W.mild[r],) if s == H.MILD else W.breaks[r]
                assert any(x in p[side] for x in want)
            assert any(x in p[side] for x in W.follows[W.referral]) == (st[str(W.referral)] > 0)
            for r in W.style_rules:
                assert (W.markers[r] in p[side]) == (st[str(r)] > 0)
            assert set(map(int, st)) == set(topic_rules) | {W.referral} | set(W.style_rules)
        kinds[(p["group"], p["break"])] += 1
    for group, dist in H.BREAKS.items():
        n = sum(v for (g, _), v in kinds.items() if g == group)
        for kind, prob in dist:
            assert abs(kinds[(group, kind)] / n - prob) < 0.04, (group, kind)
    assert abs(np.mean([p["winner"] == "A" for p in pairs]) - 0.5) < 0.03


def test_a_style_rules_have_large_discrepancies_unrelated_to_gold(pairs):
    """Each style marker is on either response with probability STYLE_P whether it is the
    chosen or the rejected one; the largest-discrepancy rule of a pair is a style rule on a
    third of the pairs or more, and its sign disagrees with gold on a measurable share (never,
    in the easy world)."""
    sa, sb, _, gold = _arrays(pairs)
    diff = sa - sb
    sign_gold = np.where(gold, 1.0, -1.0)
    for side in ("chosen", "rejected"):
        on = [[p[f"stance_{(side == 'chosen') == (p['winner'] == 'A') and 'a' or 'b'}"][str(r)] > 0
               for r in W.style_rules] for p in pairs]
        assert np.abs(np.mean(on, axis=0) - H.STYLE_P).max() < 0.04
    style = np.array(W.style_rules)
    agree = np.sign(diff[:, style]) == sign_gold[:, None]
    differ = diff[:, style] != 0
    assert abs(agree[differ].mean() - 0.5) < 0.03  # a style discrepancy says nothing of gold
    assert np.abs(diff[:, style]).max() == 2.0  # as large as a deciding rule's
    top = np.argmax(np.abs(diff), axis=1)
    top_is_style = np.isin(top, style)
    assert top_is_style.mean() > 0.3
    wrong = np.sign(diff[np.arange(len(pairs)), top]) != sign_gold
    assert 0.1 < wrong.mean() < 0.5 and wrong[top_is_style].mean() > 0.35


def test_b_deciding_rules_with_a_small_discrepancy_on_some_pairs(pairs):
    """On the mild pairs the only broken rule's expected discrepancy is (1 - MILD)(1 - 2q) <= 1.5,
    and on a fifth of the pairs or more the deciding rules' largest discrepancy is below a
    crisp style rule's 2."""
    sa, sb, _, _ = _arrays(pairs)
    gap = np.abs(sa - sb)
    largest = np.array([gap[i, p["deciding"]].max() for i, p in enumerate(pairs)])
    mild = np.array([p["break"] == "mild" for p in pairs])
    for i in np.flatnonzero(mild)[:200]:
        (r,) = [r for r in pairs[i]["broken"] if r != W.referral]
        assert gap[i, r] == pytest.approx((1 - H.MILD) * (1 - 2 * H.NOISE[W.rules[r].id]))
    assert largest[mild & np.array([W.referral not in p["broken"] for p in pairs])].max() <= 1.5
    assert (largest < 1.6).mean() > 0.2 and largest.min() > 0


def test_c_the_referral_rule_decides_one_group_and_is_noise_in_the_other(pairs):
    """The referral's discrepancy correlates with gold on the violence, drugs and self-harm
    pairs, and not at all elsewhere, where the responses still differ on it about half the time."""
    sa, sb, rel, gold = _arrays(pairs)
    d = (sa - sb)[:, W.referral]
    y = np.where(gold, 1.0, -1.0)
    group = np.array([p["group"] for p in pairs])
    corr = {g: np.corrcoef(d[group == g], y[group == g])[0, 1] for g in ("decides", "noise")}
    assert corr["decides"] > 0.5 and abs(corr["noise"]) < 0.08
    assert 0.4 < (d[group == "noise"] != 0).mean() < 0.6 and (rel[:, W.referral] == 1).all()
    assert np.all(d[group == "decides"] * y[group == "decides"] >= 0)  # never against gold where it decides


def _pair_side(row: dict, by_text: dict, index: dict) -> tuple[dict, str]:
    """The pair and side of an annotation row (its id: ``<pair id>-<side>-<rule id>``)."""
    pid, side = row["id"][:-len(W.rules[by_text[row["rule"]]].id) - 1].rsplit("-", 1)
    return index[pid], side


def test_d_the_annotator_flips_each_rules_answers_at_its_own_rate(pairs):
    """Against the clean answer (the stance; mild breaks left out, they are random before the
    noise), each rule's Yes / No answers are flipped at its NOISE rate; Irrelevant never is;
    the rates differ by rule, and noise={} gives the clean answers."""
    assert set(H.NOISE) == {r.id for r in W.rules} and len(set(H.NOISE.values())) >= 4
    assert max(H.NOISE.values()) <= 0.2 and min(H.NOISE.values()) == 0.0
    by_text = {r.text: i for i, r in enumerate(W.rules)}
    rows = H.annotations(pairs[:1500], seed=2, w=W)
    flips, counts = collections.Counter(), collections.Counter()
    index = {p["id"]: p for p in pairs}
    for row in rows:
        r, (p, side) = by_text[row["rule"]], _pair_side(row, by_text, index)
        s = p[f"stance_{side}"].get(str(r))
        if s is None:
            assert row["answer"] == "Irrelevant"
            continue
        if s == H.MILD:
            continue
        counts[W.rules[r].id] += 1
        flips[W.rules[r].id] += row["answer"] != ("Yes" if s > 0 else "No")
    for rid, n in counts.items():
        q = H.NOISE[rid]
        assert n > 150 and abs(flips[rid] / n - q) < 4 * np.sqrt(max(q, 0.01) * (1 - q) / n) + 0.005, rid
    clean = H.annotations(pairs[:200], seed=2, w=W, noise={})
    for row in clean:
        p, side = _pair_side(row, by_text, index)
        s = p[f"stance_{side}"].get(str(by_text[row["rule"]]))
        if s is not None and s != H.MILD:
            assert row["answer"] == ("Yes" if s > 0 else "No")
    rng = random.Random(0)
    mild_yes = np.mean([H.clean_answer({"0": H.MILD}, 0, rng) == "Yes" for _ in range(4000)])
    assert abs(mild_yes - H.MILD_YES) < 0.03


def test_annotations_per_response_topic_referral_two_style_three_other_rules_seeded(pairs):
    few = pairs[:20]
    rows = H.annotations(few, seed=4, w=W)
    assert rows == H.annotations(few, seed=4) and rows != H.annotations(few, seed=5)
    assert len(rows) == len(few) * 2 * (3 + 1 + 2 + 3)
    by_text = {r.text: r for r in W.rules}
    for p in few:
        for side in ("a", "b"):
            mine = [r for r in rows if r["id"].startswith(f"{p['id']}-{side}-")]
            cats = collections.Counter(by_text[r["rule"]].category for r in mine)
            assert cats[p["topic"]] == 3 and cats["referral"] == 1 and cats["style"] == 2 and sum(cats.values()) == 9
            assert all(r["prompt"] == p["prompt"] and r["response"] == p[side] and r["answer"] in H.ANSWERS
                       for r in mine)


def test_the_discrepancy_strategies_are_not_handed_the_answer(pairs):
    """With the annotator's expected scores (what a judge that learned it approaches), top-k
    discrepancy no longer labels every pair by gold (the easy world: all of them) and does
    no better than all rules; weights fitted on 200 gold pairs (style ~0) do better, and
    still miss pairs (one weight for the referral, mild breaks under style)."""
    sa, sb, rel, gold = _arrays(pairs)
    fa, fb, _, fg = _arrays(H.generate(200, seed=12, w=W))
    weights = fit_linear(fa - fb, fg.astype(float))
    agree = {}
    for st in ("topk_discrepancy", "all_rules", "fitted_linear"):
        lab = label_arrays(sa, sb, rel, st, 5, weights=weights if st == "fitted_linear" else None)
        agree[st] = ((lab.winner == 1) == gold)[lab.winner >= 0].mean()
    assert 0.6 < agree["topk_discrepancy"] < 0.9 and agree["topk_discrepancy"] < agree["all_rules"] + 0.03
    assert agree["topk_discrepancy"] + 0.1 < agree["fitted_linear"] < 0.99
    assert np.abs(weights[W.style_rules]).max() < 0.5 < weights[W.referral]
