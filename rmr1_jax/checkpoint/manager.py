"""Training checkpoints: a thin manager over :class:`orbax.checkpoint.CheckpointManager`.

One checkpoint step is a directory holding up to four Orbax items:

* ``state``    -- the training pytree (params, optimizer state, step ...), written as sharded
  arrays by every process (Orbax coordinates multi-host writes; nothing here special-cases
  process 0);
* ``metadata`` -- JSON: ``format_version``, ``layer_layout`` (``"scanned"``/``"unrolled"``),
  ``model_config`` and whatever else the caller adds;
* ``config``   -- JSON: the resolved run config (only when given);
* ``extra``    -- JSON: other small state, e.g. the data iterator position (only when given);
* ``source``   -- arrays a batch source holds between steps (GRPO's rollout mini-batches not yet
  trained on, when a save falls inside a rollout), as global arrays (only when given).

Why a wrapper and not Orbax directly: the trainer, the evaluator and export all need the same
handful of policies, and each is easy to get subtly wrong --

* saves are asynchronous by default and a step that was interrupted mid-write never becomes
  "latest" (Orbax writes into a temporary directory and renames it on commit; leftovers are
  removed when a writable manager is opened);
* an existing step is never overwritten, and saying so is an error, not a silent no-op;
* every failure a user can cause (missing directory, absent step, a target that does not match
  what was saved) is a one-line :class:`~rmr1_jax.errors.CheckpointError` that names the
  directory, step and key;
* :func:`rmr1_jax.checkpoint.reading.restore_params` loads only the parameters onto any mesh
  and converts between the scanned and unrolled layer layouts, so a checkpoint does not pin
  the parallelism or the ``scan_layers`` choice of the run that wrote it.

Usage: ``ckpt.save(step, state, ...)``, ``ckpt.restore(target=abstract_like(state, shardings))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rmr1_jax.errors import CheckpointError, ConfigError
from rmr1_jax.checkpoint.trees import first_line, flat, json_ready, layout_of, short_list
from rmr1_jax.paths import resolve

FORMAT_VERSION = 1

STATE_ITEM = "state"
METADATA_ITEM = "metadata"
CONFIG_ITEM = "config"
EXTRA_ITEM = "extra"
SOURCE_ITEM = "source"
_JSON_ITEMS = (CONFIG_ITEM, EXTRA_ITEM, METADATA_ITEM)
_single_replica_saves = False


def _save_cpu_arrays_from_one_replica() -> None:
    """On CPU devices, each array is written from one replica, not sliced across them.

    Orbax's default (replica-parallel saving) has every replica of a replicated array write a
    slice of it, cut by a jitted slice per array, replica and shape: the first save of each
    process compiles hundreds of them (about 4 CPU-seconds and 16 s of wall time for the demo
    model on 8 CPU devices, against 0.1 s without). CPU devices share the host's memory, so the
    slices buy nothing there; what is written (the files and their layout) is the same either
    way. Accelerators keep Orbax's default."""
    global _single_replica_saves
    if _single_replica_saves or jax.default_backend() != "cpu":
        return
    _single_replica_saves = True
    try:  # Orbax internals (orbax-checkpoint 0.12): where they differ, Orbax's default stays
        from orbax.checkpoint._src.metadata.array_metadata_store import Store
        from orbax.checkpoint._src.serialization.type_handler_registry import GLOBAL_TYPE_HANDLER_REGISTRY

        # Orbax's own default handler, but for the replica slices; added quietly (no override warning)
        GLOBAL_TYPE_HANDLER_REGISTRY.add(
            jax.Array, ocp.type_handlers.ArrayHandler(array_metadata_store=Store(), use_replica_parallel=False),
            override=True, ignore_warnings=True)
    except (ImportError, AttributeError, TypeError):
        pass


