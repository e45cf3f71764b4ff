"""One data-parallel bilevel computation, run by tests/test_distributed.py in a
fresh interpreter: `python _distributed_worker.py OUT.npz [PROCESS_ID PORT]`.

Without a process id it runs on the devices this process sees (set
`XLA_FLAGS=--xla_force_host_platform_device_count=8` for eight CPU devices); with
one it joins a 2-process `jax.distributed` job on localhost (CPU collectives by
gloo), each process holding half of the samples. It writes the hypergradient and
the trajectories of two algorithms on the sharded data, and (single process only)
the same computed with all data on one device.
"""

import sys

import jax

if len(sys.argv) > 2:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{sys.argv[3]}",
        num_processes=2,
        process_id=int(sys.argv[2]),
    )
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import bilevax as bx  # noqa: E402

N, N_VAL, D = 64, 32, 5


def make_data():
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=D)
    Z, Z_val = rng.normal(size=(N, D)), rng.normal(size=(N_VAL, D))
    t = Z @ w_true + np.where(np.arange(N) < N // 4, 3.0, 0.0)  # a corrupted quarter
    return (Z, t, np.arange(N)), (Z_val, Z_val @ w_true)


def inner(x, w, batch):
    Zb, tb, idx = batch
    return jnp.mean(jax.nn.sigmoid(x[idx]) * (Zb @ w - tb) ** 2) + 1e-2 * w @ w


def outer(x, w, batch):
    Zb, tb = batch
    return jnp.mean((Zb @ w - tb) ** 2)


PROBLEM = bx.bilevel.BilevelProblem(outer=outer, inner=inner)
X0, W0 = jnp.zeros(N), jnp.zeros(D)
ALGORITHMS = {
    "hgd": bx.bilevel.HypergradientDescent(
        optax.adam(0.1), inner_solver=bx.bilevel.GradientDescent(100)
    ),
    "f2sa": bx.bilevel.F2SA(batch_size=16),
}


@jax.jit
def compute(data):
    _, grad, _, _ = bx.bilevel.hypergradient(
        PROBLEM, X0, W0, bx.bilevel.GradientDescent(200), data=data
    )
    out = {"hypergradient": grad}
    for name, algorithm in ALGORITHMS.items():
        result = algorithm.run(
            PROBLEM, X0, W0, data, key=jax.random.key(0), num_steps=10, record_every=1
        )
        out[f"{name}_x"] = result.x
        out[f"{name}_loss"] = result.history.outer_loss
    return out


def main():
    path = sys.argv[1]
    inner_data, outer_data = make_data()
    processes, rank = jax.process_count(), jax.process_index()
    rows = lambda a: a[rank * len(a) // processes : (rank + 1) * len(a) // processes]
    local = jax.tree.map(rows, (inner_data, outer_data))
    sharded = bx.bilevel.shard_data(local)
    out = multihost_utils.process_allgather(compute(sharded), tiled=True)
    out = {k: np.asarray(v) for k, v in out.items()}
    if processes == 1:
        one = jax.device_put((inner_data, outer_data), jax.devices()[0])
        out |= {f"single_{k}": np.asarray(v) for k, v in compute(one).items()}
    out["devices"] = np.array(jax.device_count())
    out["sharded_over"] = np.array(len(sharded.inner[0].sharding.device_set))
    if rank == 0:
        np.savez(path, **out)


if __name__ == "__main__":
    main()
