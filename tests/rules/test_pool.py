"""The rule pool: the default pool's coverage, JSONL / YAML pool files, and every error."""

import json

import pytest

from rmr1_jax.errors import DataError
from rmr1_jax.rules.pool import Rule, default_pool, load_pool, write_pool

PKU_CATEGORIES = {
    "endangering_national_security", "insulting_behavior", "discriminatory_behavior", "endangering_public_health",
    "copyright_issues", "violence", "drugs", "privacy_violation", "economic_crime", "mental_manipulation",
    "human_trafficking", "physical_harm", "sexual_content", "cybercrime", "disrupting_public_order",
    "environmental_damage", "psychological_harm", "white_collar_crime", "animal_abuse",
}


def _jsonl(tmp_path, lines, name="pool.jsonl"):
    p = tmp_path / name
    p.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines), encoding="utf-8")
    return str(p)


def test_default_pool_covers_the_harm_categories_and_general_conduct():
    pool = load_pool()
    assert pool == default_pool()
    assert len(pool) == 100
    assert len({r.id for r in pool}) == 100
    cats = {r.category for r in pool}
    assert cats == PKU_CATEGORIES | {"general"}
    for c in PKU_CATEGORIES:
        assert sum(r.category == c for r in pool) >= 3, c
    assert sum(r.category == "general" for r in pool) >= 15
    for r in pool:
        assert isinstance(r, Rule)
        assert r.text.startswith("Prefer the response that") and r.text.endswith("."), r.id
        assert len(r.text) < 200, r.id


def test_rule_is_frozen():
    r = Rule("x", "Prefer the response that is kind.")
    assert r.category is None
    with pytest.raises(Exception):
        r.id = "y"


def test_jsonl_round_trip_keeps_order_and_optional_category(tmp_path):
    path = _jsonl(tmp_path, [{"id": "b", "text": "Prefer the response that is brief.", "category": "general"},
                             "", {"id": "a", "text": "  Prefer the response that is honest.  "},
                             {"id": "c", "text": "Prefer the response that is safe.", "category": None}])
    pool = load_pool(path)
    assert pool == [Rule("b", "Prefer the response that is brief.", "general"),
                    Rule("a", "Prefer the response that is honest.", None),
                    Rule("c", "Prefer the response that is safe.", None)]
    out = str(tmp_path / "out.jsonl")
    assert write_pool(out, pool) == 3
    assert load_pool(out) == pool


def test_yaml_pool(tmp_path):
    p = tmp_path / "pool.yaml"
    p.write_text("- id: r1\n  text: Prefer the response that refuses weapons help.\n  category: violence\n"
                 "- {id: r2, text: Prefer the response that is honest.}\n", encoding="utf-8")
    assert load_pool(str(p)) == [Rule("r1", "Prefer the response that refuses weapons help.", "violence"),
                                 Rule("r2", "Prefer the response that is honest.", None)]


@pytest.mark.parametrize("rows, line, needle", [
    ([{"id": "a", "text": "t1"}, {"id": "a", "text": "t2"}], 2, "duplicate rule id 'a' (first at "),
    ([{"id": "a", "text": "   "}], 1, "rule 'a' has an empty text"),
    ([{"id": "", "text": "t"}], 1, "empty rule id"),
    ([{"id": "a", "text": "t", "weight": 2}], 1, "unknown key(s) 'weight'"),
    ([{"id": 7, "text": "t"}], 1, "field 'id' must be a string, got int"),
    ([{"id": "a", "text": ["t"]}], 1, "field 'text' must be a string, got list"),
    ([{"id": "a", "text": "t", "category": 3}], 1, "field 'category' must be a string, got int"),
    ([{"text": "t"}], 1, "missing field 'id'"),
    ([{"id": "a"}], 1, "missing field 'text'"),
    ([{"id": "a", "text": "t"}, "{not json"], 2, "invalid JSON"),
    ([{"id": "a", "text": "t"}, "[1, 2]"], 2, "row is not a JSON object"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, rows, line, needle):
    path = _jsonl(tmp_path, rows)
    with pytest.raises(DataError) as e:
        load_pool(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: "), msg
    assert needle in msg, msg


def test_duplicate_id_names_both_lines(tmp_path):
    path = _jsonl(tmp_path, [{"id": "a", "text": "t1"}, {"id": "b", "text": "t"}, {"id": "a", "text": "t2"}])
    with pytest.raises(DataError, match=rf"^{path}:3: duplicate rule id 'a' \(first at {path}:1\)$"):
        load_pool(path)


@pytest.mark.parametrize("text, needle", [
    ("- {id: a, text: t}\n- {id: a, text: u}\n", "item 2: duplicate rule id 'a'"),
    ("- {id: a, text: ''}\n", "item 1: rule 'a' has an empty text"),
    ("- {id: a, text: t, extra: 1}\n", "item 1: unknown key(s) 'extra'"),
    ("- {id: a, text: t}\n- {id: 5, text: u}\n", "item 2: field 'id' must be a string, got int"),
    ("- {id: a, text: t}\n- just a string\n", "item 2: a rule must be a mapping"),
    ("id: a\ntext: t\n", "expected a YAML list of rules, got dict"),
    ("- {id: a, text: [unclosed\n", "invalid YAML"),
    ("", "the rule pool is empty"),
])
def test_yaml_errors_name_file_and_item(tmp_path, text, needle):
    p = tmp_path / "pool.yml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_pool(str(p))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: "), msg
    assert needle in msg, msg


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_pool(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="file not found"):
        load_pool(str(tmp_path / "nope.yaml"))
    with pytest.raises(DataError, match="the rule pool is empty"):
        load_pool(_jsonl(tmp_path, ["", "  "]))
