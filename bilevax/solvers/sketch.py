r"""Randomized iterative sketching solvers for square linear systems `A x = b`.

Each step draws a random sketch `S` of the rows and projects the iterate onto the
solutions of the sketched system `Sᵀ A x = Sᵀ b` (Gower & Richtárik, "Randomized
iterative methods for linear systems", SIAM J. Matrix Anal. Appl. 2015):

    x ← x + Aᵀ S (Sᵀ A Aᵀ S)⁻¹ Sᵀ (b - A x).

This converges for any nonsingular `A`, symmetric or not, definite or not (the
Newton-KKT matrices `[[H, Gᵀ], [G, 0]]` of constrained optimisation included), at
an expected linear rate `1 - λ_min(E[Z])` that depends on the sketch.

The operator is materialised once (`O(n²)` memory, for the moderate sizes these
methods are meant for), with its Gram matrix `A Aᵀ`: the residual `r = b - A x` is
then updated in `O(n · sketch size)` per step (`r ← r - A Aᵀ S w`) and recomputed
exactly every `n` steps against rounding drift. The stopping rule is
`‖b - A x‖₂ <= max(rtol ‖b‖₂, atol)` on the exact residual.

The solvers are `lineax.AbstractLinearSolver`s: use them with `lineax.linear_solve`
or anywhere bilevax takes a linear solver. They are keyed: the key is the solver's
`key` field, or `options={"key": key}` in `lineax.linear_solve` (a fresh key per
solve, e.g. in an outer loop). `options={"y0": x0}` warm-starts the iteration
from `x0` (default zero), e.g. to resume a solve to a tighter `rtol`.
"""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PRNGKeyArray


class _SketchState(eqx.Module):
    operator: lx.AbstractLinearOperator
    matrix: Array  # A, (n, n)
    gram: Array  # A Aᵀ, (n, n)
    row_probabilities: Array  # ‖a_i‖² / ‖A‖_F², (n,)


class AbstractSketchSolver(lx.AbstractLinearSolver):
    """Shared loop of the sketching solvers; subclasses give one projection step.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, lineax as lx
    >>> import bilevax as bx
    >>> A = jnp.array([[2.0, 1.0], [1.0, -1.0]])  # indefinite
    >>> solver = bx.solvers.RandomizedKaczmarz(rtol=1e-6)
    >>> isinstance(solver, bx.solvers.sketch.AbstractSketchSolver)
    True
    >>> operator, b = lx.MatrixLinearOperator(A), jnp.array([3.0, 0.0])
    >>> solution = lx.linear_solve(operator, b, solver)
    >>> print(solution.value.round(4), solution.result == lx.RESULTS.successful)
    [1. 1.] True

    ```
    """

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    max_steps: eqx.AbstractVar[int]
    key: eqx.AbstractVar[PRNGKeyArray | None]

    @abc.abstractmethod
    def _weights(self, state: _SketchState, r: Array, key: PRNGKeyArray):
        """`(rows, w)`: the step is `x ← x + A[rows]ᵀ w` for row indices `rows`,
        or `(None, u)` for the dense step `x ← x + Aᵀ u`."""

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        n_in = sum(s.size for s in jax.tree_util.tree_leaves(operator.in_structure()))
        n_out = sum(s.size for s in jax.tree_util.tree_leaves(operator.out_structure()))
        if n_in != n_out:
            raise ValueError(
                f"`{type(self).__name__}` solves square systems; the operator maps "
                f"{n_in} unknowns to {n_out} equations."
            )
        matrix = operator.as_matrix()
        gram = matrix @ matrix.T
        squared_norms = jnp.diag(gram)
        probabilities = squared_norms / jnp.sum(squared_norms)
        return _SketchState(operator, matrix, gram, probabilities)

    def compute(self, state: _SketchState, vector, options: dict[str, Any]):
        key = options.get("key", self.key)
        key = jax.random.key(0) if key is None else key
        b, _ = jfu.ravel_pytree(vector)
        A, gram = state.matrix, state.gram
        n = b.shape[0]
        tol = jnp.maximum(self.rtol * jnp.linalg.norm(b), self.atol)
        x0 = options.get("y0")
        x0 = jnp.zeros(A.shape[1], A.dtype) if x0 is None else jfu.ravel_pytree(x0)[0]

        def cond(carry):
            _, r, step = carry
            return (step < self.max_steps) & (jnp.linalg.norm(r) > tol)

        def body(carry):
            x, r, step = carry
            rows, w = self._weights(state, r, jax.random.fold_in(key, step))
            if rows is None:
                x = x + A.T @ w
                r = r - gram @ w
            else:
                x = x + A[rows].T @ w
                r = r - gram[:, rows] @ w
            # Exact residual every n steps, against the drift of the updates.
            r = jax.lax.cond((step + 1) % n == 0, lambda: b - A @ x, lambda: r)
            return x, r, step + 1

        def solve(carry):
            x, _, step = jax.lax.while_loop(cond, body, carry)
            return x, b - A @ x, step

        x, r, steps = solve((x0, b - A @ x0, jnp.array(0)))
        # Converged on the updated residual but not on the exact one: go on.
        x, r, steps = jax.lax.cond(
            (jnp.linalg.norm(r) > tol) & (steps < self.max_steps),
            solve,
            lambda c: c,
            (x, r, steps),
        )
        residual = jnp.linalg.norm(r)
        finite = jnp.all(jnp.isfinite(x))
        result = lx.RESULTS.where(
            residual <= tol, lx.RESULTS.successful, lx.RESULTS.max_steps_reached
        )
        result = lx.RESULTS.where(finite, result, lx.RESULTS.singular)
        _, unravel_in = jfu.ravel_pytree(
            jax.tree_util.tree_map(
                lambda s: jnp.zeros(s.shape, s.dtype), state.operator.in_structure()
            )
        )
        bnorm = jnp.linalg.norm(b)
        stats = {
            "num_steps": steps,
            "residual": residual / jnp.where(bnorm > 0, bnorm, 1.0),
        }
        return unravel_in(x), result, stats

    def transpose(self, state: _SketchState, options: dict[str, Any]):
        return self.init(state.operator.transpose(), options), options

    def conj(self, state: _SketchState, options: dict[str, Any]):
        return self.init(lx.conj(state.operator), options), options

    def assume_full_rank(self) -> bool:
        return True


