"""Training texts from files, for a tokenizer of one's own (``rmr1 tokenizer train``)."""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from rmr1_jax.data.readers import iter_rows
from rmr1_jax.errors import DataError, UserError
from rmr1_jax.text.sentencepiece_tokenizer import JUDGE_SYMBOLS, train_sentencepiece


def corpus_texts(paths: Sequence[str]) -> Iterable[str]:
    """The training texts of files: a ``.jsonl`` file gives every string in each row (prompts,
    responses, messages' contents, nested at any depth), any other file its whole text."""
    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found")
        if not path.endswith(".jsonl"):
            with open(path, encoding="utf-8", errors="replace") as f:
                yield f.read()
            continue
        for lineno, row in iter_rows(path):
            if isinstance(row, Exception):
                raise DataError(f"{path}:{lineno}: {row}")
            yield from strings(row)


def train_sentencepiece_files(paths: Sequence[str], out_dir: str, vocab_size: int, *, seed: int = 0,
                              extra_symbols: Sequence[str] = JUDGE_SYMBOLS):
    """:func:`~rmr1_jax.text.sentencepiece_tokenizer.train_sentencepiece` on the texts of files (:func:`corpus_texts`): what
    ``rmr1 tokenizer train`` runs."""
    texts = list(corpus_texts(paths))
    if not any(texts):
        raise UserError(f"{', '.join(paths)}: no text to train a tokenizer on")
    os.makedirs(out_dir, exist_ok=True)
    return train_sentencepiece(texts, out_dir, vocab_size, seed=seed, extra_symbols=extra_symbols)
