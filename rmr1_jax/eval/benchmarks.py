"""Benchmark files -> pairs to judge.

Three benchmarks are read from local files exported from their repositories (JSON array,
JSON Lines or Parquet; RMB also as its released directory tree) and expanded into a uniform
list of :class:`ComparisonTask` - one prompt and two responses, with which one is better:

* **RewardBench** (``rewardbench``): rows ``{prompt, chosen, rejected, subset, id}`` - the
  ``filtered`` split, 2,985 rows in 23 subsets (see :data:`REWARDBENCH_SUBSETS`). One task
  per row (``pair_index`` 0).
* **RM-Bench** (``rm-bench``): rows ``{id, prompt, chosen: [3], rejected: [3], domain}``;
  the three entries are the styles concise, detailed plain text, detailed markdown (in that
  order). Each item expands into its 9 cells: ``pair_index = 3 * i + j`` compares chosen
  style ``i`` with rejected style ``j``. Domains: ``chat``, ``math``, ``code``,
  ``safety-refuse``, ``safety-response`` (spellings such as ``Safety_Refuse`` are accepted
  and normalized).
* **RMB** (``rmb``): pairwise items and best-of-N items, in either layout:

  - the released layout (``RMB_dataset/{Pairwise_set,BoN_set}/{Helpfulness,Harmlessness}/
    .../*.json``, a JSON array per scenario file): pairwise rows ``{pair_uid,
    conversation_input: [{role, content, ...}], chosen: {answer, ...}, reject: {answer, ...},
    category_path: "Pairwise_set/Helpfulness/Chat/Discussion"}``; BoN rows ``{bon_uid,
    conversation_input, bon_best: {answer}, loser_list: [{answer}, ...], category_path}``.
    Pass the directory (all ``*.json`` under it are read, sorted) or one file.
  - a simple layout with explicit fields (JSONL/JSON/Parquet), one item per row::

        {"id": "p1", "set": "pairwise", "category": "helpfulness", "scenario": "Chat/Discussion",
         "prompt": "..." | [{"role", "content"}, ...], "chosen": "...", "rejected": "..."}
        {"id": "b1", "set": "bon", "category": "harmlessness", "scenario": "S1",
         "prompt": ..., "bon_best": "...", "loser_list": ["...", "..."]}

    ``set`` may be left out (``bon_best`` implies ``bon``); ``category`` is
    ``helpfulness`` or ``harmlessness``; ``scenario`` is optional.

  A pairwise item gives one task; a BoN item gives one task per loser (best vs loser ``k``,
  ``pair_index = k``). ``subset`` is the scored group: ``pairwise-helpfulness``,
  ``pairwise-harmlessness``, ``bon-helpfulness`` or ``bon-harmlessness``; item ids are
  prefixed ``pairwise/`` or ``bon/`` so the two sets never collide.

Every task puts the better response first (``first_is_better=True``); which one the judge
sees as A is decided when judging (:mod:`rmr1_jax.eval.runs`). A malformed row raises
:class:`~rmr1_jax.errors.DataError` naming the file, the line (JSONL), row (Parquet) or
array item (JSON), and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator

from rmr1_jax.data.readers import iter_rows
from rmr1_jax.errors import DataError

Message = dict

# ----------------------------------------------------------------------------- constants

#: RewardBench sections and their subsets (the 23 subsets of the filtered split).
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
REWARDBENCH_SUBSETS: tuple[str, ...] = tuple(s for subs in REWARDBENCH_SECTIONS.values() for s in subs)
#: Row counts of the filtered split (2,985 in all).
REWARDBENCH_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154,
    "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 447, "hep-cpp": 164, "hep-go": 164,
    "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}

RM_BENCH_STYLES = ("concise", "detailed plain", "detailed markdown")
RM_BENCH_DOMAINS = ("chat", "math", "code", "safety-refuse", "safety-response")
#: Item counts per scored domain in the released set (safety = refuse + response).
RM_BENCH_COUNTS = {"chat": 129, "safety": 441, "math": 529, "code": 228}

RMB_CATEGORIES = ("helpfulness", "harmlessness")
RMB_GROUPS = ("pairwise-helpfulness", "pairwise-harmlessness", "bon-helpfulness", "bon-harmlessness")


# ----------------------------------------------------------------------------- the task


@dataclasses.dataclass(frozen=True)
class ComparisonTask:
    """One pair to judge. ``subset`` is the RewardBench subset, the RM-Bench domain (as
    normalized from the file) or the RMB group; ``(item_id, pair_index)`` is unique within a
    benchmark and keys the per-example results file."""

    benchmark: str
    item_id: str
    subset: str
    pair_index: int
    prompt: list[Message]
    response_1: str
    response_2: str
    first_is_better: bool = True
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.item_id, self.pair_index)

    @property
    def better(self) -> str:
        return self.response_1 if self.first_is_better else self.response_2

    @property
    def worse(self) -> str:
        return self.response_2 if self.first_is_better else self.response_1


# ----------------------------------------------------------------------------- reading rows


def _iter_json_file(path: str) -> Iterator[tuple[str, dict | Exception]]:
    """(location, row) for each object in a JSON file holding an array of objects, an object
    with one list-valued field, or (despite the extension) JSON Lines."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved as .json
            for lineno, row in iter_rows(path):
                yield f"line {lineno}", row
            return
        raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of records (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records")
    for i, row in enumerate(data):
        loc = f"item {i} of the array"
        yield loc, row if isinstance(row, dict) else DataError("record is not a JSON object")


def iter_file_rows(path: str) -> Iterator[tuple[str, dict]]:
    """``(location, row)`` for each record of a ``.json`` (an array), ``.jsonl`` or ``.parquet``
    file, JSON Lines and Parquet read by :func:`rmr1_jax.data.readers.iter_rows`; ``location``
    is ``"file:line N"`` style text for error messages. Undecodable rows raise."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory (expected a .json, .jsonl or .parquet file)")
    if path.endswith(".json"):
        it = ((f"{path}: {loc}", row) for loc, row in _iter_json_file(path))
    else:
        kind = "row" if path.endswith(".parquet") else "line"
        it = ((f"{path}:{n}" if kind == "line" else f"{path}: row {n}", row) for n, row in iter_rows(path))
    for loc, row in it:
        if isinstance(row, Exception):
            raise DataError(f"{loc}: {row}")
        yield loc, row


def _read(path: str, parse: Callable[[dict, str], list[ComparisonTask]]) -> list[ComparisonTask]:
    tasks: list[ComparisonTask] = []
    first_seen: dict[str, str] = {}
    for loc, row in iter_file_rows(path):
        try:
            new = parse(row, loc)
        except DataError as e:
            raise DataError(f"{loc}: {e}") from None
        if new:
            iid = new[0].item_id
            if iid in first_seen:
                raise DataError(f"{loc}: duplicate id {iid!r} (first seen at {first_seen[iid]})")
            first_seen[iid] = loc
        tasks.extend(new)
    if not tasks:
        raise DataError(f"{path}: no records found")
    return tasks


# ----------------------------------------------------------------------------- field helpers


def _require(row: dict, key: str) -> Any:
    if key not in row or row[key] is None:
        raise DataError(f"missing field {key!r}")
    return row[key]


def _text(value: Any, field: str) -> str:
    """A response given as a string, an RMB ``{"answer": ...}`` object, or a message list
    (the last assistant message is the response)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for k in ("answer", "content", "response", "text"):
            if isinstance(value.get(k), str):
                return value[k]
        raise DataError(f"field {field!r} is an object without an 'answer' text")
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for m in reversed(value):
            if m.get("role") == "assistant" and isinstance(m.get("content"), str):
                return m["content"]
        raise DataError(f"field {field!r} is a message list without an assistant message")
    raise DataError(f"field {field!r} must be a string, got {type(value).__name__}")


def _prompt(value: Any, field: str = "prompt") -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"field {field!r} is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"field {field!r} must be a non-empty string or a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise DataError(f"field {field!r}[{i}] must be an object with 'role' and text 'content'")
        role = str(m["role"]).lower()
        if role not in ("system", "user", "assistant"):
            raise DataError(f"field {field!r}[{i}] has unknown role {m['role']!r}")
        out.append({"role": role, "content": m["content"]})
    if out[-1]["role"] != "user":
        raise DataError(f"field {field!r} must end with a user message")
    return out


def _id(row: dict, keys: tuple[str, ...], fallback: str) -> str:
    for k in keys:
        if row.get(k) is not None and str(row[k]).strip():
            return str(row[k])
    return fallback


# ----------------------------------------------------------------------------- RewardBench


def _parse_rewardbench(row: dict, loc: str) -> list[ComparisonTask]:
    subset = _require(row, "subset")
    if subset not in REWARDBENCH_COUNTS:
        raise DataError(f"unknown RewardBench subset {subset!r} (expected one of the 23 subsets of the "
                        f"filtered split: {', '.join(REWARDBENCH_SUBSETS)})")
    prompt = _prompt(_require(row, "prompt"))
    chosen = _text(_require(row, "chosen"), "chosen")
    rejected = _text(_require(row, "rejected"), "rejected")
    item_id = _id(row, ("id",), loc)
    return [ComparisonTask("rewardbench", item_id, subset, 0, prompt, chosen, rejected, True)]


def load_rewardbench(path: str) -> list[ComparisonTask]:
    """RewardBench rows (filtered split) from a JSON, JSONL or Parquet file."""
    return _read(path, _parse_rewardbench)


# ----------------------------------------------------------------------------- RM-Bench


def normalize_rm_bench_domain(value: Any) -> str:
    d = str(value).strip().lower().replace("_", "-").replace(" ", "-")
    if d in RM_BENCH_DOMAINS:
        return d
    if d == "safety":  # refuse/response not distinguished; scored together anyway
        return "safety"
    raise DataError(f"unknown RM-Bench domain {value!r} (expected one of {', '.join(RM_BENCH_DOMAINS)})")


def rm_bench_scored_domain(domain: str) -> str:
    """``safety-refuse``/``safety-response`` -> ``safety``; other domains unchanged."""
    return "safety" if domain.startswith("safety") else domain


def _style_list(row: dict, key: str) -> list[str]:
    value = _require(row, key)
    if not isinstance(value, (list, tuple)):
        raise DataError(f"field {key!r} must be a list of 3 responses "
                        f"({', '.join(RM_BENCH_STYLES)}), got {type(value).__name__}")
    if len(value) != 3:
        raise DataError(f"field {key!r} must hold 3 responses ({', '.join(RM_BENCH_STYLES)}), "
                        f"got {len(value)}")
    return [_text(v, f"{key}[{i}]") for i, v in enumerate(value)]


def _parse_rm_bench(row: dict, loc: str) -> list[ComparisonTask]:
    domain = normalize_rm_bench_domain(_require(row, "domain"))
    prompt = _prompt(_require(row, "prompt"))
    chosen = _style_list(row, "chosen")
    rejected = _style_list(row, "rejected")
    item_id = _id(row, ("id",), loc)
    return [ComparisonTask("rm-bench", item_id, domain, 3 * i + j, prompt, chosen[i], rejected[j], True,
                           {"chosen_style": i, "rejected_style": j})
            for i in range(3) for j in range(3)]


def load_rm_bench(path: str) -> list[ComparisonTask]:
    """RM-Bench items (e.g. ``total_dataset.json``), 9 tasks per item."""
    return _read(path, _parse_rm_bench)


# ----------------------------------------------------------------------------- RMB


def _rmb_category_from_path(category_path: str) -> tuple[str | None, str | None, str]:
    """``"BoN_set/Helpfulness/Chat/Discussion"`` -> ("bon", "helpfulness", "Chat/Discussion")."""
    parts = [p for p in str(category_path).replace("\\", "/").split("/") if p]
    set_name = category = None
    rest: list[str] = []
    for i, p in enumerate(parts):
        low = p.lower()
        if low in ("pairwise_set", "pairwise"):
            set_name = "pairwise"
        elif low in ("bon_set", "bon"):
            set_name = "bon"
        elif low in RMB_CATEGORIES:
            category = low
            rest = parts[i + 1:]
            break
    scenario = "/".join(rest)
    if scenario.endswith(".json"):
        scenario = scenario[:-5]
    return set_name, category, scenario


def _parse_rmb(row: dict, loc: str, path_hint: str = "") -> list[ComparisonTask]:
    hint_set, hint_cat, hint_scen = _rmb_category_from_path(path_hint) if path_hint else (None, None, "")
    cp_set, cp_cat, cp_scen = (_rmb_category_from_path(row["category_path"]) if row.get("category_path")
                               else (None, None, ""))
    set_name = row.get("set") or cp_set or ("bon" if "bon_best" in row else None) or hint_set
    if set_name is None:
        set_name = "pairwise" if "chosen" in row else None
    if set_name is None:
        raise DataError("cannot tell a pairwise item from a best-of-N one (no 'set', 'category_path', "
                        "'chosen' or 'bon_best' field)")
    set_name = str(set_name).strip().lower().replace("_set", "")
    if set_name not in ("pairwise", "bon"):
        raise DataError(f"field 'set' must be 'pairwise' or 'bon', got {row.get('set')!r}")
    category = row.get("category") or cp_cat or hint_cat
    if category is None:
        raise DataError("missing field 'category' (helpfulness or harmlessness) and no category_path")
    category = str(category).strip().lower()
    if category not in RMB_CATEGORIES:
        raise DataError(f"unknown RMB category {row.get('category')!r} (expected helpfulness or harmlessness)")
    scenario = str(row.get("scenario") or cp_scen or hint_scen or "")
    if "conversation_input" in row:
        prompt = _prompt(row["conversation_input"], "conversation_input")
    else:
        prompt = _prompt(_require(row, "prompt"))
    group = f"{set_name}-{category}"
    meta = {"set": set_name, "category": category, "scenario": scenario}
    if set_name == "pairwise":
        item_id = "pairwise/" + _id(row, ("pair_uid", "id"), loc)
        chosen = _text(_require(row, "chosen"), "chosen")
        rej_key = "rejected" if "rejected" in row else "reject"
        rejected = _text(_require(row, rej_key), rej_key)
        return [ComparisonTask("rmb", item_id, group, 0, prompt, chosen, rejected, True, meta)]
    item_id = "bon/" + _id(row, ("bon_uid", "id"), loc)
    best = _text(_require(row, "bon_best"), "bon_best")
    losers = _require(row, "loser_list")
    if not isinstance(losers, (list, tuple)) or not losers:
        raise DataError("field 'loser_list' must be a non-empty list of responses")
    losers = [_text(x, f"loser_list[{k}]") for k, x in enumerate(losers)]
    meta["n_losers"] = len(losers)
    return [ComparisonTask("rmb", item_id, group, k, prompt, best, loser, True, meta)
            for k, loser in enumerate(losers)]


def load_rmb(path: str) -> list[ComparisonTask]:
    """RMB items from a file or from the released directory tree (all ``*.json`` under it)."""
    if not os.path.isdir(path):
        return _read(path, _parse_rmb)
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                   if f.endswith((".json", ".jsonl", ".parquet")))
    if not files:
        raise DataError(f"{path}: no .json, .jsonl or .parquet files under this directory")
    tasks: list[ComparisonTask] = []
    seen: set[str] = set()
    for f in files:
        rel = os.path.relpath(f, path)
        hint = os.path.join(os.path.basename(os.path.abspath(path)), rel)
        part = _read(f, lambda row, loc, hint=hint: _parse_rmb(row, loc, hint))
        ids = {t.item_id for t in part}
        dup = ids & seen
        if dup:
            raise DataError(f"{f}: id {sorted(dup)[0]!r} also appears in an earlier file under {path}")
        seen |= ids
        tasks.extend(part)
    return tasks
