"""Pytree helpers of checkpointing: leaf paths as strings (``opt_state/0/mu/...``), the
layer layout of a parameter tree (scanned or unrolled), restore targets
(:func:`abstract_like`), and the short one-line texts checkpoint errors quote."""

from __future__ import annotations

import json
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Sharding

SCANNED = "scanned"
UNROLLED = "unrolled"
_LAYER_RE = re.compile(r"layers_\d+$")

# How many offending keys an error message lists before eliding the rest (it stays one line).
_MAX_KEYS_IN_MESSAGE = 4


def _key_str(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _path_str(path) -> str:
    """``opt_state/0/mu/layers/...``. Named-tuple fields (``GetAttrKey``) and dict keys print the
    same, because Orbax stores named tuples as dicts: the saved tree and a target then agree."""
    return "/".join(_key_str(p) for p in path)


def flat(tree) -> dict[str, Any]:
    return {_path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def short_list(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f" (+{more} more)" if more > 0 else "")


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def layout_of(params) -> str | None:
    """``scanned`` when layers are stacked under ``layers``, ``unrolled`` for ``layers_<i>``."""
    if not isinstance(params, dict):
        return None
    if "layers" in params:
        return SCANNED
    if any(_LAYER_RE.match(str(k)) for k in params):
        return UNROLLED
    return None


def json_ready(name: str, value):
    """Fail in the caller's thread: a value that is not JSON would otherwise only surface as an
    exception in Orbax's background writer, after the training step moved on."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint item {name!r} is not JSON-serializable: {e}") from None
    return value


def abstract_like(tree, shardings=None):
    """A restore target: ``tree`` with every array replaced by a :class:`jax.ShapeDtypeStruct`.

    ``shardings`` is a pytree matching ``tree`` (or one :class:`~jax.sharding.Sharding` for all
    arrays); without it each jax array keeps its own sharding. Restoring onto a different mesh
    is exactly "pass the new mesh's shardings here". Numpy arrays without a sharding restore as
    numpy arrays; Python scalars and strings are kept as they are (Orbax restores them as that
    type).
    """

    def leaf(x, sharding):
        if isinstance(x, (jax.ShapeDtypeStruct, jax.Array)):
            if sharding is None:
                sharding = getattr(x, "sharding", None)
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        if isinstance(x, (np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return x

    if shardings is None or isinstance(shardings, Sharding):
        return jax.tree.map(lambda x: leaf(x, shardings), tree)
    return jax.tree.map(leaf, tree, shardings)
