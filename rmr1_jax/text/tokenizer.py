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

import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rmr1_jax.errors import UserError
from rmr1_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat

__all__ = [
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "train_sentencepiece",
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
            config = _read_json(config_path)
        self._config = dict(config or {})

        special: dict[str, str] = {}
        model_ids = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id(), "pad_token": sp.pad_id()}
        for key, tid in model_ids.items():
            if tid >= 0:
                special[key] = sp.id_to_piece(tid)
        for key, value in self._config.items():
            if key in _NOT_TOKEN_KEYS or not (key in _NAMED_SPECIAL or key.endswith("_token")):
                continue
            if value is None:
                special.pop(key, None)
            elif _token_text(value) is not None:
                special[key] = _token_text(value)
        self.special_tokens = {k: special[k] for k in _NAMED_SPECIAL if k in special}
        self.special_tokens.update({k: v for k, v in special.items() if k not in self.special_tokens})
        for key, text in self.special_tokens.items():
            if self.token_to_id(text) is None:
                raise UserError(f"{config_path}: {key} {text!r} is not a piece of {model_path}")

        extra = self._config.get("additional_special_tokens") or []
        extra = [t for t in (_token_text(x) for x in extra) if t is not None]
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

        templates = _pick_chat_templates(self._config.get("chat_template"), config_path)
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
            _write_json(os.path.join(out_dir, TOKENIZER_CONFIG), self._config)


# ------------------------------------------------------------------------------------------------
# Loading and training
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
