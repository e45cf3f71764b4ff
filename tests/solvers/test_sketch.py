"""Randomized sketching solvers: accuracy against `lineax.LU` on SPD and on
indefinite KKT systems, use through `lineax.linear_solve` (keys, statuses,
transposes for autodiff), and bad input."""

import jax
import jax.numpy as jnp
import lineax as lx
import pytest

from bilevax.solvers.sketch import GaussianSketch, RandomizedKaczmarz, SketchAndProject


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _orthogonal(key, n):
    q, _ = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    return q


def spd(n, seed, cond=10.0):
    Q = _orthogonal(jax.random.key(seed), n)
    return Q @ jnp.diag(jnp.geomspace(1.0, cond, n)) @ Q.T


def kkt(n, m, seed):
    """`[[H, Gᵀ], [G, 0]]` with H SPD (spectrum [1, 2]) and G with singular values
    in [1, 2]: indefinite (n positive, m negative eigenvalues), well conditioned."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    H = spd(n, seed, cond=2.0)
    U, V = _orthogonal(k1, m), _orthogonal(k2, n)[:m]
    G = U @ jnp.diag(jnp.geomspace(1.0, 2.0, m)) @ V
    del k3
    return jnp.block([[H, G.T], [G, jnp.zeros((m, m))]])


SOLVERS = {
    "kaczmarz": RandomizedKaczmarz(),
    "sketch_and_project": SketchAndProject(block_size=32),
    "gaussian": GaussianSketch(sketch_size=16),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("system", ["spd", "kkt"], ids=["spd n=200", "kkt n=150+50"])
def test_reaches_1e_8_against_lu(name, system):
    A = spd(200, 0) if system == "spd" else kkt(150, 50, 1)
    if system == "kkt":
        assert jnp.sum(jnp.linalg.eigvalsh(A) < 0) == 50  # indefinite
    b = jax.random.normal(jax.random.key(2), (A.shape[0],))
    op = lx.MatrixLinearOperator(A)
    sol = jax.jit(lambda b: lx.linear_solve(op, b, SOLVERS[name], throw=False))(b)
    reference = lx.linear_solve(op, b, lx.LU()).value
    assert sol.result == lx.RESULTS.successful
    residual = jnp.linalg.norm(A @ sol.value - b) / jnp.linalg.norm(b)
    assert residual <= 1e-8
    assert float(sol.stats["residual"]) == pytest.approx(float(residual), rel=1e-3)
    assert jnp.linalg.norm(sol.value - reference) <= 1e-6 * jnp.linalg.norm(reference)


def test_n_500_kkt_with_blocks():
    A = kkt(400, 100, 3)
    b = jax.random.normal(jax.random.key(4), (500,))
    solver = SketchAndProject(block_size=100)
    sol = jax.jit(lambda b: lx.linear_solve(lx.MatrixLinearOperator(A), b, solver))(b)
    assert jnp.linalg.norm(A @ sol.value - b) <= 1e-8 * jnp.linalg.norm(b)


def test_keys_change_the_path_not_the_answer():
    A, b = spd(60, 5), jnp.ones(60)
    op = lx.MatrixLinearOperator(A)
    solve = jax.jit(
        lambda k: lx.linear_solve(op, b, RandomizedKaczmarz(), options={"key": k})
    )
    s1, s2 = solve(jax.random.key(1)), solve(jax.random.key(2))
    assert int(s1.stats["num_steps"]) != int(s2.stats["num_steps"])
    assert jnp.allclose(s1.value, s2.value, rtol=1e-6)
    again = solve(jax.random.key(1))
    assert int(again.stats["num_steps"]) == int(s1.stats["num_steps"])


def test_step_cap_is_a_status_not_a_silent_answer():
    A, b = kkt(40, 10, 6), jnp.ones(50)
    sol = lx.linear_solve(
        lx.MatrixLinearOperator(A), b, RandomizedKaczmarz(max_steps=10), throw=False
    )
    assert sol.result == lx.RESULTS.max_steps_reached
    assert float(sol.stats["residual"]) > 1e-3


def test_pytree_operator_and_gradients_through_the_solve():
    A = spd(6, 7)
    structure = {"a": jax.ShapeDtypeStruct((2,), jnp.float64)}
    structure["b"] = jax.ShapeDtypeStruct((4,), jnp.float64)

    def mv(v):
        x = jnp.concatenate([v["a"], v["b"]])
        y = A @ x
        return {"a": y[:2], "b": y[2:]}

    op = lx.FunctionLinearOperator(mv, structure)

    def loss(scale):
        b = {"a": scale * jnp.ones(2), "b": jnp.arange(4.0)}
        x = lx.linear_solve(op, b, SketchAndProject(block_size=3)).value
        return jnp.sum(x["a"]) + jnp.sum(x["b"] ** 2)

    exact = lambda s: (lambda x: jnp.sum(x[:2]) + jnp.sum(x[2:] ** 2))(
        jnp.linalg.solve(A, jnp.concatenate([s * jnp.ones(2), jnp.arange(4.0)]))
    )
    assert loss(0.7) == pytest.approx(float(exact(0.7)), rel=1e-7)
    assert jax.grad(loss)(0.7) == pytest.approx(float(jax.grad(exact)(0.7)), rel=1e-6)


def test_bad_input():
    rect = lx.MatrixLinearOperator(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(rect, jnp.ones(3), RandomizedKaczmarz())
    with pytest.raises(ValueError, match="block_size"):
        SketchAndProject(block_size=0)
    with pytest.raises(ValueError, match="sketch_size"):
        GaussianSketch(sketch_size=0)
    singular = lx.MatrixLinearOperator(jnp.zeros((3, 3)))
    sol = lx.linear_solve(singular, jnp.ones(3), RandomizedKaczmarz(), throw=False)
    assert sol.result != lx.RESULTS.successful


def test_warm_start_resumes_from_y0():
    """`options={"y0": x0}` starts from `x0`: from the solution no step is taken,
    and resuming a loose solve reaches a tight tolerance in fewer steps than a
    tight solve from zero."""
    A = kkt(6, 2, seed=3)
    b = jnp.arange(8.0) - 3.0
    operator = lx.MatrixLinearOperator(A)
    exact = jnp.linalg.solve(A, b)
    solve = lambda rtol, options: lx.linear_solve(
        operator, b, RandomizedKaczmarz(rtol=rtol), options=options, throw=False
    )
    at_solution = solve(1e-8, {"y0": exact})
    assert int(at_solution.stats["num_steps"]) == 0
    loose = solve(1e-2, {"key": jax.random.key(1)})
    resumed = solve(1e-10, {"key": jax.random.key(2), "y0": loose.value})
    cold = solve(1e-10, {"key": jax.random.key(2)})
    assert jnp.allclose(resumed.value, exact, atol=1e-8)
    assert int(resumed.stats["num_steps"]) < int(cold.stats["num_steps"])
