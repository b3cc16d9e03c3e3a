"""Load a judge for inference from an Orbax training checkpoint or a Hugging Face directory,
together with its tokenizer and judge prompt template.

:func:`load_checkpoint_tokenizer` is the one way every consumer of a checkpoint (judges,
``score-rm``, ``rules score``, ``rules apply``, the HF export) gets its tokenizer: the files the
run's config names, rendering with the chat template the run trained with (recorded as text in
the checkpoint metadata), so scoring sees the text training saw."""

from __future__ import annotations

import dataclasses
import os

from rmr1_jax.errors import UserError


@dataclasses.dataclass
class LoadedJudge:
    model: object
    params: object
    tokenizer: object
    template: object
    source: str
    sampler: object = None  # created on first use, then reused (compiled once)
    mesh: object = None  # the mesh the parameters live on (generation shards its rows over it)


def load_judge(path: str, mesh, *, tokenizer_path: str | None = None, prompt_variant: str | None = None,
               system_file: str | None = None, user_file: str | None = None,
               user_multiturn_file: str | None = None, dtype: str = "float32") -> LoadedJudge:
    """``path`` is an HF directory (has config.json) or an Orbax checkpoint directory written by
    training (its saved run config names the tokenizer and prompt files). Explicit arguments
    override what the checkpoint says."""
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.checkpoint.reading import read_config
    from rmr1_jax.text.prompts import JudgeTemplate

    if not os.path.isdir(path):
        raise UserError(f"{path}: checkpoint directory not found")
    prompt_cfg: dict = {}
    if os.path.isfile(os.path.join(path, "config.json")):
        model, params = load_model(path, "lm", kind="hf", mesh=mesh, param_dtype=dtype, scan_layers=False)
    else:  # the checkpoint's own parameter dtype; ``dtype`` is the compute dtype
        model, params = load_model(path, "lm", kind="orbax", mesh=mesh, dtype=dtype, scan_layers=False)
        prompt_cfg = (read_config(path) or {}).get("prompt") or {}
    tokenizer = load_checkpoint_tokenizer(path, tokenizer_path)
    template = JudgeTemplate.from_files(
        prompt_variant or prompt_cfg.get("variant", "instruct"),
        system_file=system_file or prompt_cfg.get("system_file"),
        user_file=user_file or prompt_cfg.get("user_file"),
        user_multiturn_file=user_multiturn_file or prompt_cfg.get("user_multiturn_file"))
    return LoadedJudge(model, params, tokenizer, template, path, mesh=mesh)


def _saved_tokenizer(path: str, run_cfg: dict) -> str:
    tok_path = (run_cfg.get("tokenizer") or {}).get("path") or (run_cfg.get("model") or {}).get("hf_dir")
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
