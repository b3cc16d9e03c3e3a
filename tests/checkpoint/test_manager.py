"""Checkpoint manager: resharding restore, JSON items, retention, crash safety of async saves,
layer-layout conversion and the errors a user can cause."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from rmr1_jax.checkpoint.manager import CheckpointManager, Restored
from rmr1_jax.checkpoint.trees import abstract_like
from rmr1_jax.checkpoint.reading import restore_params
from rmr1_jax.errors import CheckpointError
from rmr1_jax.models import DecoderLM, init_params, param_shardings, preset
from rmr1_jax.models.params import stack_layers, unstack_layers
from rmr1_jax.parallel import make_mesh

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cfg():
    return preset("tiny")


@pytest.fixture(scope="module")
def mesh_8():
    return make_mesh((8, 1, 1))


@pytest.fixture(scope="module")
def mesh_124():
    return make_mesh((1, 2, 4))


@pytest.fixture(scope="module")
def params(cfg, mesh_8):
    """Scanned-layout tiny decoder parameters, sharded on the (8, 1, 1) mesh."""
    return init_params(DecoderLM(cfg), jax.random.key(0), mesh_8)


def _assert_trees_equal(a, b):
    """Same structure and bit-identical leaves."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        assert np.array_equal(x, y), jax.tree_util.keystr(path)


def _assert_shardings(tree, shardings):
    for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings)):
        assert x.sharding == s, f"{jax.tree_util.keystr(path)}: {x.sharding} != {s}"


def test_restore_onto_another_mesh_is_bit_identical(tmp_path, cfg, params, mesh_124):
    tx = optax.adamw(1e-3)
    # One update so the Adam moments and count hold non-trivial values.
    grads = jax.jit(lambda ps: jax.tree.map(lambda p: jnp.sin(p) + 0.1, ps))(params)
    _, opt_state = jax.jit(tx.update)(grads, tx.init(params), params)
    state = {"params": params, "opt_state": opt_state, "step": 7}

    with CheckpointManager(str(tmp_path)) as mgr:
        assert mgr.save(7, state)
    assert CheckpointManager(str(tmp_path)).all_steps() == [7]

    p_shardings = param_shardings(params, mesh_124)
    replicated = NamedSharding(mesh_124, PartitionSpec())
    target = {
        "params": abstract_like(params, p_shardings),
        "opt_state": optax.tree_map_params(
            tx, lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), opt_state, p_shardings,
            transform_non_params=lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)),
        "step": 0,
    }
    restored = CheckpointManager(str(tmp_path)).restore(target=target)

    assert isinstance(restored, Restored) and restored.step == 7 and restored.state["step"] == 7
    _assert_trees_equal(restored.state["params"], params)
    _assert_trees_equal(restored.state["opt_state"], opt_state)  # named tuples survive with a target
    _assert_shardings(restored.state["params"], p_shardings)
    _assert_shardings(restored.state["opt_state"], jax.tree.map(lambda s: s.sharding, target["opt_state"]))
    # The new layout really differs from the saved one (tensor/fsdp-sharded, not data-sharded).
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(restored.state["params"])}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)
    assert restored.metadata["layer_layout"] == "scanned"


