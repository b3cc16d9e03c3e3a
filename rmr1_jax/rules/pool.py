"""The rule pool: an ordered list of safety rules, each a short "Prefer the response that ..."
statement with a stable id and an optional category.

File formats (``load_pool(path)``):

* JSONL (any extension other than ``.yaml`` / ``.yml``): one object per line,
  ``{"id": str, "text": str, "category": str | null}``; ``category`` may be omitted.
* YAML (``.yaml`` / ``.yml``): a list of mappings with the same keys.

Pool order is meaningful: rule-score files, selection labels and the Rule Adapter's output
units all index rules by their position in the pool. Errors are one-line
:class:`~rmr1_jax.errors.DataError` messages naming the file and the line (JSONL) or the
1-based item number (YAML).
"""

from __future__ import annotations

import dataclasses
import json
import os

from rmr1_jax.data.readers import atomic_open, iter_rows
from rmr1_jax.errors import DataError

_KEYS = ("id", "text", "category")


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str
    text: str
    category: str | None = None


def default_pool() -> list[Rule]:
    """The pool that ships with the package (``rules/default_pool.py``): 100 rules."""
    from rmr1_jax.rules.default_pool import DEFAULT_RULES

    return [Rule(rid, text, cat) for rid, text, cat in DEFAULT_RULES]


def load_pool(path: str | None = None) -> list[Rule]:
    """The rules of ``path`` in file order, or the default pool when ``path`` is None."""
    if path is None:
        return default_pool()
    if path.lower().endswith((".yaml", ".yml")):
        items = [(f"{path}: item {i}", row) for i, row in enumerate(_yaml_items(path), start=1)]
    else:
        items = []
        for lineno, row in iter_rows(path):
            if isinstance(row, Exception):
                raise DataError(f"{path}:{lineno}: {row}")
            items.append((f"{path}:{lineno}", row))
    rules: list[Rule] = []
    first_seen: dict[str, str] = {}
    for where, row in items:
        rule = _parse_rule(row, where)
        if rule.id in first_seen:
            raise DataError(f"{where}: duplicate rule id {rule.id!r} (first at {first_seen[rule.id]})")
        first_seen[rule.id] = where
        rules.append(rule)
    if not rules:
        raise DataError(f"{path}: the rule pool is empty")
    return rules


def write_pool(path: str, rules: list[Rule]) -> int:
    """Write ``rules`` as a JSONL pool file (atomically). Returns the rule count."""
    with atomic_open(path) as f:
        for r in rules:
            f.write(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n")
    return len(rules)


def _yaml_items(path: str) -> list:
    import yaml

    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: invalid YAML ({first})") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a YAML list of rules, got {type(data).__name__}")
    return data


def _parse_rule(row, where: str) -> Rule:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a rule must be a mapping with keys {', '.join(_KEYS)}")
    unknown = sorted(str(k) for k in row if k not in _KEYS)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(_KEYS)})")
    for key in ("id", "text"):
        if key not in row:
            raise DataError(f"{where}: missing field {key!r}")
    for key in _KEYS:
        value = row.get(key)
        if key == "category" and value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not row["id"].strip():
        raise DataError(f"{where}: empty rule id")
    if not row["text"].strip():
        raise DataError(f"{where}: rule {row['id']!r} has an empty text")
    category = row.get("category")
    return Rule(row["id"], row["text"].strip(), category if category else None)