class RandomizedKaczmarz(AbstractSketchSolver):
    r"""Randomized Kaczmarz (Strohmer & Vershynin, 2009): project onto one equation
    at a time,

        x ← x + (b_i - a_iᵀ x) / ‖a_i‖² · a_i,   P(i) = ‖a_i‖² / ‖A‖_F²,

    with expected rate `E‖x_k - x*‖² <= (1 - σ_min(A)² / ‖A‖_F²)^k ‖x_0 - x*‖²`.
    `O(n)` work per step.

    **Arguments:** `rtol`, `atol` (residual 2-norm, default `1e-8`, `0`),
    `max_steps` (default `10⁶`), `key` (default `jax.random.key(0)`).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, lineax as lx
    >>> import bilevax as bx
    >>> A = jnp.array([[2.0, 1.0], [1.0, -1.0]])
    >>> solver = bx.solvers.RandomizedKaczmarz(rtol=1e-6, key=jax.random.key(1))
    >>> operator, b = lx.MatrixLinearOperator(A), jnp.array([3.0, 0.0])
    >>> solution = lx.linear_solve(operator, b, solver)
    >>> print(solution.value.round(4))
    [1. 1.]

    ```
    """

    rtol: float = 1e-8
    atol: float = 0.0
    max_steps: int = 1_000_000
    key: PRNGKeyArray | None = None

    def _weights(self, state, r, key):
        i = jax.random.choice(key, r.shape[0], p=state.row_probabilities)
        return i[None], (r[i] / state.gram[i, i])[None]


class SketchAndProject(AbstractSketchSolver):
    r"""Block Kaczmarz sketch-and-project (Needell & Tropp 2014; Gower & Richtárik
    2015): project onto a block `τ` of `block_size` equations drawn without
    replacement with probabilities proportional to the squared row norms,

        x ← x + A_τᵀ (A_τ A_τᵀ)⁻¹ (b_τ - A_τ x).

    `O(n · block_size + block_size³)` work per step; larger blocks take fewer,
    dearer steps.

    **Arguments:** `block_size` (default 32), `rtol`, `atol` (default `1e-8`, `0`),
    `max_steps` (default `10⁵`), `key`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, lineax as lx
    >>> import bilevax as bx
    >>> A = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, -1.0]])
    >>> solver = bx.solvers.SketchAndProject(block_size=2, rtol=1e-6)
    >>> operator, b = lx.MatrixLinearOperator(A), A @ jnp.ones(3)
    >>> print(lx.linear_solve(operator, b, solver).value.round(4))
    [1. 1. 1.]

    ```
    """

    block_size: int = 32
    rtol: float = 1e-8
    atol: float = 0.0
    max_steps: int = 100_000
    key: PRNGKeyArray | None = None

    def __check_init__(self):
        if self.block_size < 1:
            raise ValueError("`SketchAndProject(block_size=...)` must be >= 1.")

    def _weights(self, state, r, key):
        n = r.shape[0]
        size = min(self.block_size, n)
        rows = jax.random.choice(
            key, n, (size,), replace=False, p=state.row_probabilities
        )
        block = state.gram[rows[:, None], rows[None, :]]
        return rows, jnp.linalg.solve(block, r[rows])


class GaussianSketch(AbstractSketchSolver):
    r"""Gaussian sketch-and-project: `S` has i.i.d. `N(0, 1)` entries,

        x ← x + Aᵀ S (Sᵀ A Aᵀ S)⁻¹ Sᵀ (b - A x),

    a projection onto `sketch_size` random combinations of the equations (with
    `sketch_size=1` the Gaussian method of Hong et al. 2023; at most `n`, the
    number of equations). `O(n² · sketch_size)`
    work per step: the sketch mixes every equation, so it is insensitive to badly
    scaled rows.

    **Arguments:** `sketch_size` (default 1), `rtol`, `atol` (default `1e-8`, `0`),
    `max_steps` (default `10⁵`), `key`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, lineax as lx
    >>> import bilevax as bx
    >>> A = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, -1.0]])
    >>> solver = bx.solvers.GaussianSketch(sketch_size=2, rtol=1e-6)
    >>> operator, b = lx.MatrixLinearOperator(A), A @ jnp.ones(3)
    >>> print(lx.linear_solve(operator, b, solver).value.round(4))
    [1. 1. 1.]

    ```
    """

    sketch_size: int = 1
    rtol: float = 1e-8
    atol: float = 0.0
    max_steps: int = 100_000
    key: PRNGKeyArray | None = None

    def __check_init__(self):
        if self.sketch_size < 1:
            raise ValueError("`GaussianSketch(sketch_size=...)` must be >= 1.")

    def _weights(self, state, r, key):
        # more columns than equations would make `Sᵀ A Aᵀ S` singular
        size = min(self.sketch_size, r.shape[0])
        S = jax.random.normal(key, (r.shape[0], size), r.dtype)
        small = S.T @ state.gram @ S
        return None, S @ jnp.linalg.solve(small, S.T @ r)


__all__ = [
    "AbstractSketchSolver",
    "GaussianSketch",
    "RandomizedKaczmarz",
    "SketchAndProject",
]