@dataclasses.dataclass
class Restored:
    """One restored checkpoint step. JSON items that were not saved come back as ``None``."""

    step: int
    state: Any
    config: dict | None
    extra: dict | None
    metadata: dict


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Handlers for every item, registered up front.

    Registering them (rather than letting Orbax infer them from the first save) lets a fresh
    manager read item metadata before restoring, which is how targets are validated. The
    ``state`` item also accepts ``PyTreeRestore``: the on-disk format is the same as
    ``StandardSave``'s, and only ``PyTreeRestore`` can restore a subtree (``partial_restore``),
    which :func:`restore_params` needs to avoid loading the optimizer state.
    """
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    standard = ocp.StandardCheckpointHandler()
    registry.add(STATE_ITEM, ocp.args.StandardSave, standard)
    registry.add(STATE_ITEM, ocp.args.StandardRestore, standard)
    registry.add(STATE_ITEM, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler())
    source = ocp.StandardCheckpointHandler()
    registry.add(SOURCE_ITEM, ocp.args.StandardSave, source)
    registry.add(SOURCE_ITEM, ocp.args.StandardRestore, source)
    for name in _JSON_ITEMS:
        handler = ocp.JsonCheckpointHandler()
        registry.add(name, ocp.args.JsonSave, handler)
        registry.add(name, ocp.args.JsonRestore, handler)
    return registry


class CheckpointManager:
    """Saves and restores training state, keeping the newest ``max_to_keep`` steps.

    Call every method on every process of a multi-host job (Orbax synchronizes them). Not
    thread-safe, and not for two jobs writing one directory: an evaluator that reads a
    directory a trainer is writing must open it with ``read_only=True``, which neither
    creates, cleans up nor deletes anything.

    Args:
      directory: local path (relative to the current directory) or any path :mod:`etils.epath`
        understands (``gs://...``).
      max_to_keep: steps kept on disk; older ones are deleted after a newer save commits.
        ``None`` keeps all.
      save_interval_steps: :meth:`save` writes steps that are a multiple of this, the
        first save into an empty directory, and any step at which a preemption notice arrived
        (Orbax's default policy); other calls return ``False`` unless ``force``. A trainer can
        therefore call it every step.
      async_save: :meth:`save` returns once Orbax has snapshotted the arrays and the write
        runs in a background thread, so training continues during I/O. The next save,
        :meth:`restore`, :meth:`wait_until_finished` and :meth:`close` wait for it.
      read_only: open an existing directory for restoring only.
    """

    def __init__(self, directory: str, *, max_to_keep: int | None = 3, save_interval_steps: int = 1,
                 async_save: bool = True, read_only: bool = False):
        self.directory = epath.Path(resolve(str(directory)))  # Orbax needs absolute local paths
        self.read_only = read_only
        self._existed = self.directory.exists()
        if read_only and not self._existed:
            raise CheckpointError(f"{self.directory}: checkpoint directory does not exist")
        if max_to_keep is not None and max_to_keep < 1:
            raise ConfigError(f"checkpoint max_to_keep={max_to_keep}: must be >= 1 or None (keep all)")
        if save_interval_steps < 1:
            raise ConfigError(f"checkpoint save_interval_steps={save_interval_steps}: must be >= 1")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else save_interval_steps,
            enable_async_checkpointing=async_save,
            # Removes temporary directories of saves that were interrupted before they
            # committed; they are never visible as steps, this only reclaims the space.
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        if not read_only:
            _save_cpu_arrays_from_one_replica()
        self._mngr = ocp.CheckpointManager(self.directory, options=options, handler_registry=_handler_registry())
        self._closed = False

    # --- queries --------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Committed steps, plus the one being written asynchronously (if any), ascending."""
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def reload(self) -> None:
        """Re-read the step list from storage (for a reader polling a directory another job writes)."""
        self._mngr.reload()

    # --- save -----------------------------------------------------------------------------

    def save(self, step: int, state, *, config: dict | None = None, extra: dict | None = None,
             metadata: dict | None = None, source=None, force: bool = False) -> bool:
        """Start saving ``state`` (and the JSON items) as ``step``. Returns whether a save started.

        Returns ``False`` when ``step`` is not newer than the latest step, or is off the
        ``save_interval_steps`` schedule (see the class docstring); ``force=True`` saves anyway. Saving a step that
        already exists raises: overwriting a committed checkpoint is never what a resumed run
        wants, and silently skipping it would hide a step-counter bug.

        ``metadata`` is merged over the defaults ``{"format_version": 1, "layer_layout": ...,
        "model_config": None}``; ``layer_layout`` is inferred from ``state["params"]`` (or
        ``state`` itself) and ``model_config`` may be a :class:`~rmr1_jax.models.config.ModelConfig`.
        ``source``: a pytree of global arrays saved as the ``source`` item (read back by
        :meth:`restore_source`).
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory}: cannot save step {step}, the manager was opened read-only")
        if step in self._mngr.all_steps():
            raise CheckpointError(f"{self.directory}: step {step} already exists; refusing to overwrite it")
        args = {
            STATE_ITEM: ocp.args.StandardSave(state),
            METADATA_ITEM: ocp.args.JsonSave(json_ready(METADATA_ITEM, self._build_metadata(state, metadata))),
        }
        # Items that are None are not written at all (JSON ``null`` is not a valid item);
        # restore reports them as None by checking which items the step holds.
        if config is not None:
            args[CONFIG_ITEM] = ocp.args.JsonSave(json_ready(CONFIG_ITEM, config))
        if extra is not None:
            args[EXTRA_ITEM] = ocp.args.JsonSave(json_ready(EXTRA_ITEM, extra))
        if source:
            args[SOURCE_ITEM] = ocp.args.StandardSave(source)
        try:
            return self._mngr.save(step, args=ocp.args.Composite(**args), force=force)
        except ocp.checkpoint_manager.StepAlreadyExistsError:
            raise CheckpointError(
                f"{self.directory}: step {step} already exists; refusing to overwrite it") from None

    @staticmethod
    def _build_metadata(state, metadata: dict | None) -> dict:
        params = state.get("params", state) if isinstance(state, dict) else getattr(state, "params", None)
        out = {"format_version": FORMAT_VERSION, "layer_layout": layout_of(params), "model_config": None}
        for key, value in (metadata or {}).items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = dataclasses.asdict(value)
            out[key] = value
        out["format_version"] = FORMAT_VERSION  # describes this writer; a caller cannot change it
        return out

    # --- restore --------------------------------------------------------------------------

    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"{self.directory}: no checkpoint found ({self._why_no_steps()})")
            return steps[-1]
        if step not in steps:
            have = ", ".join(map(str, steps)) if steps else "none"
            raise CheckpointError(f"{self.directory}: no checkpoint for step {step} (available steps: {have})")
        return step

    def _why_no_steps(self) -> str:
        """What a reader finds missing: a command that takes a checkpoint also takes a Hugging
        Face directory, and a training run's directory holds its checkpoints one level down."""
        if not self._existed:
            return "directory does not exist"
        why = "no committed step in it"
        if not (self.directory / "config.json").exists():
            why += ", and no config.json: neither an Orbax checkpoint nor a Hugging Face model directory"
        if (self.directory / "checkpoints").is_dir():
            why += f"; a training run keeps its checkpoints in {self.directory / 'checkpoints'}"
        return why

    def _items(self, step: int) -> dict[str, Any]:
        """Item name -> Orbax item metadata (a ``TreeMetadata`` for ``state``) of one step."""
        try:
            return dict(self._mngr.item_metadata(step).items())
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{self.directory} step {step}: unreadable checkpoint ({first_line(e)})") from e

    def _saved_state_tree(self, step: int, items: dict[str, Any]):
        if STATE_ITEM not in items:
            raise CheckpointError(f"{self.directory} step {step}: checkpoint has no {STATE_ITEM!r} item")
        meta = items[STATE_ITEM]
        return getattr(meta, "tree", meta)

    def _check_target(self, step: int, saved_tree, target, prefix: str = "") -> None:
        """Compare key paths and shapes before Orbax sees the target: its own mismatch errors are
        multi-screen tree dumps, or (for shapes) sharding errors that do not name the key.
        Dtypes may differ on purpose (Orbax casts, e.g. float32 -> bfloat16)."""
        where = f"{self.directory} step {step}"
        saved = flat(saved_tree)
        wanted = flat(target)
        pre = f"{prefix}/" if prefix else ""
        missing = set(wanted) - set(saved)
        if missing:
            raise CheckpointError(
                f"{where}: target keys not in the checkpoint: {short_list(pre + k for k in missing)}")
        unexpected = set(saved) - set(wanted)
        if unexpected:
            raise CheckpointError(
                f"{where}: checkpoint keys missing from the target: {short_list(pre + k for k in unexpected)}")
        for key, leaf in wanted.items():
            want_shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
            have_shape = getattr(saved[key], "shape", None)
            if have_shape is not None and tuple(have_shape) != want_shape:
                raise CheckpointError(
                    f"{where}: {pre}{key} has shape {tuple(have_shape)} in the checkpoint "
                    f"but {want_shape} in the target")

    def restore(self, step: int | None = None, *, target=None) -> Restored:
        """Restore ``step`` (default: the latest committed one).

        ``target`` is a pytree of :class:`jax.ShapeDtypeStruct` with ``.sharding`` set (see
        :func:`abstract_like`): arrays are read straight into those shardings, so a checkpoint
        written on one mesh restores onto any other. With ``target=None`` the state comes back
        with the shardings it was saved with, which needs the same devices (single-host
        convenience); named tuples then come back as dicts/lists.
        """
        step = self._resolve_step(step)
        # The step may be this manager's own save still being written: let it commit first.
        self._mngr.wait_until_finished()
        items = self._items(step)
        saved_tree = self._saved_state_tree(step, items)
        if target is not None:
            self._check_target(step, saved_tree, target)
        args = {STATE_ITEM: ocp.args.StandardRestore(target)}
        args.update({name: ocp.args.JsonRestore() for name in _JSON_ITEMS if name in items})
        out = self._run_restore(step, args)
        metadata = out.get(METADATA_ITEM) or {}
        return Restored(step=step, state=out[STATE_ITEM], config=out.get(CONFIG_ITEM),
                        extra=out.get(EXTRA_ITEM), metadata=dict(metadata))

    def restore_source(self, step: int, sharding_for) -> Any:
        """The ``source`` item of ``step`` (``None`` when the step has none), every array read
        into ``sharding_for(shape)``."""
        step = self._resolve_step(step)
        self._mngr.wait_until_finished()
        items = self._items(step)
        if items.get(SOURCE_ITEM) is None:
            return None
        saved = getattr(items[SOURCE_ITEM], "tree", items[SOURCE_ITEM])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(tuple(a.shape), a.dtype,
                                                             sharding=sharding_for(tuple(a.shape))), saved)
        return self._run_restore(step, {SOURCE_ITEM: ocp.args.StandardRestore(target)})[SOURCE_ITEM]

    def _run_restore(self, step: int, args: dict) -> dict:
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(**args))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{self.directory} step {step}: restore failed ({first_line(e)})") from e
        return {name: out[name] for name in args}

    def _saved_subtree(self, step: int, items: dict[str, Any], key: str):
        """Metadata of ``state[key]`` (``key`` may be a ``/`` path such as ``params/decoder``)."""
        node = self._saved_state_tree(step, items)
        parts = key.split("/")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise CheckpointError(
                    f"{self.directory} step {step}: no key {'/'.join(parts[:i + 1])!r} in the saved state")
            node = node[part]
        return node

    def _read_metadata(self, step: int, items: dict[str, Any]) -> dict:
        if METADATA_ITEM not in items:
            return {}
        return dict(self._run_restore(step, {METADATA_ITEM: ocp.args.JsonRestore()})[METADATA_ITEM] or {})

    def _restore_subtree(self, step: int, items: dict[str, Any], key: str, target):
        """Restore only ``state[key]`` into ``target``; the rest of the state (the optimizer
        moments are twice the parameters for Adam) is never read."""
        self._check_target(step, self._saved_subtree(step, items, key), target, prefix=key)
        parts = key.split("/")
        wrapped = target
        for part in reversed(parts):
            wrapped = {part: wrapped}
        args = {STATE_ITEM: ocp.args.PyTreeRestore(
            item=wrapped, restore_args=ocp.checkpoint_utils.construct_restore_args(wrapped), partial_restore=True)}
        sub = self._run_restore(step, args)[STATE_ITEM]
        for part in parts:
            sub = sub[part]
        return sub

    # --- reading parts of a step (for readers that have no training state to restore into) ---

    def resolve_step(self, step: int | None = None) -> int:
        """``step`` if it is committed (default: the latest committed step); else CheckpointError."""
        return self._resolve_step(step)

    def saved_tree(self, step: int, key: str):
        """Orbax's metadata (shapes and dtypes, no values) of ``state[key]`` (a ``/`` path)."""
        return self._saved_subtree(step, self._items(step), key)

    def read_metadata(self, step: int) -> dict:
        """The metadata item of ``step`` ({} when it has none)."""
        return self._read_metadata(step, self._items(step))

    def read_config(self, step: int) -> dict | None:
        """The run config saved with ``step``, or None."""
        if CONFIG_ITEM not in self._items(step):
            return None
        return self._run_restore(step, {CONFIG_ITEM: ocp.args.JsonRestore()})[CONFIG_ITEM]

    def restore_subtree(self, step: int, key: str, target):
        """Only ``state[key]`` of ``step``, read into ``target`` (see :meth:`_restore_subtree`)."""
        return self._restore_subtree(step, self._items(step), key, target)

    # --- lifecycle ------------------------------------------------------------------------

    def wait_until_finished(self) -> None:
        """Block until a pending asynchronous save has committed (and old steps are pruned)."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves, then release Orbax's threads. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._mngr.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
