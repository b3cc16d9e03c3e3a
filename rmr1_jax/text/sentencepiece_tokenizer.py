"""The SentencePiece side of :mod:`rmr1_jax.text.tokenizer`: a tokenizer over a ``.model``
file (plus an optional ``tokenizer_config.json`` beside it), and in-process training of one
from text, as the demo does."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rmr1_jax.errors import UserError
from rmr1_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE
from rmr1_jax.text.tokenizer_base import (
    NAMED_SPECIAL,
    NOT_TOKEN_KEYS,
    SENTENCEPIECE_MODEL,
    TOKENIZER_CONFIG,
    Tokenizer,
    pick_chat_templates,
    read_json,
    token_text,
    write_json,
)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model, with an optional ``tokenizer_config.json`` in the same directory.

    Without a config the model's own pieces name the special tokens (``unk``, and ``bos`` /
    ``eos`` / ``pad`` where the model defines them). With one, its ``bos_token``, ``eos_token``,
    ``pad_token``, ``unk_token``, ``additional_special_tokens`` and ``chat_template`` apply
    (``null`` removes a token).

    Special tokens that are user-defined symbols of the model are encoded as single ids by
    SentencePiece itself. Special tokens that are *control* symbols (e.g. ``<s>`` in many models)
    are never produced by SentencePiece from text, so ``encode`` splits them out of the text
    first and ``decode`` writes them back as text.
    """

    def __init__(self, model_path: str, *, model_proto: bytes | None = None, config: Mapping[str, Any] | None = None):
        import sentencepiece as spm

        model_path = os.fspath(model_path)
        if model_proto is None:
            if os.path.isdir(model_path):
                model_path = os.path.join(model_path, SENTENCEPIECE_MODEL)
            if not os.path.isfile(model_path):
                raise UserError(f"no SentencePiece model at {model_path}")
            try:
                with open(model_path, "rb") as f:
                    model_proto = f.read()
            except OSError as e:
                raise UserError(f"cannot read {model_path}: {e}") from None
        self.path = model_path
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with multi-line text
            raise UserError(f"{model_path} is not a valid SentencePiece model: {' '.join(str(e).split())}") from None
        if sp.get_piece_size() == 0:
            raise UserError(f"{model_path} is not a valid SentencePiece model (no pieces)")
        self._sp = sp
        self._proto = model_proto
        self.vocab_size = sp.get_piece_size()

        config_path = os.path.join(os.path.dirname(model_path) or ".", TOKENIZER_CONFIG)
        if config is None and os.path.isfile(config_path):
            config = read_json(config_path)
        self._config = dict(config or {})

        special: dict[str, str] = {}
        model_ids = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id(), "pad_token": sp.pad_id()}
        for key, tid in model_ids.items():
            if tid >= 0:
                special[key] = sp.id_to_piece(tid)
        for key, value in self._config.items():
            if key in NOT_TOKEN_KEYS or not (key in NAMED_SPECIAL or key.endswith("_token")):
                continue
            if value is None:
                special.pop(key, None)
            elif token_text(value) is not None:
                special[key] = token_text(value)
        self.special_tokens = {k: special[k] for k in NAMED_SPECIAL if k in special}
        self.special_tokens.update({k: v for k, v in special.items() if k not in self.special_tokens})
        for key, text in self.special_tokens.items():
            if self.token_to_id(text) is None:
                raise UserError(f"{config_path}: {key} {text!r} is not a piece of {model_path}")

        extra = self._config.get("additional_special_tokens") or []
        extra = [t for t in (token_text(x) for x in extra) if t is not None]
        missing = [t for t in extra if self.token_to_id(t) is None]
        if missing:
            raise UserError(f"{config_path}: additional_special_tokens {missing} are not pieces of {model_path}")
        self._additional = extra

        # Ids decode leaves out with skip_special_tokens: control pieces and every named or
        # additional special token.
        self._special_ids = {i for i in range(self.vocab_size) if sp.is_control(i)}
        self._special_ids |= {self.token_to_id(t) for t in (*self.special_tokens.values(), *extra)}
        # Special strings SentencePiece cannot produce from text (control pieces): split them out.
        control = sorted(
            {t for t in (*self.special_tokens.values(), *extra) if sp.is_control(self.token_to_id(t))},
            key=len,
            reverse=True,
        )
        self._control_re = re.compile("|".join(re.escape(t) for t in control)) if control else None

        templates = pick_chat_templates(self._config.get("chat_template"), config_path)
        self.chat_template = templates.pop("default", None)
        self.chat_templates = templates
        self._finish_ids(model_path)

    def _special_strings(self) -> set[str]:
        return set(self.special_tokens.values()) | set(self._additional)

    def encode(self, text: str) -> list[int]:
        if self._control_re is None:
            return self._sp.encode(text)
        ids: list[int] = []
        pos = 0
        for m in self._control_re.finditer(text):
            if m.start() > pos:
                ids += self._sp.encode(text[pos : m.start()])
            ids.append(self._sp.piece_to_id(m.group()))
            pos = m.end()
        if pos < len(text):
            ids += self._sp.encode(text[pos:])
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._control_re is None:
            return self._sp.encode(list(texts))
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            return self._sp.decode([i for i in ids if i not in self._special_ids])
        # SentencePiece drops control pieces when decoding; write them back as their text.
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if 0 <= i < self.vocab_size and self._sp.is_control(i):
                if run:
                    parts.append(self._sp.decode(run))
                    run = []
                parts.append(self._sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            parts.append(self._sp.decode(run))
        return "".join(parts)

    def token_to_id(self, token: str) -> int | None:
        tid = self._sp.piece_to_id(token)
        if tid == self._sp.unk_id() and token != self._sp.id_to_piece(tid):
            return None
        return tid

    def id_to_token(self, token_id: int) -> str | None:
        token_id = int(token_id)
        return self._sp.id_to_piece(token_id) if 0 <= token_id < self.vocab_size else None

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model."""
        return self._proto

    def save(self, out_dir: str) -> None:
        """Write ``tokenizer.model`` and (if there is one) ``tokenizer_config.json``."""
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, SENTENCEPIECE_MODEL), "wb") as f:
            f.write(self._proto)
        if self._config:
            write_json(os.path.join(out_dir, TOKENIZER_CONFIG), self._config)


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str,
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    model_type: str = "bpe",
    seed: int = 0,
    extra_symbols: Sequence[str] = (),
) -> SentencePieceTokenizer:
    """Train a SentencePiece tokenizer in-process and write it to ``out_dir``.

    The model is trained for byte-exact round trips: byte fallback (no unknown text), identity
    normalization, whitespace kept as it is, no dummy prefix. ``special_tokens`` and
    ``extra_symbols`` become user-defined symbols, so each encodes as a single id (ids 1, 2, ...
    after ``<unk>`` = 0, specials first); the special tokens are additionally marked special
    (``decode(..., skip_special_tokens=True)`` drops them), the extra symbols are not. The model
    has no BOS. ``eos_token`` is ``<|im_end|>`` and ``pad_token`` is ``<|endoftext|>`` when those
    are among ``special_tokens`` (otherwise the last / first special token), so pad is neither
    0 nor eos. ``vocab_size`` is an upper bound: a small corpus may give fewer pieces.

    Training is deterministic: the same texts, settings and seed give the same model bytes.

    Writes ``out_dir/tokenizer.model`` and ``out_dir/tokenizer_config.json`` (special tokens and
    the built-in ChatML chat template) and returns the loaded tokenizer.
    """
    import sentencepiece as spm

    special_tokens = [str(t) for t in special_tokens]
    extra_symbols = [str(t) for t in extra_symbols if t not in special_tokens]
    if not special_tokens:
        raise UserError("train_sentencepiece: special_tokens must name at least an end-of-turn token")
    if len(set(special_tokens)) != len(special_tokens):
        raise UserError(f"train_sentencepiece: duplicate special tokens {special_tokens}")
    if model_type not in ("bpe", "unigram", "char", "word"):
        raise UserError(f"train_sentencepiece: model_type must be bpe, unigram, char or word, got {model_type!r}")
    eos = "<|im_end|>" if "<|im_end|>" in special_tokens else special_tokens[-1]
    pad = "<|endoftext|>" if "<|endoftext|>" in special_tokens else special_tokens[0]
    if pad == eos and len(special_tokens) > 1:
        pad = next(t for t in special_tokens if t != eos)

    def sentences():
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"train_sentencepiece: text {i} is {type(text).__name__}, not str")
            if text:
                yield text

    model = io.BytesIO()
    spm.set_random_generator_seed(int(seed))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            vocab_size=int(vocab_size),
            model_type=model_type,
            byte_fallback=True,
            user_defined_symbols=[*special_tokens, *extra_symbols],
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            character_coverage=0.9995,
            hard_vocab_limit=False,
            max_sentence_length=1 << 20,
            num_threads=1,
            minloglevel=2,
        )
    except UserError:
        raise
    except Exception as e:  # sentencepiece reports bad settings / too small a corpus as RuntimeError
        raise UserError(f"train_sentencepiece (vocab_size={vocab_size}): {' '.join(str(e).split())}") from None

    config = {
        "tokenizer_type": "sentencepiece",
        "bos_token": None,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": "<unk>",
        "additional_special_tokens": special_tokens,
        "chat_template": DEFAULT_CHAT_TEMPLATE,
    }
    model_path = os.path.join(out_dir, SENTENCEPIECE_MODEL)
    tok = SentencePieceTokenizer(model_path, model_proto=model.getvalue(), config=config)
    tok.save(out_dir)
    return tok


# pieces a tokenizer trained for this project's judges keeps whole: the RM-R1 judgment's tags
# and verdicts, and RAMO's rule-scoring answer words (each must add exactly one token)
JUDGE_SYMBOLS = ("<type>", "</type>", "<rubric>", "</rubric>", "<eval>", "</eval>", "<solution>", "</solution>",
                 "<answer>", "</answer>", "[[A]]", "[[B]]", "Yes", "No", "Irrelevant")

