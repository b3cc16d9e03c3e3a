from rmr1_jax.parallel.mesh import MeshConfig, initialize_distributed, make_mesh
from rmr1_jax.parallel.sharding import (
    DEFAULT_RULES,
    activation_sharding,
    axis_rules,
    constrain,
    logical_to_spec,
    merge_rules,
    named_sharding,
    tree_shardings,
)
