"""One tokenizer interface over SentencePiece models and Hugging Face ``tokenizer.json`` files.

:class:`Tokenizer` is what the rest of the package uses. Its two implementations are

* :class:`HFTokenizer`: a ``tokenizers.Tokenizer`` loaded from ``tokenizer.json``, with its
  special tokens and chat template read from ``tokenizer_config.json`` (a ``chat_template.jinja``
  file next to it takes priority over the config's template, as in transformers; a
  ``special_tokens_map.json`` fills in tokens the config lacks; a ``generation_config.json``
  contributes stop ids);
* :class:`SentencePieceTokenizer`: a SentencePiece ``.model`` file, plus an optional
  ``tokenizer_config.json`` beside it naming special tokens and a chat template
  (:func:`train_sentencepiece` writes both).

Conventions shared by both:

* :meth:`Tokenizer.encode` never adds BOS/EOS. Chat templates write special tokens as text, and
  ``encode`` maps each special token string found in the text to its single id.
* ``decode(encode(text)) == text`` for any text (byte-level BPE on the HF side, byte fallback on
  the SentencePiece side; the one exception for SentencePiece is the character U+2581 "▁",
  which SentencePiece uses to mark spaces and decodes as a space).
* ``pad_id`` comes from the tokenizer's own files; a tokenizer without a pad token pads with
  ``eos_id``. It is never assumed to be 0.
* ``eos_ids`` lists every id that ends generation: ``eos_id`` first, then the ids of
  ``generation_config.json``'s ``eos_token_id`` (if present), then the end markers
  ``<|im_end|>``, ``<|endoftext|>``, ``<|eot_id|>``, ``<|end_of_text|>``, ``<|eom_id|>``,
  ``<end_of_turn>`` and ``</s>`` where the tokenizer has them as special tokens.
* ``special_tokens`` holds the named special tokens (``bos_token``, ``eos_token``, ``pad_token``,
  ``unk_token``, ... as strings) that chat templates see as variables. ``pad_token`` is only
  there when the files name one.
* A tokenizer without a chat template renders with the built-in ChatML
  :data:`~rmr1_jax.text.chat_template.DEFAULT_CHAT_TEMPLATE`.

Every problem with the files (missing, unreadable, corrupt, no usable EOS) raises
:class:`~rmr1_jax.errors.UserError` naming the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rmr1_jax.errors import UserError
from rmr1_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
from rmr1_jax.text.tokenizer_base import (
    CHAT_TEMPLATE_FILE,
    GENERATION_CONFIG,
    NAMED_SPECIAL,
    NOT_TOKEN_KEYS,
    SENTENCEPIECE_MODEL,
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    Tokenizer,
    pick_chat_templates,
    read_json,
    read_text,
    token_text,
)

__all__ = ["HFTokenizer", "SentencePieceTokenizer", "Tokenizer", "load_tokenizer", "train_sentencepiece"]


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` (Hugging Face ``tokenizers``) with its ``tokenizer_config.json``.

    ``encode`` equals transformers' ``tokenizer.encode(text, add_special_tokens=False)``; added
    tokens (special or not) in the text become their ids. ``decode`` equals the ``tokenizers``
    decoder (no ``clean_up_tokenization_spaces`` pass, which would break round trips).
    """

    def __init__(self, path: str):
        from tokenizers import Tokenizer as _RustTokenizer

        path = os.fspath(path)
        if os.path.isdir(path):
            directory, tok_file = path, os.path.join(path, TOKENIZER_JSON)
        else:
            directory, tok_file = os.path.dirname(path) or ".", path
        if not os.path.isfile(tok_file):
            raise UserError(f"no tokenizer file at {tok_file}")
        self.path = path
        raw_json = read_text(tok_file)
        try:
            self._tok = _RustTokenizer.from_str(raw_json)
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise UserError(f"{tok_file} is not a valid tokenizer.json: {' '.join(str(e).split())}") from None
        self._files: dict[str, str] = {TOKENIZER_JSON: raw_json}

        config: dict[str, Any] = {}
        config_file = os.path.join(directory, TOKENIZER_CONFIG)
        if os.path.isfile(config_file):
            config = read_json(config_file)
            self._files[TOKENIZER_CONFIG] = read_text(config_file)
        map_file = os.path.join(directory, SPECIAL_TOKENS_MAP)
        token_map: dict[str, Any] = {}
        if os.path.isfile(map_file):
            token_map = read_json(map_file)
            self._files[SPECIAL_TOKENS_MAP] = read_text(map_file)
        stop_ids: list[int] = []
        gen_file = os.path.join(directory, GENERATION_CONFIG)
        if os.path.isfile(gen_file):
            gen = read_json(gen_file)
            self._files[GENERATION_CONFIG] = read_text(gen_file)
            value = gen.get("eos_token_id")
            values = value if isinstance(value, list) else [value]
            stop_ids = [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]

        # Named special tokens: the config wins over special_tokens_map.json; any other
        # "*_token" string entry (model-specific tokens such as image_token) is kept too.
        special: dict[str, str] = {}
        for source in (token_map, config):
            for key, value in source.items():
                if key in NOT_TOKEN_KEYS or not (key in NAMED_SPECIAL or key.endswith("_token")):
                    continue
                text = token_text(value)
                if text is not None:
                    special[key] = text
                elif value is None:
                    special.pop(key, None)
        self.special_tokens = {k: special[k] for k in NAMED_SPECIAL if k in special}
        self.special_tokens.update({k: v for k, v in special.items() if k not in self.special_tokens})

        # Added tokens from the config that the tokenizer.json lacks (older checkpoints).
        decoder = config.get("added_tokens_decoder") or {}
        if isinstance(decoder, Mapping):
            from tokenizers import AddedToken

            for key, entry in sorted(decoder.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
                content = token_text(entry)
                if content is None or self._tok.token_to_id(content) is not None:
                    continue
                is_special = isinstance(entry, Mapping) and bool(entry.get("special", False))
                token = AddedToken(content, special=is_special)
                if token.special:
                    self._tok.add_special_tokens([token])
                else:
                    self._tok.add_tokens([token])
        self._special_ids = {
            tid for tid, tok in self._tok.get_added_tokens_decoder().items() if getattr(tok, "special", False)
        }

        templates = pick_chat_templates(config.get("chat_template"), config_file)
        jinja_file = os.path.join(directory, CHAT_TEMPLATE_FILE)
        if os.path.isfile(jinja_file):
            templates["default"] = read_text(jinja_file)
            self._files[CHAT_TEMPLATE_FILE] = templates["default"]
        self.chat_template = templates.pop("default", None)
        self.chat_templates = templates

        added = self._tok.get_added_tokens_decoder()
        self.vocab_size = max(self._tok.get_vocab_size(with_added_tokens=True), max(added, default=-1) + 1)
        self._finish_ids(tok_file, stop_ids)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    def _special_strings(self) -> set[str]:
        return set(self.special_tokens.values()) | {
            self._tok.id_to_token(i) for i in self._special_ids if self._tok.id_to_token(i) is not None
        }

    def save(self, out_dir: str) -> None:
        """Write tokenizer.json and the config files that were read with it, unchanged.

        If added tokens came from ``added_tokens_decoder`` only, the written tokenizer.json
        includes them.
        """
        os.makedirs(out_dir, exist_ok=True)
        for name, text in self._files.items():
            if name == TOKENIZER_JSON:
                self._tok.save(os.path.join(out_dir, name), pretty=True)
                continue
            with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
                f.write(text)


# ------------------------------------------------------------------------------------------------
# SentencePiece
# ------------------------------------------------------------------------------------------------


def load_tokenizer(path: str) -> Tokenizer:
    """Load a tokenizer from ``path``.

    * a directory with ``tokenizer.json`` (or that file itself): :class:`HFTokenizer`;
    * a ``.model`` file, or a directory with ``tokenizer.model``: :class:`SentencePieceTokenizer`.

    A missing path, a directory holding neither file, or unreadable / corrupt files raise
    UserError naming the path.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"tokenizer path does not exist: {path}")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
            return HFTokenizer(path)
        if os.path.isfile(os.path.join(path, SENTENCEPIECE_MODEL)):
            return SentencePieceTokenizer(os.path.join(path, SENTENCEPIECE_MODEL))
        raise UserError(f"no {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL} in tokenizer directory {path}")
    if path.endswith(".model"):
        return SentencePieceTokenizer(path)
    if path.endswith(".json"):
        return HFTokenizer(path)
    raise UserError(f"not a tokenizer file (expected a directory, tokenizer.json or a .model file): {path}")