def test_json_items_round_trip_and_keep_n(tmp_path, cfg):
    config = {"train": {"lr": 1e-5, "steps": 3}, "tags": ["a", "b"]}
    with CheckpointManager(str(tmp_path), max_to_keep=2) as mgr:
        for step in (1, 2, 3):
            state = {"params": {"layers": {"w": jnp.full((2, 3), float(step))}}}
            extra = {"data": {"epoch": 0, "position": step * 10}} if step == 3 else None
            assert mgr.save(step, state, config=config if step == 3 else None, extra=extra,
                            metadata={"model_config": cfg, "note": f"step {step}"})
            assert mgr.all_steps()[-1] == step  # an in-flight save is already listed
        mgr.wait_until_finished()

    mgr = CheckpointManager(str(tmp_path), max_to_keep=2)
    assert mgr.all_steps() == [2, 3] and mgr.latest_step() == 3
    assert sorted(n for n in os.listdir(tmp_path) if n.isdigit()) == ["2", "3"]  # step 1 deleted from disk

    latest = mgr.restore()
    assert latest.step == 3
    assert latest.config == config
    assert latest.extra == {"data": {"epoch": 0, "position": 30}}
    assert latest.metadata["format_version"] == 1
    assert latest.metadata["layer_layout"] == "scanned"
    assert latest.metadata["note"] == "step 3"
    assert latest.metadata["model_config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))
    np.testing.assert_array_equal(latest.state["params"]["layers"]["w"], np.full((2, 3), 3.0, np.float32))

    older = mgr.restore(2)  # saved without config/extra: they come back as None
    assert older.step == 2 and older.config is None and older.extra is None
    np.testing.assert_array_equal(older.state["params"]["layers"]["w"], np.full((2, 3), 2.0, np.float32))

    # Never overwrite: an existing step is an error; an older, absent step is skipped.
    with pytest.raises(CheckpointError, match=r"step 3 already exists"):
        mgr.save(3, {"params": {"layers": {"w": jnp.zeros((2, 3))}}})
    assert mgr.save(1, {"params": {"layers": {"w": jnp.zeros((2, 3))}}}) is False
    mgr.close()
    np.testing.assert_array_equal(CheckpointManager(str(tmp_path)).restore(3).state["params"]["layers"]["w"],
                                  np.full((2, 3), 3.0, np.float32))


def test_save_interval_and_sync_mode(tmp_path):
    with CheckpointManager(str(tmp_path), save_interval_steps=5, async_save=False) as mgr:
        started = [mgr.save(s, {"x": jnp.arange(3) + s}) for s in range(1, 11)]
        assert mgr.save(12, {"x": jnp.arange(3)}, force=True)
    # the first save of an empty directory, then the multiples of 5, then the forced one
    assert [s for s, ok in zip(range(1, 11), started) if ok] == [1, 5, 10]
    assert CheckpointManager(str(tmp_path)).all_steps() == [5, 10, 12]  # max_to_keep=3


_CRASHING_SAVER = textwrap.dedent("""
    import os, sys
    import jax, jax.numpy as jnp
    from rmr1_jax.checkpoint.manager import CheckpointManager

    directory = sys.argv[1]
    mgr = CheckpointManager(directory)
    mgr.save(1, {"w": jnp.arange(8.0)})
    mgr.wait_until_finished()
    big = {f"a{i}": jnp.full((2000, 2000), float(i)) for i in range(12)}  # ~190 MB
    jax.block_until_ready(big)
    started = mgr.save(2, big)
    committed = os.path.isdir(os.path.join(directory, "2"))
    print(f"started={started} committed={committed}", flush=True)
    os._exit(1)  # simulated crash / preemption: no wait, no close
""")


def test_interrupted_async_save_never_becomes_latest(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = ""  # one device is enough here
    proc = subprocess.run([sys.executable, "-c", _CRASHING_SAVER, str(tmp_path)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    # The save of step 2 had started and had not committed when the process died ...
    assert "started=True committed=False" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    # ... and left a partial write behind, which is what the restart must ignore.
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith("2")]
    assert leftovers and "2" not in leftovers

    mgr = CheckpointManager(str(tmp_path))
    assert mgr.latest_step() == 1 and mgr.all_steps() == [1]
    restored = mgr.restore()
    assert restored.step == 1
    np.testing.assert_array_equal(restored.state["w"], np.arange(8.0, dtype=np.float32))
    mgr.close()
    # Opening a writable manager reclaimed the partial write.
    assert not [n for n in os.listdir(tmp_path) if n.startswith("2")]


def test_restore_params_converts_layer_layout(tmp_path, cfg, params, mesh_124):
    unrolled = unstack_layers(params, cfg.num_hidden_layers)

    # unrolled checkpoint -> scan_layers=True model
    with CheckpointManager(str(tmp_path / "unrolled")) as mgr:
        mgr.save(1, {"params": unrolled})
    assert CheckpointManager(str(tmp_path / "unrolled")).restore().metadata["layer_layout"] == "unrolled"
    got = restore_params(str(tmp_path / "unrolled"), cfg, mesh_124)
    assert set(got) == set(params)
    _assert_trees_equal(got, params)
    _assert_shardings(got, param_shardings(params, mesh_124))

    # scanned checkpoint (with optimizer state, which is not read) -> scan_layers=False model
    tx = optax.adamw(1e-3)
    with CheckpointManager(str(tmp_path / "scanned")) as mgr:
        mgr.save(5, {"params": params, "opt_state": tx.init(params), "step": 5})
    got = restore_params(str(tmp_path / "scanned"), cfg.replace(scan_layers=False), mesh_124)
    assert set(got) == set(unrolled)
    _assert_trees_equal(got, unrolled)
    _assert_shardings(got, param_shardings(unrolled, mesh_124))

    # same layout: no conversion, still resharded
    got = restore_params(str(tmp_path / "scanned"), cfg, mesh_124, step=5)
    _assert_trees_equal(got, params)
    _assert_trees_equal(stack_layers(unstack_layers(got, cfg.num_hidden_layers)), params)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_user_errors_name_the_directory_step_and_key(tmp_path, cfg, mesh_124):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(CheckpointError) as err:
        restore_params(str(missing), cfg, mesh_124)
    assert str(missing) in _one_line(err) and "does not exist" in str(err.value)
    assert not missing.exists()  # a reader never creates directories

    with pytest.raises(CheckpointError) as err:
        CheckpointManager(str(tmp_path / "empty")).restore()
    assert str(tmp_path / "empty") in _one_line(err) and "no checkpoint" in str(err.value)

    with CheckpointManager(str(tmp_path / "ck")) as mgr:
        mgr.save(1, {"params": {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}, "step": 1})
    mgr = CheckpointManager(str(tmp_path / "ck"))

    with pytest.raises(CheckpointError) as err:
        mgr.restore(5)
    assert "step 5" in _one_line(err) and str(tmp_path / "ck") in str(err.value)
    assert "available steps: 1" in str(err.value)

    good = {"params": {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32),
                       "b": jax.ShapeDtypeStruct((2,), jnp.float32)},
            "step": 0}
    bad_shape = {**good, "params": {**good["params"], "w": jax.ShapeDtypeStruct((2, 4), jnp.float32)}}
    with pytest.raises(CheckpointError) as err:
        mgr.restore(1, target=bad_shape)
    assert "params/w" in _one_line(err) and "(4, 2)" in str(err.value) and "step 1" in str(err.value)

    missing_key = {**good, "params": {**good["params"], "extra": jax.ShapeDtypeStruct((3,), jnp.float32)}}
    with pytest.raises(CheckpointError) as err:
        mgr.restore(1, target=missing_key)
    assert "params/extra" in _one_line(err)

    with pytest.raises(CheckpointError) as err:
        mgr.restore(1, target={"params": good["params"]})
    assert "step" in _one_line(err) and "missing from the target" in str(err.value)

    restored = mgr.restore(1, target=good)  # the matching target still works
    np.testing.assert_array_equal(restored.state["params"]["w"], np.ones((4, 2), np.float32))

    with pytest.raises(CheckpointError) as err:
        restore_params(str(tmp_path / "ck"), cfg, mesh_124, key="ema_params")
    assert "'ema_params'" in _one_line(err) and "step 1" in str(err.value)

    with pytest.raises(CheckpointError) as err:  # a model config that does not match the checkpoint
        restore_params(str(tmp_path / "ck"), cfg, mesh_124)
    assert str(tmp_path / "ck") in _one_line(err)
    mgr.close()


def test_cpu_saves_write_each_array_from_one_replica(tmp_path):
    """On CPU devices a writable manager registers Orbax's array handler without replica-parallel
    slicing (whose per-slice compiles made each process's first save take seconds); a replicated
    array saved that way restores equal onto another layout."""
    registry = pytest.importorskip("orbax.checkpoint._src.serialization.type_handler_registry",
                                   reason="another Orbax layout: the manager keeps Orbax's default there")
    mesh = make_mesh()
    x = jax.device_put(jnp.arange(64, dtype=jnp.float32).reshape(8, 8), NamedSharding(mesh, PartitionSpec()))
    with CheckpointManager(str(tmp_path / "ck"), async_save=False) as mgr:
        handler = registry.GLOBAL_TYPE_HANDLER_REGISTRY.get(jax.Array)
        assert getattr(handler, "_use_replica_parallel", None) is False
        mgr.save(0, {"params": {"w": x}}, force=True)
    target = {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("data")))}
    with CheckpointManager(str(tmp_path / "ck"), read_only=True) as mgr:
        got = mgr.restore_subtree(0, "params", target)
    assert got["w"].sharding == target["w"].sharding
    np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(x))
