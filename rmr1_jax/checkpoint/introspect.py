"""What a checkpoint says about itself without its weights being read: its head, the tokenizer
its run used and the chat template it trained with. For an Orbax checkpoint written by training
(its saved run config and metadata) or a Hugging Face directory (its config.json and tokenizer
files); every consumer (judging, scoring, rule scoring, the adapter, the HF export) finds them
here, so all render text as the run did."""

from __future__ import annotations

import os

from rmr1_jax.errors import UserError


def saved_tokenizer_path(path: str, run_cfg: dict) -> str | None:
    """The tokenizer checkpoint ``path``'s run used, as its saved run config names it
    (``tokenizer.path``, else ``model.hf_dir``), or None when it names none. A named path that
    is gone, or an ``hf_dir`` without tokenizer files, is a one-line error naming that field
    (a moved model directory is not a "tokenizer path")."""
    from rmr1_jax.text.tokenizer_base import SENTENCEPIECE_MODEL, TOKENIZER_JSON

    tok_path = (run_cfg.get("tokenizer") or {}).get("path")
    field = "tokenizer.path"
    if not tok_path:
        tok_path, field = (run_cfg.get("model") or {}).get("hf_dir"), "model.hf_dir"
    if not tok_path:
        return None
    if not os.path.exists(tok_path):
        raise UserError(f"{path}: its run read the tokenizer from {field} {tok_path}, which is not found; "
                        f"pass --tokenizer")
    if field == "model.hf_dir" and not any(os.path.isfile(os.path.join(tok_path, n))
                                           for n in (TOKENIZER_JSON, SENTENCEPIECE_MODEL)):
        raise UserError(f"{path}: its run read the tokenizer from model.hf_dir {tok_path}, which has no "
                        f"{TOKENIZER_JSON} or {SENTENCEPIECE_MODEL}; pass --tokenizer")
    return tok_path


def _saved_tokenizer(path: str, run_cfg: dict) -> str:
    tok_path = saved_tokenizer_path(path, run_cfg)
    if tok_path is None:
        raise UserError(f"{path}: the checkpoint does not name its tokenizer; pass --tokenizer")
    return tok_path


def load_checkpoint_tokenizer(path: str, tokenizer_path: str | None = None, *, step: int | None = None):
    """The tokenizer of checkpoint ``path`` as its run used it.

    The files: ``tokenizer_path``, else an HF directory's own, else what an Orbax checkpoint's
    saved run config names (``tokenizer.path``, else ``model.hf_dir``; see
    :func:`tokenizer_path_for`). The chat template: for an Orbax checkpoint, the one its run
    trained with (:func:`checkpoint_chat_template`), which replaces the files' own template
    also when ``tokenizer_path`` is given (that names the vocabulary; the rendering is the
    checkpoint's). An HF directory's template is the one in its tokenizer files (an export
    writes the trained template there). A command's own flag that changes the rendering (e.g.
    ``rules score --no-chat-template``) applies on top of this."""
    from rmr1_jax.text.tokenizer import load_tokenizer

    if not os.path.isdir(path):
        raise UserError(f"{path}: checkpoint directory not found")
    if os.path.isfile(os.path.join(path, "config.json")):
        return load_tokenizer(tokenizer_path or path)
    from rmr1_jax.checkpoint.reading import read_config

    run_cfg = read_config(path, step) or {}
    tokenizer = load_tokenizer(tokenizer_path or _saved_tokenizer(path, run_cfg))
    template = checkpoint_chat_template(path, step, run_cfg=run_cfg)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def checkpoint_chat_template(path: str, step: int | None = None, *, run_cfg: dict | None = None) -> str | None:
    """The chat template an Orbax checkpoint's run trained with (step ``step``, default the
    latest): the text its metadata records as ``chat_template`` (every training run records
    the template it rendered with, ``tokenizer.chat_template_file`` or the tokenizer's own).
    A checkpoint written before that falls back to the file its run config's
    ``tokenizer.chat_template_file`` names, and is a one-line error when that file is gone;
    None when it records nothing (the tokenizer's own template is the one it trained with)."""
    from rmr1_jax.checkpoint.reading import read_config, read_metadata

    template = read_metadata(path, step).get("chat_template")
    if isinstance(template, str):
        return template
    if run_cfg is None:
        run_cfg = read_config(path, step) or {}
    file = (run_cfg.get("tokenizer") or {}).get("chat_template_file")
    if not file:
        return None
    if not os.path.isfile(file):
        raise UserError(f"{path}: the run trained with tokenizer.chat_template_file {file}, which is gone, and the "
                        f"checkpoint predates recording the template's text; restore that file")
    from rmr1_jax.text.tokenizer_base import read_text

    return read_text(file)


def tokenizer_path_for(path: str, tokenizer_path: str | None = None) -> str:
    """The tokenizer of a checkpoint, as :func:`load_judge` finds it: ``tokenizer_path``, else
    an HF directory's own files, else what an Orbax checkpoint's saved run config names."""
    if tokenizer_path:
        return tokenizer_path
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    from rmr1_jax.checkpoint.reading import read_config

    return _saved_tokenizer(path, read_config(path) or {})


def checkpoint_head(path: str, step: int | None = None) -> tuple[str, int]:
    """``(head, num_labels)`` of a checkpoint, read from its config without loading weights: an
    HF directory's config.json (architectures, num_labels), or the model_config in an Orbax
    checkpoint's metadata (step ``step``, default the latest)."""
    from rmr1_jax.errors import CheckpointError
    from rmr1_jax.models.config import ModelConfig

    if not os.path.isdir(path):
        raise UserError(f"{path}: checkpoint directory not found")
    if os.path.isfile(os.path.join(path, "config.json")):
        cfg = ModelConfig.from_hf_dir(path)
    else:
        from rmr1_jax.checkpoint.reading import read_metadata

        meta = read_metadata(path, step)
        if not meta.get("model_config"):
            raise CheckpointError(f"{path}: checkpoint metadata has no model_config; cannot tell its head")
        cfg = ModelConfig.from_dict(meta["model_config"], source=f"{path} metadata")
    return cfg.head, cfg.num_labels
