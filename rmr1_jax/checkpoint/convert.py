"""Conversions between HF directories and Orbax checkpoints (``rmr1 convert``), for every head
(a sequence classifier converts to a checkpoint with a ``score`` head, and back)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from rmr1_jax.errors import CheckpointError, UserError
from rmr1_jax.models.config import ModelConfig
from rmr1_jax.parallel.mesh import MeshConfig, make_mesh


def checkpoint_metadata(cfg: ModelConfig, *, chat_template: str | None = None) -> dict:
    """The metadata item of a checkpoint of a ``cfg`` model; ``chat_template``: the text of the
    template its run rendered chats with (training records it; every reader renders with it,
    see :func:`rmr1_jax.checkpoint.introspect.load_checkpoint_tokenizer`)."""
    meta = {"format_version": 1, "layer_layout": "scanned" if cfg.scan_layers else "unrolled",
            "model_config": cfg.to_dict()}
    if chat_template is not None:
        meta["chat_template"] = chat_template
    return meta


def hf_to_orbax(hf_dir: str, out: str, *, dtype: str = "float32", mesh_cfg: MeshConfig | None = None,
                scan_layers: bool = True, step: int = 0) -> int:
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.checkpoint.manager import CheckpointManager

    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointError(f"{out}: exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out):
        raise CheckpointError(f"{out}: already exists and is not empty")
    mesh = make_mesh(mesh_cfg)
    model, params = load_model(hf_dir, kind="hf", mesh=mesh, param_dtype=dtype, scan_layers=scan_layers)
    with CheckpointManager(out, max_to_keep=None) as mngr:
        mngr.save(step, {"params": params}, metadata=checkpoint_metadata(model.cfg), force=True)
    return step


def orbax_to_hf(ckpt: str, out: str, *, step: int | None = None, dtype: str = "bfloat16",
                tokenizer_dir: str | None = None, overwrite: bool = False,
                mesh_cfg: MeshConfig | None = None) -> str:
    """An Orbax checkpoint as an HF directory (:func:`~rmr1_jax.checkpoint.hf.save_hf`), with
    the run's tokenizer (:func:`export_tokenizer`: its files, and in ``tokenizer_config.json`` the
    chat template the run trained with, so transformers' ``apply_chat_template`` renders the
    text our readers do). A checkpoint whose tokenizer cannot be found is refused in one line
    before anything is read: an export without one loads in transformers as an empty tokenizer.

    ``dtype``: the weights' dtype in the export, bfloat16 by default (half the size of float32);
    transformers then computes in bfloat16 too, so its scores equal ours (to float32 rounding)
    only for a ``dtype="float32"`` export.

    In a multi-host job every process runs it: the parameters are restored sharded over the
    global mesh, gathered to process 0 one tensor at a time, and written by process 0 alone."""
    from rmr1_jax.checkpoint.hf_export import check_export_dir, plan_export, write_hf_dir
    from rmr1_jax.checkpoint.hf_layout import _NP_DTYPES
    from rmr1_jax.checkpoint.loading import load_model
    from rmr1_jax.models.lora import merge

    if dtype not in _NP_DTYPES:
        raise CheckpointError(f"dtype={dtype!r} is not one of {list(_NP_DTYPES)}")
    out = os.path.abspath(out)
    check_export_dir(out, overwrite)  # before the restore, not after it
    tok = export_tokenizer(ckpt, tokenizer_dir, step)
    model, params = load_model(ckpt, kind="orbax", mesh=make_mesh(mesh_cfg), step=step)
    cfg, params = merge(model.cfg, params)  # a LoRA checkpoint exports as the plain merged model
    plan = plan_export(cfg, params, dtype, 2 * 1024**3)  # every tensor checked before any is gathered
    return write_hf_dir(cfg, plan, out, dtype, tokenizer_dir or cfg.source_dir or tok.directory, overwrite,
                        tokenizer_files=tok.files)


@dataclasses.dataclass
class ExportTokenizer:
    """The tokenizer an export carries: where its files come from, and (on process 0) the files
    to write, ``tokenizer_config.json``'s ``chat_template`` set to the trained template."""

    path: str
    directory: str
    chat_template: str
    files: dict[str, bytes] | None


