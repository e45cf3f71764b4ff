"""Small pytree helpers shared by the implicit engine."""

import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree


def tree_dot(a: PyTree[Array], b: PyTree[Array]) -> Array:
    """`Σ_leaves ⟨a, b⟩` (real inner product)."""
    leaves = jtu.tree_leaves(jtu.tree_map(lambda x, y: jnp.vdot(x, y).real, a, b))
    return sum(leaves[1:], leaves[0]) if leaves else jnp.zeros(())


def tree_norm(a: PyTree[Array]) -> Array:
    """Euclidean norm of all leaves together."""
    return jnp.sqrt(tree_dot(a, a))


def tree_axpy(a: Array | float, x: PyTree[Array], y: PyTree[Array]) -> PyTree[Array]:
    """`y + a·x` leaf by leaf."""
    return jtu.tree_map(lambda u, v: v + a * u, x, y)


def same_shapes(a: PyTree, b: PyTree) -> bool:
    """`True` when `a` and `b` have the same pytree structure and leaf shapes
    (arrays or `jax.ShapeDtypeStruct`s)."""
    return jtu.tree_structure(a) == jtu.tree_structure(b) and all(
        jnp.shape(u) == jnp.shape(v)
        for u, v in zip(jtu.tree_leaves(a), jtu.tree_leaves(b), strict=True)
    )


def tree_all_finite(a: PyTree[Array]) -> Array:
    """`True` when no leaf holds a NaN or an infinity."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(a)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def tree_all_bounded(a: PyTree[Array]) -> Array:
    """`True` when every leaf is below `√max` of its dtype in magnitude (so that its
    square, hence any quadratic loss of it, is finite): a stricter test of
    divergence than `tree_all_finite`, which catches an iterate growing
    geometrically before it overflows."""
    leaves = [
        jnp.all(jnp.abs(x) < jnp.sqrt(jnp.finfo(jnp.result_type(x)).max))
        for x in jtu.tree_leaves(a)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
