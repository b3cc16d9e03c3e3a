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

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rmr1_jax.errors import UserError
from rmr1_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat

__all__ = [
    "HFTokenizer",
    "Tokenizer",
    "load_tokenizer",
]

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
SENTENCEPIECE_MODEL = "tokenizer.model"

# The named special tokens transformers exposes to chat templates, in its order.
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Tokens that end a turn or a document in common model families.
_KNOWN_END_MARKERS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "</s>",
)
# Config keys ending in "_token" that are settings, not tokens.
_NOT_TOKEN_KEYS = frozenset({"add_bos_token", "add_eos_token", "split_special_tokens"})


def _token_text(value: Any) -> str | None:
    """The content of a special-token entry: a string, or an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _write_json(path: str, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _pick_chat_templates(config_value: Any, where: str) -> dict[str, str]:
    """Normalize a config's ``chat_template`` (str, list of {name, template}, or dict) to a dict."""
    if config_value is None:
        return {}
    if isinstance(config_value, str):
        return {"default": config_value}
    if isinstance(config_value, Mapping):
        items = config_value.items()
    elif isinstance(config_value, list):
        try:
            items = [(t["name"], t["template"]) for t in config_value]
        except (TypeError, KeyError):
            raise UserError(f"{where}: chat_template list entries need 'name' and 'template' keys") from None
    else:
        raise UserError(f"{where}: chat_template must be a string, list or dict, got {type(config_value).__name__}")
    out = {}
    for name, template in items:
        if not isinstance(template, str):
            raise UserError(f"{where}: chat template {name!r} must be a string")
        out[str(name)] = template
    return out


class Tokenizer:
    """The tokenizer interface (see the module docstring for the conventions).

    Attributes:
        vocab_size: size of the id space, added special tokens included (every id is < vocab_size).
        bos_id: the beginning-of-sequence id, or None when the tokenizer has none.
        eos_id: the end-of-turn / end-of-text id generation stops on.
        pad_id: the padding id (``eos_id`` when the tokenizer's files name no pad token).
        eos_ids: every id that ends generation, ``eos_id`` first.
        chat_template: the tokenizer's Jinja chat template, or None (then ChatML is used).
        special_tokens: named special tokens, e.g. ``{"eos_token": "<|im_end|>", ...}``.
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    eos_ids: tuple[int, ...]
    chat_template: str | None
    special_tokens: dict[str, str]

    # Named templates besides the default one ("tool_use", ...), as transformers allows.
    chat_templates: dict[str, str]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special token strings become their ids; no BOS/EOS is added."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; with ``skip_special_tokens`` special tokens are left out."""
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (a piece / token string), or None if there is none."""
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of an id, or None if the id is out of range."""
        raise NotImplementedError

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, **kwargs) -> str:
        """Render ``messages`` with this tokenizer's chat template (see :func:`render_chat`).

        Matches transformers' ``apply_chat_template(messages, tokenize=False, ...)``. ``kwargs``
        become template variables (``tools``, ``documents``, ``date_string``, ...). Passing
        ``chat_template=`` selects a named template of this tokenizer or gives a template source.
        """
        template = kwargs.pop("chat_template", None)
        if template is not None and template in self.chat_templates:
            template = self.chat_templates[template]
        if template is None and kwargs.get("tools") is not None and "tool_use" in self.chat_templates:
            template = self.chat_templates["tool_use"]
        if template is None:
            template = self.chat_template if self.chat_template is not None else DEFAULT_CHAT_TEMPLATE
        return render_chat(template, messages, add_generation_prompt, self.special_tokens, **kwargs)

    def save(self, out_dir: str) -> None:
        """Write this tokenizer's files to ``out_dir`` so ``load_tokenizer(out_dir)`` reloads it."""
        raise NotImplementedError

    # -- shared helpers ------------------------------------------------------------------------

    def _finish_ids(self, where: str, stop_ids: Iterable[int] = ()) -> None:
        """Set bos/eos/pad/eos_ids from ``special_tokens`` and the vocabulary."""
        bos = self.special_tokens.get("bos_token")
        self.bos_id = self.token_to_id(bos) if bos is not None else None
        eos = self.special_tokens.get("eos_token")
        eos_id = self.token_to_id(eos) if eos is not None else None
        extra = [int(i) for i in stop_ids if 0 <= int(i) < self.vocab_size]
        if eos is not None and eos_id is None:
            raise UserError(f"{where}: eos_token {eos!r} is not in the vocabulary")
        if eos_id is None:
            if extra:
                eos_id = extra[0]
            else:
                raise UserError(f"{where}: the tokenizer names no eos_token (set one in {TOKENIZER_CONFIG})")
            self.special_tokens["eos_token"] = self.id_to_token(eos_id)
        self.eos_id = eos_id
        pad = self.special_tokens.get("pad_token")
        pad_id = self.token_to_id(pad) if pad is not None else None
        if pad is not None and pad_id is None:
            raise UserError(f"{where}: pad_token {pad!r} is not in the vocabulary")
        self.pad_id = eos_id if pad_id is None else pad_id
        stops = [eos_id, *extra]
        specials = self._special_strings()
        for marker in _KNOWN_END_MARKERS:
            tid = self.token_to_id(marker)
            if tid is not None and marker in specials:
                stops.append(tid)
        self.eos_ids = tuple(dict.fromkeys(stops))

    def _special_strings(self) -> set[str]:
        return set(self.special_tokens.values())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, eos_ids={self.eos_ids})"
        )


