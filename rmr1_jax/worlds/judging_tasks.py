"""Seeded, verifiable judging tasks for the demo, the tests and the benchmarks.

Every generated pair has a question whose better reply can be decided by a program:

* Reasoning tasks (``task_type="Reasoning"``): small arithmetic (``add``, ``sub``, ``mul``),
  comparing two numbers (``compare``) and counting a letter (``count``). The chosen reply
  states the computed answer; the rejected one a plausible slip (off by one or ten, a
  dropped carry or borrow, the wrong factor, the other number).
* Chat tasks (``task_type="Chat"``) with a checkable instruction: one word in capitals
  (``caps_word``), an exact word count (``word_count``), a required first word
  (``starts_with``), a letter to avoid (``avoid_letter``). The chosen reply obeys it; the
  rejected one breaks it in a small way (title case, one word too many, a synonym first, one
  item containing the letter).

:func:`oracle_verdict` decides a pair from the question text and the two replies alone
(recomputing the answer or checking the instruction), never from the stored label, so the
generator's labels can be checked independently. :func:`oracle_trace` writes the short
Chain-of-Rubrics reply a perfect teacher would give, for distillation.

All text is ASCII. Output depends only on ``(seed, difficulty, index)`` and the kinds: the
same seed gives identical pairs, and a longer run extends a shorter one.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Sequence

from rmr1_jax.data.readers import write_jsonl
from rmr1_jax.data.schemas import JudgeExample, PreferencePair, assign_positions
from rmr1_jax.errors import ConfigError
from rmr1_jax.worlds.oracle import article, cap, num_word, oracle_trace, oracle_verdict

__all__ = ["generate_pairs", "oracle_trace", "oracle_verdict", "make_judge_examples",
           "make_distillation_examples", "write_pairs_jsonl", "write_traces_jsonl", "write_judge_jsonl",
           "REASONING_KINDS", "CHAT_KINDS", "DEFAULT_KINDS"]

REASONING_KINDS = ("add", "sub", "mul", "compare", "count")
CHAT_KINDS = ("caps_word", "word_count", "starts_with", "avoid_letter")
DEFAULT_KINDS = REASONING_KINDS + CHAT_KINDS


# ---------------------------------------------------------------------------------------------
# Word banks
# ---------------------------------------------------------------------------------------------

_COUNT_WORDS = [
    "carrot", "banana", "strawberry", "mississippi", "bookkeeper", "committee", "balloon",
    "letter", "parallel", "coffee", "apple", "success", "address", "cherry", "pepper", "bubble",
    "giraffe", "hippopotamus", "raspberry", "assessment", "tomorrow", "puppy", "kitten",
    "referee", "barrel", "cinnamon", "possession", "excellent", "millennium", "difficult",
    "mirror", "pizza", "butter", "necessary", "accommodate", "tennessee", "grammar", "llama",
]

_CATEGORIES = {  # singular: (plural, words)
    "color": ("colors", ["red", "blue", "green", "yellow", "purple", "orange", "black", "white",
                         "pink", "brown", "gray", "violet", "gold", "teal", "navy", "maroon"]),
    "animal": ("animals", ["cat", "dog", "horse", "tiger", "zebra", "lion", "mouse", "goat",
                           "sheep", "camel", "otter", "panda", "wolf", "fox", "bear", "duck",
                           "frog", "eagle", "koala", "bison", "mink", "sloth"]),
    "fruit": ("fruits", ["apple", "banana", "cherry", "grape", "kiwi", "lemon", "mango", "melon",
                         "peach", "pear", "plum", "fig", "lime", "date", "orange", "papaya",
                         "guava", "lychee"]),
    "planet": ("planets", ["mercury", "venus", "earth", "mars", "jupiter", "saturn", "uranus",
                           "neptune"]),
    "metal": ("metals", ["iron", "gold", "silver", "copper", "tin", "zinc", "lead", "nickel",
                         "cobalt", "titanium"]),
    "vegetable": ("vegetables", ["carrot", "potato", "onion", "leek", "kale", "corn", "pea",
                                 "bean", "radish", "turnip", "squash", "spinach", "okra"]),
    "country": ("countries", ["france", "spain", "italy", "japan", "china", "peru", "chile",
                              "brazil", "canada", "egypt", "kenya", "india", "iran", "cuba",
                              "mali", "oman"]),
}

_DESCRIBE_TOPICS = {
    "describe the ocean": ["deep", "blue", "vast", "salty", "cold", "restless", "calm", "wide",
                           "dark", "wild", "ancient", "shimmering"],
    "describe a forest": ["green", "quiet", "shady", "dense", "old", "wild", "damp", "tall",
                          "lush", "mossy", "dark", "fragrant"],
    "describe winter": ["cold", "white", "quiet", "frosty", "dark", "long", "icy", "crisp",
                        "snowy", "bleak", "still", "cozy"],
    "describe a busy city": ["loud", "bright", "crowded", "fast", "tall", "restless", "dusty",
                             "lively", "vast", "modern", "noisy", "electric"],
    "describe a desert": ["hot", "dry", "vast", "sandy", "empty", "silent", "golden", "harsh",
                          "windy", "bare", "endless", "stark"],
    "describe a good friend": ["kind", "loyal", "honest", "funny", "patient", "warm", "caring",
                               "brave", "generous", "steady", "gentle", "cheerful"],
    "describe fresh bread": ["warm", "soft", "crusty", "golden", "fragrant", "fluffy", "tasty",
                             "chewy", "light", "rustic", "hearty", "fresh"],
}

_YES_QUESTIONS = [
    ("is the sun a star?", "the sun is a star."),
    ("can penguins swim?", "penguins swim well."),
    ("does ice float on water?", "ice floats on water."),
    ("do bees make honey?", "bees make honey."),
    ("is Paris in France?", "Paris is in France."),
    ("is a tomato a fruit?", "a tomato is a fruit."),
    ("can bats fly?", "bats can fly."),
    ("is gold a metal?", "gold is a metal."),
    ("do plants need light?", "plants need light."),
    ("is water wet?", "water is wet."),
    ("is the Pacific an ocean?", "the Pacific is an ocean."),
    ("do whales breathe air?", "whales breathe air."),
    ("is a square a rectangle?", "a square is a rectangle."),
    ("can sound travel through water?", "sound travels in water."),
    ("is Tokyo in Japan?", "Tokyo is in Japan."),
    ("do cows eat grass?", "cows eat grass."),
    ("is the moon smaller than the earth?", "the moon is smaller."),
    ("can owls see at night?", "owls see at night."),
    ("is salt made of sodium and chlorine?", "salt is sodium chloride."),
    ("do trees have roots?", "trees have roots."),
    ("is a whale a mammal?", "a whale is a mammal."),
    ("does the earth orbit the sun?", "the earth orbits the sun."),
    ("is seven a prime number?", "seven is prime."),
    ("can ants lift heavy loads?", "ants lift heavy loads."),
    ("is copper a good conductor?", "copper conducts well."),
    ("do birds lay eggs?", "birds lay eggs."),
    ("is Rome in Italy?", "Rome is in Italy."),
    ("can frogs jump far?", "frogs jump far."),
    ("is snow made of ice?", "snow is made of ice."),
    ("do spiders spin webs?", "spiders spin webs."),
]
_START_WORDS = ["Yes", "Indeed", "Absolutely", "Sure", "Certainly", "Definitely", "Right", "Correct",
                "True", "Naturally", "Clearly", "Exactly", "Surely", "Agreed", "Affirmative", "Totally"]
_OTHER_STARTS = ["Of course", "Well", "Okay", "Yep", "Obviously", "Positively"]

# ---------------------------------------------------------------------------------------------
# Generators: rng, difficulty -> (question, chosen, rejected)
# ---------------------------------------------------------------------------------------------

def _digits_range(d: int) -> tuple[int, int]:
    """Numbers with ``d`` digits (1..9 for one digit)."""
    return (1 if d == 1 else 10 ** (d - 1)), 10 ** d - 1


def _digitwise(a: int, b: int, op) -> int:
    """Column-wise result that ignores carries/borrows (a classic slip)."""
    out, place = 0, 1
    while a or b:
        out += op(a % 10, b % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


_ARITH_REPLIES = ["{expr} = {r}.", "The answer is {r}.", "{r}", "It is {r}.", "{expr} equals {r}."]


def _arith_reply(rng: random.Random, expr: str) -> Callable[[int], str]:
    form = rng.choice(_ARITH_REPLIES)
    return lambda r: form.format(expr=expr, r=r)


def _wrong(rng: random.Random, right: int, candidates: Iterable[int]) -> int:
    options = sorted({c for c in candidates if c != right and c >= 0})
    return rng.choice(options)


def _gen_add(rng, d):
    lo, hi = _digits_range(d)
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    r = a + b
    slips = [r + 1, r - 1] + ([r + 10, r - 10] if d > 1 else []) + [_digitwise(a, b, lambda x, y: (x + y) % 10)]
    reply = _arith_reply(rng, f"{a} + {b}")
    return f"What is {a} + {b}?", reply(r), reply(_wrong(rng, r, slips))


def _gen_sub(rng, d):
    lo, hi = _digits_range(d)
    a, b = rng.sample(range(max(lo, 2), hi + 1), 2) if hi > 2 else (2, 1)
    a, b = max(a, b), min(a, b)
    r = a - b
    slips = [r + 1, r - 1] + ([r + 10, r - 10] if d > 1 else []) + [_digitwise(a, b, lambda x, y: abs(x - y))]
    reply = _arith_reply(rng, f"{a} - {b}")
    return f"What is {a} - {b}?", reply(r), reply(_wrong(rng, r, slips))


def _gen_mul(rng, d):
    da, db = (1, 1) if d == 1 else (2, 1) if d == 2 else (d - 1, 2)
    a = rng.randint(max(2, _digits_range(da)[0]), _digits_range(da)[1])
    b = rng.randint(max(2, _digits_range(db)[0]), _digits_range(db)[1])
    r = a * b
    slips = [a * (b + 1), a * (b - 1), r + 1, r - 1] + ([r + 10, r - 10] if d > 1 else [])
    reply = _arith_reply(rng, f"{a} * {b}")
    return f"What is {a} * {b}?", reply(r), reply(_wrong(rng, r, slips))


def _gen_compare(rng, d):
    lo, hi = 10 ** d, 10 ** (d + 1) - 1
    x = rng.randint(lo, hi)
    swapped = int(str(x)[::-1])
    if rng.random() < 0.7 and swapped != x and lo <= swapped <= hi:
        y = swapped
    else:
        y = x
        while y == x:
            y = rng.randint(lo, hi)
    which = "larger" if rng.random() < 0.7 else "smaller"
    best, other = (max(x, y), min(x, y)) if which == "larger" else (min(x, y), max(x, y))
    forms = [f"{{p}} is {which} than {{q}}.", f"The {which} number is {{p}}.", "{p}."]
    form = rng.choice(forms)
    return (f"Which is {which}, {x} or {y}?", form.format(p=best, q=other), form.format(p=other, q=best))


def _gen_count(rng, d):
    text = " ".join(rng.sample(_COUNT_WORDS, d))
    letters = sorted(set(text.replace(" ", "")))
    repeated = [c for c in letters if text.count(c) >= 2]
    letter = rng.choice(repeated if repeated and rng.random() < 0.85 else letters)
    n = text.count(letter)
    wrong = _wrong(rng, n, [n + 1, n - 1] if n > 1 else [n + 1, n + 1, 0])
    forms = ["The letter '{c}' appears {n} {times} in '{t}'.", "I count {n}.", "{n} {times}.",
             "'{c}' occurs {n} {times}."]
    form = rng.choice(forms)

    def reply(k):
        return form.format(c=letter, n=k, t=text, times="time" if k == 1 else "times")

    return f"How many times does the letter '{letter}' appear in '{text}'?", reply(n), reply(wrong)


def _gen_caps_word(rng, d):
    cat = rng.choice(sorted(_CATEGORIES))
    words = _CATEGORIES[cat][1]
    w, w2 = rng.sample(words, 2)
    end = rng.choice(["", "."])
    chosen = w.upper() + end
    rejected = rng.choice([cap(w) + end, w + end, f"{w.upper()} {w2.upper()}{end}",
                           f"{w.upper()}, {w2.upper()}{end}", cap(w) + end])
    return f"Reply with one word in capital letters: name {article(cat)} {cat}.", chosen, rejected


def _gen_word_count(rng, d):
    topic = rng.choice(sorted(_DESCRIBE_TOPICS))
    lo, hi = {1: (2, 4), 2: (3, 6)}.get(d, (4, min(10, 4 + 2 * d)))
    n = rng.randint(lo, hi)
    bank = rng.sample(_DESCRIBE_TOPICS[topic], n + 1)
    chosen_words = bank[:n]
    rejected_words = bank[: n + 1] if rng.random() < 0.6 or n == 1 else bank[: n - 1]
    join = lambda ws: cap(", ".join(ws)) + "."  # noqa: E731
    return f"Answer in exactly {num_word(n)} words: {topic}.", join(chosen_words), join(rejected_words)


def _gen_starts_with(rng, d):
    question, body = rng.choice(_YES_QUESTIONS)
    word = rng.choice(_START_WORDS)
    chosen = f"{word}, {body}"
    if rng.random() < 0.25:
        rejected = f"Well, {word.lower()}, {body}"
    else:
        rejected = f"{rng.choice([s for s in _OTHER_STARTS + _START_WORDS if s != word])}, {body}"
    return f"Start your reply with '{word}': {question}", chosen, rejected


def _gen_avoid_letter(rng, d):
    k = min(d, 3)
    while True:
        cat = rng.choice(sorted(_CATEGORIES))
        plural, words = _CATEGORIES[cat]
        letter = rng.choice("aeioun")
        without = [w for w in words if letter not in w]
        with_letter = [w for w in words if letter in w]
        if len(without) >= k and with_letter:
            break
    good = rng.sample(without, k)
    bad = list(good)
    bad[rng.randrange(k)] = rng.choice(with_letter)
    join = lambda ws: cap(", ".join(ws)) + "."  # noqa: E731
    what = f"{article(cat)} {cat}" if k == 1 else f"{num_word(k)} {plural}"
    return f"Name {what} without using the letter '{letter}'.", join(good), join(bad)


_GENERATORS = {
    "add": _gen_add, "sub": _gen_sub, "mul": _gen_mul, "compare": _gen_compare, "count": _gen_count,
    "caps_word": _gen_caps_word, "word_count": _gen_word_count, "starts_with": _gen_starts_with,
    "avoid_letter": _gen_avoid_letter,
}


def generate_pairs(n: int, seed: int, kinds: Sequence[str] = DEFAULT_KINDS,
                   difficulty: int = 1) -> list[PreferencePair]:
    """``n`` verifiable pairs. Kinds are dealt round-robin in seeded shuffled rounds, so every
    kind gets within one of ``n / len(kinds)`` pairs; ``difficulty`` (1, 2, 3, ...) scales
    number sizes, word counts and lengths. Ids are ``synth-s{seed}-d{difficulty}-{i}-{kind}``."""
    kinds = tuple(kinds)
    if not kinds:
        raise ConfigError("synthetic data: kinds must not be empty")
    unknown = [k for k in kinds if k not in _GENERATORS]
    if unknown:
        raise ConfigError(f"synthetic data: unknown kind(s) {unknown}; choose from {list(DEFAULT_KINDS)}")
    if not isinstance(difficulty, int) or difficulty < 1:
        raise ConfigError(f"synthetic data: difficulty must be an integer >= 1, got {difficulty!r}")
    if n < 0:
        raise ConfigError(f"synthetic data: n must be >= 0, got {n}")
    pairs = []
    order: list[str] = []
    for i in range(n):
        if i % len(kinds) == 0:
            order = list(kinds)
            random.Random(f"synth-order:{seed}:{difficulty}:{i // len(kinds)}").shuffle(order)
        kind = order[i % len(kinds)]
        rng = random.Random(f"synth:{seed}:{difficulty}:{i}:{kind}")
        question, chosen, rejected = _GENERATORS[kind](rng, difficulty)
        assert chosen != rejected, (kind, question, chosen)
        pairs.append(PreferencePair(
            id=f"synth-s{seed}-d{difficulty}-{i:06d}-{kind}",
            prompt=[{"role": "user", "content": question}],
            chosen=[{"role": "assistant", "content": chosen}],
            rejected=[{"role": "assistant", "content": rejected}],
            task_type="Reasoning" if kind in REASONING_KINDS else "Chat",
        ))
    return pairs


# ---------------------------------------------------------------------------------------------
# Judge examples and files
# ---------------------------------------------------------------------------------------------


def make_judge_examples(pairs: Sequence[PreferencePair], seed: int, template=None) -> list[JudgeExample]:
    """Judge prompts with balanced, seeded A/B placement (no target)."""
    from rmr1_jax.data.schemas import pair_to_example

    return [pair_to_example(p, i, seed, template) for i, p in enumerate(pairs)]


def make_distillation_examples(pairs: Sequence[PreferencePair], seed: int, template=None,
                               style: str = "full") -> list[JudgeExample]:
    """Judge prompts whose ``target`` is the oracle trace (of ``style``) for that placement."""
    from rmr1_jax.data.schemas import pair_to_example

    out = []
    for i, p in enumerate(pairs):
        ex = pair_to_example(p, i, seed, template)
        a, b, winner = assign_positions(p, i, seed)
        ex.target = oracle_trace(p, a, b, winner, style=style)
        out.append(ex)
    return out


def pair_rows(pairs: Iterable[PreferencePair]) -> Iterable[dict]:
    """Generic pair format rows (read back by :func:`rmr1_jax.data.schemas.parse_pair`)."""
    for p in pairs:
        yield p.to_json()


def trace_rows(examples: Iterable[JudgeExample]) -> Iterable[dict]:
    """Trace format rows: ``{"id", "messages": [...prompt..., assistant trace], "winner", "task_type"}``
    (read back by :func:`rmr1_jax.data.schemas.parse_judge_record`)."""
    for ex in examples:
        if ex.target is None:
            raise ValueError(f"example {ex.id} has no target trace")
        row = {"id": ex.id, "messages": ex.messages + [{"role": "assistant", "content": ex.target}]}
        if ex.winner is not None:
            row["winner"] = ex.winner
        if ex.task_type is not None:
            row["task_type"] = ex.task_type
        yield row


def judge_rows(examples: Iterable[JudgeExample]) -> Iterable[dict]:
    """RM-R1 style rows: ``{"id", "context_messages": [...judge prompt...], "winner": "model_a"|"model_b"}``."""
    for ex in examples:
        if ex.winner is None:
            raise ValueError(f"example {ex.id} has no winner")
        yield {"id": ex.id, "context_messages": ex.messages,
               "winner": {"A": "model_a", "B": "model_b"}[ex.winner]}


def write_pairs_jsonl(path: str, pairs: Iterable[PreferencePair]) -> int:
    return write_jsonl(path, pair_rows(pairs))


def write_traces_jsonl(path: str, examples: Iterable[JudgeExample]) -> int:
    return write_jsonl(path, trace_rows(examples))


def write_judge_jsonl(path: str, examples: Iterable[JudgeExample]) -> int:
    return write_jsonl(path, judge_rows(examples))
