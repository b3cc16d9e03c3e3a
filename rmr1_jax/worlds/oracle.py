"""The oracle behind the synthetic tasks: it reads a question, checks each reply by
recomputing the answer or the instruction (never by reading a stored label), gives the
verdict, and writes the Chain-of-Rubrics trace a perfect teacher would give. Also the small
text helpers the task generators in :mod:`rmr1_jax.worlds.judging_tasks` share with it."""

from __future__ import annotations

import hashlib
import re
from typing import Callable

from rmr1_jax.data.schemas import PreferencePair
from rmr1_jax.text.verdict import normalize_winner

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten", "eleven", "twelve", "thirteen"]
_WORD_NUMBERS = {w: i for i, w in enumerate(_NUMBER_WORDS)}

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def num_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _first_int(text: str) -> int | None:
    m = re.search(r"\d+", text)
    return int(m.group(0)) if m else None


def _last_int(text: str) -> int | None:
    found = re.findall(r"\d+", text)
    return int(found[-1]) if found else None


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text)


def _response_text(response) -> str:
    if isinstance(response, str):
        return response
    for m in reversed(list(response)):
        if m.get("role") == "assistant":
            return m["content"]
    raise ValueError("response has no assistant message")


def _question(pair: PreferencePair) -> str:
    return pair.prompt[-1]["content"]


# ---------------------------------------------------------------------------------------------
# The oracle: read the question, check each reply
# ---------------------------------------------------------------------------------------------


class _Check:
    """What the oracle knows about a question: how to check a reply and how to explain it."""

    def __init__(self, kind: str, task_type: str, check: Callable[[str], tuple[bool, str]],
                 solution: str = "", rule: str = ""):
        self.kind, self.task_type, self.check = kind, task_type, check
        self.solution, self.rule = solution, rule


def _arith_work(a: int, op: str, b: int) -> tuple[int, str]:
    if op == "+":
        r = a + b
        if a < 10 and b < 10 or a % 10 == 0 or b % 10 == 0:
            return r, f"{a} + {b} = {r}."
        ah, bh = a - a % 10, b - b % 10
        return r, f"{a} + {b}: {ah} + {bh} = {ah + bh}, {a % 10} + {b % 10} = {a % 10 + b % 10}, so {r}."
    if op == "-":
        r = a - b
        bh, bl = b - b % 10, b % 10
        if bh == 0 or bl == 0:
            return r, f"{a} - {b} = {r}."
        return r, f"{a} - {b}: {a} - {bh} = {a - bh}, {a - bh} - {bl} = {r}."
    r = a * b
    if b >= 10:
        big, small = b, a
        hi, lo = big - big % 10, big % 10
        if lo:
            return r, f"{a} * {b}: {small} * {hi} = {small * hi}, {small} * {lo} = {small * lo}, so {r}."
    elif a >= 10 and a % 10:
        hi, lo = a - a % 10, a % 10
        return r, f"{a} * {b}: {hi} * {b} = {hi * b}, {lo} * {b} = {lo * b}, so {r}."
    return r, f"{a} * {b} = {r}."


_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("arith", re.compile(r"^What is (\d+) ([-+*]) (\d+)\?$")),
    ("compare", re.compile(r"^Which is (larger|smaller), (\d+) or (\d+)\?$")),
    ("count", re.compile(r"^How many times does the letter '([a-z])' appear in '([a-z ]+)'\?$")),
    ("caps_word", re.compile(r"^Reply with one word in capital letters: name an? ([a-z ]+)\.$")),
    ("word_count", re.compile(r"^Answer in exactly ([a-z]+) words: .+$")),
    ("starts_with", re.compile(r"^Start your reply with '([A-Za-z]+)': .+$")),
    ("avoid_letter", re.compile(r"^Name .+ without using the letter '([a-z])'\.$")),
]


def _check_for(question: str) -> _Check:
    for kind, pat in _PATTERNS:
        m = pat.match(question)
        if m:
            return _BUILD[kind](m)
    raise ValueError(f"not a synthetic task question: {question!r}")


def _build_arith(m) -> _Check:
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    r, work = _arith_work(a, op, b)

    def check(text):
        got = _last_int(text)
        return got == r, ("no number given" if got is None else f"gives {got}")

    return _Check({"+": "add", "-": "sub", "*": "mul"}[op], "Reasoning", check, solution=work)


