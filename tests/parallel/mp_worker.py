"""One process of the two-process test (run by test_multiprocess.py, not by pytest)."""

import json
import os
import sys

import numpy as np


def main():
    hf_dir, out_dir, result_path = sys.argv[1:4]
    from rmr1_jax.parallel.mesh import initialize_distributed

    initialize_distributed()
    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    import rmr1_jax as rj
    from rmr1_jax.parallel import activation_sharding, make_mesh

    assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(), jax.device_count())
    mesh = make_mesh((2, 2, 2))
    model, params = rj.load_hf(hf_dir, mesh=mesh)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.cfg.vocab_size, size=(4, 12)).astype(np.int32)
    f = jax.jit(lambda p, x: model.apply({"params": p}, x))
    with activation_sharding(mesh):
        logits = f(params, jnp.asarray(ids))
    full = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
    rj.save_hf(model, params, out_dir, dtype="float32")
    multihost_utils.sync_global_devices("saved")
    if jax.process_index() == 0:
        with open(result_path, "w") as fh:
            json.dump({"ids": ids.tolist(), "logits": full.tolist()}, fh)


if __name__ == "__main__":
    main()
