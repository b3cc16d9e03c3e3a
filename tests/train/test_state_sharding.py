"""The optimizer state is laid out like the parameters it tracks: Adam's moments of an
fsdp-sharded parameter are sharded the same way (left to the compiler they come out
replicated, three full model copies on every device)."""

import jax
import numpy as np

from rmr1_jax.checkpoint.loading import load_model
from rmr1_jax.parallel.mesh import MeshConfig, make_mesh
from rmr1_jax.schema import OptimSpec
from rmr1_jax.train.loop import init_state
from rmr1_jax.train.optim import make_optimizer


def test_adam_moments_follow_parameter_shardings():
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    _, params = load_model("tiny", "lm", mesh=mesh, kind="preset")
    optimizer, _ = make_optimizer(OptimSpec(), 10)
    state = init_state(params, optimizer)
    adam = state["opt_state"][1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    p_specs = jax.tree.leaves(jax.tree.map(lambda x: x.sharding.spec, params))
    sharded = [s for s in p_specs if any(a is not None for a in s)]
    assert len(sharded) >= 5  # the test means something only if parameters are sharded
    for moment in (adam.mu, adam.nu):
        assert jax.tree.leaves(jax.tree.map(lambda x: x.sharding.spec, moment)) == p_specs
        per_device = sum(np.prod(x.sharding.shard_shape(x.shape)) for x in jax.tree.leaves(moment))
        total = sum(x.size for x in jax.tree.leaves(moment))
        assert per_device < total / 2
    assert state["step"].sharding.is_fully_replicated
    assert adam.count.sharding.is_fully_replicated