def _build_compare(m) -> _Check:
    which, x, y = m.group(1), int(m.group(2)), int(m.group(3))
    best = max(x, y) if which == "larger" else min(x, y)
    # Digit by digit from the left (the numbers have equal length), so each step is one
    # single-digit comparison a small model can learn.
    work = []
    for dx, dy in zip(str(x), str(y)):
        work.append(f"{dx} {'>' if dx > dy else '<' if dx < dy else '='} {dy}")
        if dx != dy:
            break

    def check(text):  # the note puts the reply's number next to the answer it is checked against
        got = _first_int(text)
        return got == best, ("names no number" if got is None else f"picks {got}, answer {best}")

    solution = f"{x} vs {y}: {', '.join(work)}, so {best} is {which}."
    return _Check("compare", "Reasoning", check, solution=solution)


def _build_count(m) -> _Check:
    letter, text = m.group(1), m.group(2)
    n = text.count(letter)
    spelled = " ".join("-".join(w) for w in text.split())

    def check(reply):
        got = _first_int(reply)
        return got == n, ("no count given" if got is None else f"counts {got}")

    return _Check("count", "Reasoning", check, solution=f"{spelled}: '{letter}' appears {n} times.")


def _build_caps_word(m) -> _Check:
    def check(text):
        ws = _words(text)
        if len(ws) != 1:
            return False, f"{num_word(len(ws))} words"
        if not ws[0].isupper():
            return False, "not in capitals"
        return True, "one word in capitals"

    return _Check("caps_word", "Chat", check, rule="one word, all capitals")


def _build_word_count(m) -> _Check:
    want = _WORD_NUMBERS.get(m.group(1))
    if want is None:
        raise ValueError(f"unknown number word {m.group(1)!r}")

    def check(text):
        got = len(_words(text))
        return got == want, f"{num_word(got)} words"

    return _Check("word_count", "Chat", check, rule=f"exactly {num_word(want)} words")


def _build_starts_with(m) -> _Check:
    word = m.group(1)

    def check(text):
        t = text.lstrip()
        first = _words(t)[:1]
        ok = t.startswith(word) and not t[len(word):len(word) + 1].isalpha()
        return ok, f"first word '{first[0] if first else t[:8]}', wanted '{word}'"

    return _Check("starts_with", "Chat", check, rule=f"start with '{word}'")


def _build_avoid_letter(m) -> _Check:
    letter = m.group(1)

    def check(text):
        bad = [w for w in _words(text) if letter in w.lower()]
        return (not bad), (f"no '{letter}'" if not bad else f"'{bad[0]}' has '{letter}'")

    return _Check("avoid_letter", "Chat", check, rule=f"no letter '{letter}'")


_BUILD = {"arith": _build_arith, "compare": _build_compare, "count": _build_count,
          "caps_word": _build_caps_word, "word_count": _build_word_count,
          "starts_with": _build_starts_with, "avoid_letter": _build_avoid_letter}


def _judge(pair: PreferencePair, response_a, response_b):
    chk = _check_for(_question(pair))
    ta, tb = _response_text(response_a), _response_text(response_b)
    (ok_a, note_a), (ok_b, note_b) = chk.check(ta), chk.check(tb)
    if ok_a == ok_b:
        raise ValueError(f"pair {pair.id}: the oracle cannot separate the replies "
                         f"(A {'passes' if ok_a else 'fails'}, B {'passes' if ok_b else 'fails'})")
    return chk, ("A" if ok_a else "B"), (ta, ok_a, note_a), (tb, ok_b, note_b)


def oracle_check(question: str, reply: str) -> bool:
    """Whether ``reply`` answers the synthetic task ``question`` correctly (obeys its
    instruction); a question that is not one of the synthetic tasks raises ``ValueError``."""
    return bool(_check_for(question).check(reply)[0])


def oracle_verdict(pair: PreferencePair, response_a, response_b) -> str:
    """``"A"`` or ``"B"``: the reply that is correct / obeys the instruction, decided from the
    question text and the replies only. Raises ``ValueError`` when both or neither pass."""
    return _judge(pair, response_a, response_b)[1]


