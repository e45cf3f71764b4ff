"""`shard_data`: data-parallel placement of bilevel data with `jax.sharding`.

bilevax has no distributed code of its own: its loops are `jit`-compiled JAX, so
with the data's sample axis sharded across devices (and the variables replicated)
XLA partitions every loss, gradient and Hessian-vector product over the devices and
inserts the reductions. `shard_data` only places the data.
"""

import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._problem import BilevelData, as_data, num_samples


def shard_data(data, mesh: Mesh | None = None, axis: str = "data"):
    """Shard the leading (sample) axis of every data leaf across devices.

    **Arguments:**

    - `data`: `(inner_data, outer_data)` or a `BilevelData` (pytrees of arrays with
      a common leading sample axis per level; `None` levels stay `None`). With
      several processes (`jax.distributed.initialize`), each process passes its
      own rows: the global arrays are the processes' rows in process order.
    - `mesh`: a `jax.sharding.Mesh` with an axis named `axis`; default a 1-D mesh
      over `jax.devices()` (all devices of all processes).
    - `axis`: the mesh axis the samples are split over.

    **Returns:** a `BilevelData` of global `jax.Array`s sharded as
    `PartitionSpec(axis)`. The numbers of samples must divide evenly: pad or drop
    samples first.

    Pass it as `data` to `hypergradient` or to an algorithm's `run` under
    `jax.jit`; keep `x0` and `y0` replicated (plain arrays are). Results equal the
    single-device ones up to the order of floating-point reductions.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> data = bx.bilevel.shard_data((jnp.ones((8, 3)), jnp.ones((4, 3))))
    >>> data.inner.sharding.spec == jax.sharding.PartitionSpec("data")
    True

    ```
    """
    data = as_data(data)
    if mesh is None:
        mesh = Mesh(np.array(jax.devices()), (axis,))
    if axis not in mesh.axis_names:
        raise ValueError(f"`mesh` has no axis {axis!r}; its axes: {mesh.axis_names}.")
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    devices = mesh.shape[axis]
    processes = jax.process_count()

    def place(level, name):
        n = num_samples(level, name)
        if n is None:  # `None`, or no arrays in this level
            return level
        if (n * processes) % devices:
            raise ValueError(
                f"The {n * processes} `{name}` samples do not split evenly over the "
                f"{devices} devices of the mesh's {axis!r} axis: pad or drop samples."
            )
        if processes == 1:
            return jax.device_put(level, sharding)
        return jtu.tree_map(
            lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
            level,
        )

    return BilevelData(place(data.inner, "inner"), place(data.outer, "outer"))
