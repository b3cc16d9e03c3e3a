"""Local and remote paths. Every local path a user gives (run directories, checkpoint
directories, data files, converter outputs) is taken relative to the current directory and
made absolute once, where a job starts: Orbax needs absolute checkpoint paths, and a saved run
config then still names the right files when a checkpoint is read from another directory.
Remote paths (``gs://...`` and any other ``scheme://``) are left as they are."""

from __future__ import annotations

import dataclasses
import os

# Marks a config field as a path (or a list of paths), made absolute by :func:`resolve_paths`.
PATH = {"path": True}


def is_remote(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str | None) -> str | None:
    """``path`` made absolute against the current directory (``~`` expanded); remote paths and
    ``None`` unchanged."""
    if path is None or path == "" or is_remote(path):
        return path
    return os.path.abspath(os.path.expanduser(str(path)))


def path_field(default=None):
    """A dataclass field holding a local-or-remote path (``str | None``)."""
    return dataclasses.field(default=default, metadata=PATH)


def paths_field():
    """A dataclass field holding a list of paths."""
    return dataclasses.field(default_factory=list, metadata=PATH)


def resolve_paths(obj):
    """A copy of the (nested) config dataclass ``obj`` whose path fields are absolute."""
    changes = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            changes[f.name] = resolve_paths(v)
        elif f.metadata.get("path"):
            if isinstance(v, (list, tuple)):
                changes[f.name] = type(v)(resolve(p) for p in v)
            else:
                changes[f.name] = resolve(v)
    return dataclasses.replace(obj, **changes) if changes else obj
