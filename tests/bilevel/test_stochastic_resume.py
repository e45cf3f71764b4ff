"""A stochastic single-loop method runs vmapped over seeds. (Their resumption
from a saved run, with `bx.save`/`bx.load`, is in `test_resume.py`.)"""

import jax
import jax.numpy as jnp

import bilevax as bx

from ._quadratic import Quadratic

Q = Quadratic(dx=4, dy=8, n=64)


def test_vmap_over_seeds_gives_different_runs():
    algorithm = bx.bilevel.SABA(batch_size=16)
    run = lambda k: algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, key=k, num_steps=20).x
    xs = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 3))
    assert xs.shape == (3, 4) and not jnp.array_equal(xs[0], xs[1])