# ---------------------------------------------------------------------------------------------
# Oracle traces (CoR format, kept short for tiny models)
# ---------------------------------------------------------------------------------------------

_QUOTE_MAX = 48
_REASONING_NOTES = [("{n}, which is correct.", "{n}, which is wrong."),
                    ("{n}; this matches.", "{n}; this does not match.")]
_CHAT_NOTES = [("{n}; follows the rule.", "{n}; breaks the rule."),
               ("{n}; rule kept.", "{n}; rule broken.")]
_JUSTIFY = ["A checkable rule comes first.",
            "An explicit rule outweighs style."]


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _QUOTE_MAX else text[: _QUOTE_MAX - 3].rstrip() + "..."


def oracle_trace(pair: PreferencePair, response_a, response_b, winner: str | None = None,
                 style: str = "full") -> str:
    """The CoR judgment a perfect teacher writes for this A/B placement (ends with the verdict).

    ``winner`` (``"A"``/``"B"``/``"model_a"``/...) must agree with :func:`oracle_verdict`;
    a disagreeing label raises ``ValueError`` rather than producing a self-contradicting trace.
    ``None`` uses the oracle's own verdict. ``style="compact"`` keeps the CoR structure (type,
    solution or rubric with justification, quotes and summaries, answer) in about half the
    length, for the demo's small model on a CPU.
    """
    chk, verdict, (ta, ok_a, note_a), (tb, ok_b, note_b) = _judge(pair, response_a, response_b)
    if winner is not None and normalize_winner(winner) != verdict:
        raise ValueError(f"pair {pair.id}: label says {normalize_winner(winner)} but the oracle finds {verdict}")
    v = int(hashlib.sha256(pair.id.encode()).hexdigest(), 16) % 2  # slight, stable phrasing variety

    def note(text_note: str, ok: bool, table) -> str:
        return cap((table[v][0] if ok else table[v][1]).format(n=text_note))

    if style == "compact":
        return _compact_trace(chk, verdict, (ta, note_a, ok_a), (tb, note_b, ok_b))
    if style != "full":
        raise ValueError(f"trace style {style!r} is not 'full' or 'compact'")
    if chk.task_type == "Reasoning":
        head = f"<type>Reasoning</type>\n<solution>{chk.solution}</solution>\n"
        sa, sb = note(note_a, ok_a, _REASONING_NOTES), note(note_b, ok_b, _REASONING_NOTES)
    else:
        head = (f"<type>Chat</type>\n<rubric>1. Rule: {chk.rule} (80%)\n2. Relevance (20%)\n"
                f"<justify>{_JUSTIFY[v]}</justify></rubric>\n")
        sa, sb = note(note_a, ok_a, _CHAT_NOTES), note(note_b, ok_b, _CHAT_NOTES)
    return (f"{head}<eval><quote_A>{_quote(ta)}</quote_A><summary_A>{sa}</summary_A>\n"
            f"<quote_B>{_quote(tb)}</quote_B><summary_B>{sb}</summary_B></eval>\n"
            f"<answer>[[{verdict}]]</answer>")


def _compact_trace(chk: _Check, verdict: str, a: tuple[str, str, bool], b: tuple[str, str, bool]) -> str:
    """Type, solution or rubric, then per reply a verbatim quote and a one-line check of it,
    and the verdict. The quotes keep every check next to a copy of what it checks. (The demo's
    ~1M-parameter judge learns the counts before it learns to copy the words exactly: its
    quotes come out the right length well before they are verbatim.)"""
    mark = {True: "right", False: "wrong"} if chk.task_type == "Reasoning" else {True: "kept", False: "broken"}
    if chk.task_type == "Reasoning":
        head = f"<type>Reasoning</type>\n<solution>{chk.solution}</solution>\n"
    else:
        head = f"<type>Chat</type>\n<rubric>Rule: {chk.rule} (80%).<justify>The rule decides.</justify></rubric>\n"
    return (f"{head}<eval><quote_A>{_quote(a[0])}</quote_A><summary_A>{cap(a[1])}, {mark[a[2]]}.</summary_A>\n"
            f"<quote_B>{_quote(b[0])}</quote_B><summary_B>{cap(b[1])}, {mark[b[2]]}.</summary_B></eval>\n"
            f"<answer>[[{verdict}]]</answer>")
