"""The tokenizer interface, :class:`Tokenizer`, and the file conventions both implementations
share (:mod:`rmr1_jax.text.tokenizer` for HF ``tokenizer.json`` files and the loader,
:mod:`rmr1_jax.text.sentencepiece_tokenizer` for SentencePiece models); the conventions are
described in :mod:`rmr1_jax.text.tokenizer`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rmr1_jax.errors import UserError
from rmr1_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat

__all__ = ["Tokenizer"]

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
SENTENCEPIECE_MODEL = "tokenizer.model"

# The named special tokens transformers exposes to chat templates, in its order.
NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Tokens that end a turn or a document in common model families.
KNOWN_END_MARKERS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "</s>",
)
# Config keys ending in "_token" that are settings, not tokens.
NOT_TOKEN_KEYS = frozenset({"add_bos_token", "add_eos_token", "split_special_tokens"})


def token_text(value: Any) -> str | None:
    """The content of a special-token entry: a string, or an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_json(path: str) -> dict[str, Any]:
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


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def write_json(path: str, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def pick_chat_templates(config_value: Any, where: str) -> dict[str, str]:
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
        for marker in KNOWN_END_MARKERS:
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