def export_tokenizer(ckpt: str, tokenizer_dir: str | None = None, step: int | None = None) -> ExportTokenizer:
    """The tokenizer of checkpoint ``ckpt`` for its HF export: the files in ``tokenizer_dir``,
    else those its run config names (``tokenizer.path``, else ``model.hf_dir``), else those in
    the HF directory it was converted from (``rmr1 convert hf-to-orbax``); the chat template is
    the one the run trained with (:func:`rmr1_jax.checkpoint.introspect.load_checkpoint_tokenizer`), else
    the tokenizer's own, else the built-in ChatML it renders with. No tokenizer, one that does
    not load, or one larger than the model's vocabulary is a one-line CheckpointError. Every
    process of a multi-host job calls it and they fail together (process 0 reads the files)."""
    from rmr1_jax.checkpoint.hf_export import _any_process

    err, tok = None, None
    try:
        tok = _export_tokenizer(ckpt, tokenizer_dir, step, read_files=jax.process_index() == 0)
    except CheckpointError as e:
        err = e
    except UserError as e:
        err = CheckpointError(f"{ckpt}: cannot export its tokenizer ({e})")
    except Exception as e:  # noqa: BLE001 - every process must learn of it, see _any_process
        err = CheckpointError(f"{ckpt}: cannot export its tokenizer ({' '.join(f'{type(e).__name__}: {e}'.split())})")
    if _any_process(err is not None):
        raise err or CheckpointError(f"{ckpt}: process 0 could not export the tokenizer (its error says why)")
    return tok


def _export_tokenizer(ckpt: str, tokenizer_dir: str | None, step: int | None, read_files: bool) -> ExportTokenizer:
    from rmr1_jax.checkpoint.reading import read_config, read_metadata
    from rmr1_jax.checkpoint.introspect import load_checkpoint_tokenizer, saved_tokenizer_path
    from rmr1_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE

    meta = read_metadata(ckpt, step)
    run_cfg = read_config(ckpt, step) or {}
    path = tokenizer_dir or saved_tokenizer_path(ckpt, run_cfg)
    source = (meta.get("model_config") or {}).get("source_dir")
    if path is None and source and any(os.path.isfile(os.path.join(source, n)) for n in _TOKENIZER_MAIN_FILES):
        path = source
    if path is None:
        raise CheckpointError(f"{ckpt}: no tokenizer to export with the model (the checkpoint's run config names "
                              f"none in tokenizer.path or model.hf_dir); pass --tokenizer DIR")
    tok = load_checkpoint_tokenizer(ckpt, path, step=step)
    vocab = (meta.get("model_config") or {}).get("vocab_size")
    if isinstance(vocab, int) and tok.vocab_size > vocab:
        raise CheckpointError(f"{ckpt}: the tokenizer {path} has {tok.vocab_size} tokens, more than the model's "
                              f"vocabulary of {vocab}; is this the model's tokenizer?")
    template = tok.chat_template if tok.chat_template is not None else DEFAULT_CHAT_TEMPLATE
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    files = _tokenizer_files(path, directory, template) if read_files else None
    return ExportTokenizer(path, directory, template, files)


_TOKENIZER_MAIN_FILES = ("tokenizer.json", "tokenizer.model")


def _tokenizer_files(path: str, directory: str, template: str) -> dict[str, bytes]:
    """The tokenizer files of ``path`` (a directory, or a tokenizer.json / SentencePiece .model
    file, written under its standard name), ``tokenizer_config.json`` carrying ``template`` as
    its (default) ``chat_template``. A ``chat_template.jinja`` is left out: transformers would
    prefer it to the config's template."""
    from rmr1_jax.checkpoint.hf_layout import TOKENIZER_FILES

    files = {}
    for name in TOKENIZER_FILES:
        f = os.path.join(directory, name)
        if os.path.isfile(f):
            with open(f, "rb") as fh:
                files[name] = fh.read()
    if not os.path.isdir(path):
        with open(path, "rb") as fh:
            files[_TOKENIZER_MAIN_FILES[0] if path.endswith(".json") else _TOKENIZER_MAIN_FILES[1]] = fh.read()
    files.pop("chat_template.jinja", None)
    config = json.loads(files.get("tokenizer_config.json", b"{}").decode("utf-8"))
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory}/tokenizer_config.json: not a JSON object")
    named = config.get("chat_template")
    if isinstance(named, list):  # named templates: the default one replaced, the others kept
        named = [t for t in named if not (isinstance(t, dict) and t.get("name") == "default")]
        config["chat_template"] = [{"name": "default", "template": template}, *named]
    elif isinstance(named, dict):
        config["chat_template"] = {**named, "default": template}
    else:
        config["chat_template"] = template
    files["tokenizer_config.json"] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return files
