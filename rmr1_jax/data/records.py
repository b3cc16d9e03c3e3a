"""Turn record files into tokenized ``array_record`` datasets (a TFDS builder, no TensorFlow).

Rows are read and validated (``file:line`` errors or counted skips), rendered into judge
conversations, tokenized with the run's tokenizer and chat template, checked against the
maximum length, and written once through TFDS. Reading back is ``tfds`` random access
(``ArrayRecordDataSource``), which the grain pipeline shuffles and shards per host.

Each build lives in its own directory keyed by a fingerprint of the inputs (files, sizes,
modification times, tokenizer, template, lengths, options): change any of them and the
records are rebuilt; otherwise they are reused. The read/skip counts are stored beside the
records so a reused build still reports them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Iterator, Literal

import numpy as np

from rmr1_jax.data.readers import ReadStats, atomic_write_text, iter_rows
from rmr1_jax.data.schemas import JudgeExample, parse_judge_record, parse_pair
from rmr1_jax.errors import DataError

# "sft": a judge conversation and its reply to learn (loss mask); "prompt": the judge prompt
# alone (generation); "pair": the two conversations of a preference pair, each rendered whole
# (a reward model scores them); "rules": a pair in labeled sections and its selected-rule set
# (the rule adapter); "policy": a policy's prompt (generation) with its reference and answer
Kind = Literal["sft", "prompt", "pair", "rules", "policy"]

_TFDS_BUILDERS: dict = {}


def _builder_cls(kind: str = "sft"):
    """The TFDS builder class of ``kind``'s records (judge records for "sft" and "prompt",
    pair records for "pair"), defined lazily so importing this module stays cheap."""
    family = kind if kind in ("pair", "rules", "policy") else "judge"
    if family in _TFDS_BUILDERS:
        return _TFDS_BUILDERS[family]
    import tensorflow_datasets as tfds

    ids = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)  # noqa: E731
    if family == "pair":
        features = {"id": tfds.features.Text(), "chosen_ids": ids(), "rejected_ids": ids()}
    elif family == "rules":
        features = {"id": tfds.features.Text(), "input_ids": ids(),
                    "labels": tfds.features.Tensor(shape=(None,), dtype=np.uint8)}
    elif family == "policy":  # the prompt's messages as JSON (a judge renders them); "" = none
        features = {"id": tfds.features.Text(), "input_ids": ids(), "prompt": tfds.features.Text(),
                    "reference": tfds.features.Text(), "answer": tfds.features.Text()}
    else:
        features = {
            "id": tfds.features.Text(),
            "input_ids": ids(),
            # prompt records built with both_orders: the same pair with A and B swapped (its
            # right verdict is the other letter); empty otherwise
            "input_ids_swapped": ids(),
            "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
            "winner": tfds.features.Text(),
            "prompt_len": tfds.features.Scalar(dtype=np.int32),
        }

    class _Records(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, *, split_examples: dict[str, Callable[[], Iterator]] | None = None, **kwargs):
            self._split_examples = split_examples or {}
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {name: fn() for name, fn in self._split_examples.items()}

        def _generate_examples(self):  # pragma: no cover - splits come from _split_generators
            raise NotImplementedError

        # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
        # to stdout around every build; nothing is downloaded here, and build_records reports
        # each split's counts itself
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

    # the dataset name (and so the directory under data_dir) comes from the class name
    name = {"pair": "Rmr1PairRecords", "rules": "Rmr1RuleRecords", "policy": "Rmr1PolicyRecords"}.get(
        family, "Rmr1Records")
    cls = type(name, (_Records,),
               {"__doc__": f"Tokenized {family} records of one build (see the module docstring)."})
    _TFDS_BUILDERS[family] = cls
    return cls


@dataclasses.dataclass
class RecordOptions:
    kind: Kind = "sft"
    max_length: int = 2048
    on_error: Literal["raise", "skip"] = "raise"  # malformed rows
    overlong: Literal["error", "skip", "truncate"] = "error"  # rows longer than max_length
    position_seed: int = 0  # A/B placement for generic pairs
    num_labels: int = 0  # "rules" records: the rule pool's size
    both_orders: bool = False  # prompt records: also tokenize the A/B-swapped prompt (generic pairs only)
    length_key: str = "data.max_length"  # the config key max_length comes from (named in errors)


@dataclasses.dataclass
class BuildStats:
    read: ReadStats = dataclasses.field(default_factory=ReadStats)
    written: int = 0
    truncated: int = 0
    overlong_skipped: int = 0
    max_tokens: int = 0
    # file -> (row shape, fields its rows have that the shape does not read), see ignored_fields
    ignored: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"read": self.read.read, "skipped": dict(self.read.skipped), "written": self.written,
                "truncated": self.truncated, "overlong_skipped": self.overlong_skipped,
                "max_tokens": self.max_tokens,
                "ignored": {path: [shape, sorted(fields)] for path, (shape, fields) in self.ignored.items()}}

    @staticmethod
    def summary_of(d: dict) -> str:
        skipped = sum(d["skipped"].values())
        reasons = ", ".join(f"{n} x {r}" for r, n in d["skipped"].items())
        parts = [f"{d['written']} written of {d['read'] + skipped} rows"]
        if skipped:
            parts.append(f"{skipped} malformed skipped ({reasons})")
        if d["overlong_skipped"]:
            parts.append(f"{d['overlong_skipped']} over max length skipped")
        if d["truncated"]:
            parts.append(f"{d['truncated']} truncated to max length")
        return "; ".join(parts)


def _is_generic_pair(row: dict) -> bool:
    return "prompt" in row or "chosen" in row or "rejected" in row


# The fields each row shape reads (rmr1_jax.data.schemas); anything else in a row is ignored,
# and the build says so once per file: a misspelled field would otherwise vanish without a word.
_IDS = ("id", "example_id")
ROW_FIELDS = {
    "pair": ("prompt", "chosen", "rejected", "task_type", *_IDS),
    "judge": ("context_messages", "winner", "label", "verdict", *_IDS),
    "trace": ("messages", "winner", "label", "task_type", *_IDS),
    "rules": ("prompt", "a", "b", "response_a", "response_b", "rule_indices", "labels", *_IDS),
    "policy": ("prompt", "reference", "answer", *_IDS),
}
# what a judge also reads of a pair ("sft" / "prompt" records): the principles to judge it by,
# rendered into its prompt (schemas.pair_to_example); a reward model's pair records ignore them
JUDGE_PAIR_FIELDS = ("principles",)
# what `rmr1 rules select` / `label` add to a pair (rules.select.labeled_rows): label files feed
# train-rm and rule-adapter as they are, so their bookkeeping is known, not a stray field
_LABEL_ROW_FIELDS = ("strategy", "k", "rule_indices", "rule_ids", "labels", "score_a", "score_b", "rule_winner",
                     "tie", "winner", "a", "b", "response_a", "response_b", "chosen", "rejected")


def ignored_fields(row: dict, kind: Kind) -> tuple[str, list[str]]:
    """``(shape, fields)``: the shape ``row`` is read as for ``kind`` records, and the fields of
    ``row`` that shape does not read (sorted)."""
    if kind in ("pair", "rules", "policy"):
        shape = kind
    else:
        shape = "pair" if _is_generic_pair(row) else "judge" if "context_messages" in row else "trace"
    known = set(ROW_FIELDS[shape]) | (set(_LABEL_ROW_FIELDS) if shape in ("pair", "rules") else set())
    if shape == "pair" and kind in ("sft", "prompt"):  # a judge renders them into its prompt; a reward model does not
        known |= set(JUDGE_PAIR_FIELDS)
    return shape, sorted(k for k in row if k not in known)


def to_judge_example(row: dict, fallback_id: str, index: int, position_seed: int, template,
                     swap: bool = False) -> JudgeExample:
    """Any accepted record shape -> JudgeExample (generic pairs get their A/B placement here;
    ``swap`` places them the other way round)."""
    if _is_generic_pair(row):
        from rmr1_jax.data.schemas import pair_to_example

        return pair_to_example(parse_pair(row, fallback_id), index, position_seed, template, swap=swap)
    return parse_judge_record(row, fallback_id)


def _swapped_prompt(row: dict, fallback_id: str, index: int, opts: RecordOptions, tokenizer, template):
    """Token ids of the A/B-swapped judge prompt of a generic pair (``both_orders``)."""
    if not (opts.both_orders and opts.kind == "prompt"):
        return np.zeros(0, np.int32)
    if not _is_generic_pair(row):
        raise DataError("both A/B orders need a prompt/chosen/rejected pair; this record is an already "
                        "rendered judge prompt")
    swapped = to_judge_example(row, fallback_id, index, opts.position_seed, template, swap=True)
    return tokenize_example(swapped, tokenizer, "prompt")[0]


def tokenize_example(ex: JudgeExample, tokenizer, kind: Kind) -> tuple[np.ndarray, np.ndarray, int]:
    """(input_ids, loss_mask, prompt_len). SFT: full conversation, mask on the judge's reply.
    Prompt (for generation): the conversation up to the assistant turn."""
    if kind == "sft":
        if ex.target is None:
            raise DataError("record has no target reply to learn (expected a trace)")
        from rmr1_jax.text.chat_template import assistant_spans

        ids, mask = assistant_spans(tokenizer, ex.messages + [{"role": "assistant", "content": ex.target}])
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.uint8)
        prompt_len = int(np.argmax(mask)) if mask.any() else len(ids)
        return ids, mask, prompt_len
    if ex.winner is None:
        raise DataError("record has no winner label")
    text = tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True)
    ids = np.asarray(tokenizer.encode(text), np.int32)
    return ids, np.zeros(0, np.uint8), len(ids)


def fingerprint(files: dict[str, list[str]], tokenizer, template, opts: RecordOptions) -> str:
    h = hashlib.sha256()
    for split in sorted(files):
        for path in files[split]:
            st = os.stat(path)
            h.update(f"{split}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(json.dumps(dataclasses.asdict(template) if template is not None else None, sort_keys=True).encode())
    h.update(json.dumps(dataclasses.asdict(opts), sort_keys=True).encode())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    probe = "Fingerprint <|im_start|>user\n12 + 7 = ? Ünïcödé ✓<|im_end|>"
    ids = tokenizer.encode(probe)
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, tokenizer.vocab_size, ids,
                                      tokenizer.chat_template]).encode()).hexdigest()[:16]


@dataclasses.dataclass
class _Record:
    id: str
    fields: dict
    length: int  # tokens, checked against max_length
    truncate: Callable[[int], "_Record"] | None = None  # None: cannot be cut to a length


def _judge_record(row: dict, fid: str, index: int, tokenizer, template, opts: RecordOptions) -> _Record:
    ex = to_judge_example(row, fid, index, opts.position_seed, template)
    ids, mask, prompt_len = tokenize_example(ex, tokenizer, opts.kind)
    swapped = _swapped_prompt(row, fid, index, opts, tokenizer, template)

    def make(ids, mask):
        fields = {"id": ex.id, "input_ids": ids, "loss_mask": mask, "input_ids_swapped": swapped,
                  "winner": ex.winner or "", "prompt_len": np.int32(prompt_len)}
        return _Record(ex.id, fields, max(len(ids), len(swapped)))

    rec = make(ids, mask)
    if opts.kind == "sft" and prompt_len < opts.max_length:  # the reply can be cut, never the prompt
        rec.truncate = lambda n: make(ids[:n], mask[:n])
    return rec


def pair_token_ids(tokenizer, prompt: list[dict], reply: list[dict]) -> np.ndarray:
    """The token ids a reward model scores: the whole conversation (prompt, then the reply)
    through the chat template, without a generation prompt."""
    return np.asarray(tokenizer.encode(tokenizer.apply_chat_template(prompt + reply)), np.int32)


def _pair_record(row: dict, fid: str, index: int, tokenizer, template, opts: RecordOptions) -> _Record:
    del index, template
    pair = parse_pair(row, fid)
    chosen, rejected = (pair_token_ids(tokenizer, pair.prompt, r) for r in (pair.chosen, pair.rejected))

    def make(c, r):
        return _Record(pair.id, {"id": pair.id, "chosen_ids": c, "rejected_ids": r}, max(len(c), len(r)))

    rec = make(chosen, rejected)
    # the score is read at the last token: truncation keeps the end of each conversation
    rec.truncate = lambda n: make(chosen[-n:], rejected[-n:])
    return rec


def rules_record(row: dict, fid: str, index: int, tokenizer, template, opts: RecordOptions) -> _Record:
    """A rule-adapter example: the pair in labeled sections (:func:`rule_adapter_text`) and
    the R-hot set of its selected rules (``rule_indices`` or ``labels``)."""
    del index, template
    from rmr1_jax.data.schemas import parse_rule_example

    ex = parse_rule_example(row, fid, opts.num_labels)
    ids = np.asarray(tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "user", "content": ex.text}], add_generation_prompt=False)), np.int32)

    def make(ids):
        return _Record(ex.id, {"id": ex.id, "input_ids": ids, "labels": ex.labels}, len(ids))

    rec = make(ids)
    rec.truncate = lambda n: make(ids[-n:])  # the head reads the last token
    return rec


def policy_record(row: dict, fid: str, index: int, tokenizer, template, opts: RecordOptions) -> _Record:
    """A policy's prompt (:func:`~rmr1_jax.data.schemas.parse_policy_prompt`): its
    conversation through the chat template up to the assistant turn, the messages as JSON,
    the reference and the answer ("" where the row has none). A prompt is never cut."""
    del index, template, opts
    from rmr1_jax.data.schemas import parse_policy_prompt

    p = parse_policy_prompt(row, fid)
    ids = np.asarray(tokenizer.encode(tokenizer.apply_chat_template(p.prompt, add_generation_prompt=True)), np.int32)
    return _Record(p.id, {"id": p.id, "input_ids": ids, "prompt": json.dumps(p.prompt),
                          "reference": p.reference or "", "answer": p.answer or ""}, len(ids))


def _examples(paths: list[str], tokenizer, template, opts: RecordOptions, stats: BuildStats):
    convert = {"pair": _pair_record, "rules": rules_record, "policy": policy_record}.get(opts.kind, _judge_record)
    index = 0
    for path in paths:
        for lineno, row in iter_rows(path):
            where = f"{path}:{lineno}"
            try:
                if isinstance(row, Exception):
                    raise row
                rec = convert(row, f"{os.path.basename(path)}:{lineno}", index, tokenizer, template, opts)
            except DataError as e:
                if opts.on_error == "raise":
                    raise DataError(f"{where}: {e}") from None
                stats.read.skipped[str(e).split(" (")[0][:80]] += 1
                continue
            index += 1
            stats.read.read += 1
            shape, unread = ignored_fields(row, opts.kind)
            if unread:
                stats.ignored.setdefault(path, (shape, set()))[1].update(unread)
            if rec.length > opts.max_length:
                if opts.overlong == "error":
                    raise DataError(f"{where}: record is {rec.length} tokens, longer than "
                                    f"{opts.length_key}={opts.max_length} (set data.overlong=skip or truncate)")
                if opts.overlong == "skip" or rec.truncate is None:
                    stats.overlong_skipped += 1
                    continue
                rec = rec.truncate(opts.max_length)
                stats.truncated += 1
            stats.max_tokens = max(stats.max_tokens, rec.length)
            stats.written += 1
            yield f"{rec.id}#{index}", rec.fields


def build_records(cache_dir: str, files: dict[str, list[str]], tokenizer, template=None,
                  opts: RecordOptions | None = None, log: Callable[[str], None] = print):
    """Build (or reuse) tokenized records for ``files`` ({split: [paths]}).

    Returns ``(sources, stats)``: ``{split: random-access source}`` and ``{split: stats dict}``.
    On multi-host runs process 0 builds while the others wait, then all read; when the build
    fails, every process raises (:mod:`rmr1_jax.parallel.agreement`).
    """
    from rmr1_jax.parallel.agreement import agreed, on_process_zero

    opts = opts or RecordOptions()

    def check_files():
        for split, paths in files.items():
            for p in paths:
                if not os.path.isfile(p):
                    raise DataError(f"{p}: data file not found (split {split!r})")

    agreed(check_files)  # every process reads the records: a file one host cannot see stops them all
    key = fingerprint(files, tokenizer, template, opts)
    data_dir = os.path.join(cache_dir, f"records-{opts.kind}-{key}")
    stats_path = os.path.join(data_dir, "build_stats.json")
    cls = _builder_cls(opts.kind)
    def build():
        if os.path.isfile(stats_path):
            return
        stats = {split: BuildStats() for split in files}

        def split_fn(split):
            def gen():
                yield from _examples(files[split], tokenizer, template, opts, stats[split])
                if stats[split].written == 0:  # raised here: TFDS would fail on an empty split first
                    raise DataError(f"{', '.join(files[split])}: no usable records in split {split!r} "
                                    f"({BuildStats.summary_of(stats[split].to_json())})")

            return gen

        builder = cls(data_dir=data_dir, file_format="array_record",
                      split_examples={s: split_fn(s) for s in files})
        _quiet_tfds()
        builder.download_and_prepare()
        atomic_write_text(stats_path, json.dumps({s: st.to_json() for s, st in stats.items()}))

    # process 0 builds; a bad row (or any failure) there stops every process, none left waiting
    on_process_zero(build, share=False)
    with open(stats_path) as f:
        stats_json = json.load(f)
    builder = cls(data_dir=data_dir, file_format="array_record")
    sources = builder.as_data_source()
    for split in files:
        log(f"data[{split}]: {BuildStats.summary_of(stats_json[split])}")
        for path, (shape, fields) in stats_json[split].get("ignored", {}).items():
            log(f"data[{split}]: {path}: ignored field{'s' * (len(fields) > 1)} {', '.join(fields)} "
                f"(a {shape} row reads {', '.join(ROW_FIELDS[shape])})")
    return {s: sources[s] for s in files}, stats_json


def _quiet_tfds():
    import logging

    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.WARNING)
