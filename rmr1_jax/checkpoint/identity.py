"""Which model a checkpoint path holds, in one short string, without reading its weights: for
the fingerprint of an output a model produced (a resumed scoring run must use the same one)."""

from __future__ import annotations

import hashlib
import os


def checkpoint_identity(path: str, step: int | None = None) -> str:
    """``<real path>@<step>`` of an Orbax checkpoint directory (``step``: default the latest),
    or ``<real path>#<digest>`` of a Hugging Face directory, the digest over its config.json and
    the names and sizes of its weight files (so new weights written to the same directory read
    as another model)."""
    real = os.path.realpath(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        h = hashlib.sha256()
        with open(os.path.join(path, "config.json"), "rb") as f:
            h.update(f.read())
        for name in sorted(os.listdir(path)):
            if name.endswith((".safetensors", ".bin", ".pt", ".pth")):
                h.update(f"{name}:{os.path.getsize(os.path.join(path, name))}".encode())
        return f"{real}#{h.hexdigest()[:16]}"
    from rmr1_jax.checkpoint.manager import CheckpointManager

    with CheckpointManager(path, read_only=True) as mgr:
        return f"{real}@{mgr.resolve_step(step)}"


def text_digest(text: str | None) -> str | None:
    """A short digest of a text (a template, a rule pool) for a fingerprint; None stays None."""
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