# ------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json
# ------------------------------------------------------------------------------------------------


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
        raw_json = _read_text(tok_file)
        try:
            self._tok = _RustTokenizer.from_str(raw_json)
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise UserError(f"{tok_file} is not a valid tokenizer.json: {' '.join(str(e).split())}") from None
        self._files: dict[str, str] = {TOKENIZER_JSON: raw_json}

        config: dict[str, Any] = {}
        config_file = os.path.join(directory, TOKENIZER_CONFIG)
        if os.path.isfile(config_file):
            config = _read_json(config_file)
            self._files[TOKENIZER_CONFIG] = _read_text(config_file)
        map_file = os.path.join(directory, SPECIAL_TOKENS_MAP)
        token_map: dict[str, Any] = {}
        if os.path.isfile(map_file):
            token_map = _read_json(map_file)
            self._files[SPECIAL_TOKENS_MAP] = _read_text(map_file)
        stop_ids: list[int] = []
        gen_file = os.path.join(directory, GENERATION_CONFIG)
        if os.path.isfile(gen_file):
            gen = _read_json(gen_file)
            self._files[GENERATION_CONFIG] = _read_text(gen_file)
            value = gen.get("eos_token_id")
            values = value if isinstance(value, list) else [value]
            stop_ids = [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]

        # Named special tokens: the config wins over special_tokens_map.json; any other
        # "*_token" string entry (model-specific tokens such as image_token) is kept too.
        special: dict[str, str] = {}
        for source in (token_map, config):
            for key, value in source.items():
                if key in _NOT_TOKEN_KEYS or not (key in _NAMED_SPECIAL or key.endswith("_token")):
                    continue
                text = _token_text(value)
                if text is not None:
                    special[key] = text
                elif value is None:
                    special.pop(key, None)
        self.special_tokens = {k: special[k] for k in _NAMED_SPECIAL if k in special}
        self.special_tokens.update({k: v for k, v in special.items() if k not in self.special_tokens})

        # Added tokens from the config that the tokenizer.json lacks (older checkpoints).
        decoder = config.get("added_tokens_decoder") or {}
        if isinstance(decoder, Mapping):
            from tokenizers import AddedToken

            for key, entry in sorted(decoder.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
                content = _token_text(entry)
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

        templates = _pick_chat_templates(config.get("chat_template"), config_file)
        jinja_file = os.path.join(directory, CHAT_TEMPLATE_FILE)
        if os.path.isfile(jinja_file):
            templates["default"] = _read_text(jinja_file)
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
    from rmr1_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer

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


def __getattr__(name: str):
    # The SentencePiece implementation lives in rmr1_jax.text.sentencepiece_tokenizer; these names stay
    # importable from here (loaded on first use, so importing this module stays light).
    if name in ("SentencePieceTokenizer", "train_sentencepiece"):
        from rmr1_jax.text import sentencepiece_tokenizer as sentencepiece

        return getattr(sentencepiece, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
