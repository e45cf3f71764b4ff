r"""Dataset distillation: learn a small synthetic support set `(X_s, Y_s)` so that a
model fitted on it does well on real data.

    min_{X_s, Y_s}  L(model fitted on (X_s, Y_s); real batch (X_t, Y_t))

The outer variable `x = (X_s, Y_s)` holds the support images (any shape `(n_s,
...)`) and their targets `(n_s, C)`; real data are `(X, Y)` with targets `Y` of
shape `(n, C)` (e.g. one-hot minus `1/C`, as KIP).

Inner models:

- `KernelRidge(kernel)` (KIP, Nguyen, Chen, Lee, ICLR 2021): the fitted model is
  kernel ridge regression, `α* = (K_ss + ρI)⁻¹ Y_s` in closed form; outer loss
  `½ mean((K_ts α* - Y_t)²)`.
- `LinearizedNetwork(network)` (RCIG-style, Loo et al., ICML 2023): a finite
  network linearised around base parameters `θ0` drawn from a pool,
  `out(x) = f(x; θ0) + J(x) Δθ`; the inner problem is convex in `Δθ`, solved
  matrix-free by CG, and differentiated implicitly (`bilevax.implicit.custom_root`);
  outer loss softmax cross-entropy. Pool models are trained on the support set
  between meta-steps and re-initialised when old, as in RCIG.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optax
from jaxtyping import Array, PyTree

from ..implicit import CG, conditions, custom_root
from ..implicit._tree import tree_dot, tree_norm
from ._problem import BilevelData, BilevelProblem, sample_batch
from ._run import AbstractBilevelAlgorithm, BilevelResult, StepInfo
from .kernels import NNGP, AbstractKernel


def _check_support(support, name="support"):
    if not (isinstance(support, tuple | list) and len(support) == 2):
        raise TypeError(
            f"`{name}` must be a pair `(X_s, Y_s)` of images `(n_s, ...)` and targets "
            f"`(n_s, C)`; got {type(support).__name__}."
        )
    X, Y = (jnp.asarray(a) for a in support)
    if not (
        jnp.issubdtype(X.dtype, jnp.floating) and jnp.issubdtype(Y.dtype, jnp.floating)
    ):
        raise TypeError(
            f"`{name}` images and targets must be floating point; got {X.dtype} and "
            f"{Y.dtype} (targets are vectors, e.g. one-hot, not integer labels)."
        )
    if X.ndim < 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"`{name}` needs images (n, ...) and targets (n, C) with the same n; got "
            f"shapes {X.shape} and {Y.shape}."
        )
    return X, Y


class KernelRidge(eqx.Module):
    r"""Kernel ridge regression as the inner model (KIP).

    `α* = (K_ss + ρ I)⁻¹ Y_s` with `ρ = regularization · tr(K_ss)/n_s`, predictions
    `K(X, X_s) α*`, outer loss `½ mean((K_ts α* - Y_t)²)`. The closed form is
    differentiated directly (exactly the implicit-function-theorem hypergradient of
    the ridge problem). The inner variable `y` of the bilevel problem is `α`.

    **Arguments:** `kernel` (a `bilevax.bilevel.kernels` kernel, default `NNGP()`),
    `regularization` (default 1e-6, as KIP).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> X = jax.random.normal(jax.random.key(0), (20, 5))
    >>> Y = jnp.stack([X[:, 0] > 0, X[:, 0] <= 0], 1) - 0.5  # 2 classes, centred
    >>> model = bx.bilevel.KernelRidge(bx.bilevel.kernels.NNGP())
    >>> alpha = model.fit(X, Y)
    >>> predictions = model.predict(X, alpha, X)
    >>> float(jnp.mean(jnp.argmax(predictions, 1) == jnp.argmax(Y, 1)))
    1.0

    ```
    """

    kernel: AbstractKernel = NNGP()
    regularization: float = 1e-6

    def _gram(self, X_s: Array) -> tuple[Array, Array]:
        """`K_ss` and the ridge `ρ = regularization · tr(K_ss)/n_s`."""
        K = self.kernel(X_s, X_s)
        return K, self.regularization * jnp.trace(K) / K.shape[0]

    def fit(self, X_s: Array, Y_s: Array) -> Array:
        """`α* (n_s, C)` of the support set."""
        K, rho = self._gram(X_s)
        eye = jnp.eye(K.shape[0], dtype=K.dtype)
        return jax.scipy.linalg.solve(K + rho * eye, Y_s, assume_a="pos")

    def predict(self, X_s: Array, alpha: Array, X: Array) -> Array:
        """Predictions `K(X, X_s) α` of shape `(n, C)`."""
        return self.kernel(X, X_s) @ alpha

    def problem(self) -> BilevelProblem:
        """The bilevel problem: `x = (X_s, Y_s)`, `y = α`; the inner loss
        `½ tr(αᵀ(K_ss + ρI)α) - tr(αᵀ Y_s)` has minimiser `α*`."""
        # bound methods (equal for equal models), not closures: a repeated `run`
        # finds its compiled program
        return BilevelProblem(self._outer, self._inner)

    def _inner(self, x, alpha, _):
        X_s, Y_s = x
        K, rho = self._gram(X_s)
        quad = jnp.sum(alpha * (K @ alpha)) + rho * jnp.sum(alpha**2)
        return (0.5 * quad - jnp.sum(alpha * Y_s)) / K.shape[0]

    def _outer(self, x, alpha, batch):
        X_t, Y_t = batch
        return 0.5 * jnp.mean((self.predict(x[0], alpha, X_t) - Y_t) ** 2)

    def _init_inner(self, x, key):
        return self.fit(*x), None

    def _solve(self, x, inner_state, key):
        return self.fit(*x), None

    def _update(self, inner_state, x, aux):
        return inner_state


class _Pool(eqx.Module):
    params: PyTree[Array]  # stacked over the pool
    age: Array  # (pool_size,) training steps since initialisation


class LinearizedNetwork(eqx.Module):
    r"""A network linearised around pool parameters as the inner model (RCIG-style).

    For base parameters `θ0` (drawn from a pool of `pool_size` networks each step)
    the model is `out(x) = f(x; θ0) + J(x)Δθ` and the inner problem is convex:

    $$Δθ^* = \arg\min_{Δθ} \frac{1}{2 n_s}\big(‖Y_s - out(X_s)‖^2 + l_2 ‖Δθ‖^2\big),$$

    solved by `inner_steps` CG iterations on its normal equations
    `(JᵀJ + l2 I)Δθ = Jᵀ(Y_s - f(X_s; θ0))` (matrix-free: one JVP and one VJP per
    iteration). The hypergradient goes through `Δθ*` by the implicit function
    theorem (`bilevax.implicit.custom_root`, CG with `adjoint_steps` iterations) and
    directly through `out`. Outer loss: softmax cross-entropy of
    `temperature · out(X_t)` against the class `argmax Y_t`.

    After each meta-step the pool network used is trained `pool_steps` steps of
    gradient descent (rate `pool_lr`) on `½ mean‖f(X_s; θ) - Y_s‖²` of the current
    support set, and re-initialised once it has had `max_age` such steps.

    **Arguments:**

    - `network`: `network(key) -> eqx.Module`, a fresh network mapping one input
      (e.g. an image `(1, 28, 28)` or a vector) to `C` outputs.
    - `l2`, `temperature`, `inner_steps`, `adjoint_steps`, `pool_size`,
      `pool_steps`, `pool_lr`, `max_age`: as above.

    Example:

    ```python
    >>> import equinox as eqx, jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> X = jax.random.normal(jax.random.key(0), (200, 4))
    >>> Y = jax.nn.one_hot((X[:, 0] > 0).astype(int), 2) - 0.5
    >>> model = bx.bilevel.LinearizedNetwork(
    ...     lambda key: eqx.nn.MLP(4, 2, 16, 1, key=key),
    ...     inner_steps=10,
    ...     adjoint_steps=10,
    ... )
    >>> distill = bx.bilevel.DatasetDistillation(model, optax.adam(1e-2), batch_size=99)
    >>> result = distill.run((X[:4], Y[:4]), (X, Y), num_steps=20)
    >>> print(result.result == bx.bilevel.RESULTS.successful, result.x[0].shape)
    True (4, 4)

    ```
    """

    network: Callable[[Array], eqx.Module]
    l2: float = 1.0
    temperature: float = 10.0
    inner_steps: int = 30
    adjoint_steps: int = 30
    pool_size: int = 10
    pool_steps: int = 10
    pool_lr: float = 1e-2
    max_age: int = 500

    def _static(self):
        shape = eqx.filter_eval_shape(self.network, jax.random.key(0))
        return eqx.partition(shape, lambda a: isinstance(a, jax.ShapeDtypeStruct))[1]

    def _new_params(self, key, dtype):
        params = eqx.filter(self.network(key), eqx.is_array)
        return jtu.tree_map(lambda a: a.astype(dtype), params)

    def apply(self, params: PyTree[Array], X: Array) -> Array:
        """Outputs `(n, C)` of the (non-linearised) network with `params`."""
        net = eqx.combine(params, self._static())
        return jax.vmap(net)(X)

    def outputs(self, theta0, delta, X):
        """`f(X; θ0) + J(X) Δθ`, shape `(n, C)`."""
        out, tangent = jax.jvp(lambda p: self.apply(p, X), (theta0,), (delta,))
        return out + tangent

    def _inner_loss(self, delta, X_s, Y_s, theta0):
        r = Y_s - self.outputs(theta0, delta, X_s)
        return 0.5 * (jnp.sum(r**2) + self.l2 * tree_dot(delta, delta)) / X_s.shape[0]

    def problem(self) -> BilevelProblem:
        """The bilevel problem: `x = (X_s, Y_s)`, `y = (θ0, Δθ)`; `θ0` is the base
        point (held fixed: it enters the losses through `stop_gradient`)."""
        # bound methods, not closures: a repeated `run` finds its compiled program
        return BilevelProblem(self._outer, self._inner)

    def _inner(self, x, y, _):
        theta0, delta = y
        return self._inner_loss(delta, *x, jax.lax.stop_gradient(theta0))

    def _outer(self, x, y, batch):
        theta0, delta = y
        X_t, Y_t = batch
        logits = self.temperature * self.outputs(
            jax.lax.stop_gradient(theta0), delta, X_t
        )
        return jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.argmax(Y_t, axis=-1)
            )
        )

    def _fit_delta(self, X_s, Y_s, theta0):
        """`Δθ*` by CG on the normal equations (a truncated, matrix-free solve)."""
        n = X_s.shape[0]
        f_s, jvp = jax.linearize(lambda p: self.apply(p, X_s), theta0)
        vjp = jax.linear_transpose(jvp, theta0)
        operator = lx.FunctionLinearOperator(
            lambda v: jtu.tree_map(
                lambda a, b: (a + self.l2 * b) / n, vjp(jvp(v))[0], v
            ),
            jax.eval_shape(lambda: theta0),
            tags=frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag}),
        )
        rhs = jtu.tree_map(lambda a: a / n, vjp(Y_s - f_s)[0])
        solver = CG(rtol=1e-6, atol=0.0, max_steps=self.inner_steps)
        return lx.linear_solve(operator, rhs, solver, throw=False).value

    def _init_inner(self, x, key):
        dtype = jnp.result_type(x[0])
        keys = jax.random.split(key, self.pool_size)
        params = jax.vmap(lambda k: self._new_params(k, dtype))(keys)
        pool = _Pool(params, jnp.zeros(self.pool_size, jnp.int32))
        theta0 = jtu.tree_map(lambda a: a[0], params)
        return (theta0, jtu.tree_map(jnp.zeros_like, theta0)), pool

    def _solve(self, x, pool: _Pool, key):
        """Draw a pool network and fit `Δθ*` (implicitly differentiable in `x`);
        returns `((θ0, Δθ*), (pool index, key))` for `_update`."""
        pick, fresh = jax.random.split(key)
        i = jax.random.randint(pick, (), 0, self.pool_size)
        theta0 = jtu.tree_map(lambda a: a[i], pool.params)
        solve = custom_root(
            conditions.stationarity(lambda *a: self._inner_loss(*a)),
            CG(rtol=1e-6, atol=0.0, max_steps=self.adjoint_steps),
            throw=False,
        )(lambda _, X_s, Y_s, t0: self._fit_delta(X_s, Y_s, t0))
        delta = solve(None, *x, theta0)
        return (theta0, delta), (i, fresh)

    def _update(self, pool: _Pool, x, picked) -> _Pool:
        i, key = picked
        X_s, Y_s = jax.lax.stop_gradient(x)
        theta = jtu.tree_map(lambda a: a[i], pool.params)
        loss = lambda p: 0.5 * jnp.mean(jnp.sum((self.apply(p, X_s) - Y_s) ** 2, -1))

        def train(_, p):
            return jtu.tree_map(lambda a, g: a - self.pool_lr * g, p, jax.grad(loss)(p))

        theta = jax.lax.fori_loop(0, self.pool_steps, train, theta)
        age = pool.age[i] + self.pool_steps
        renew = age >= self.max_age
        theta = jax.lax.cond(
            renew, lambda: self._new_params(key, jnp.result_type(X_s)), lambda: theta
        )
        params = jtu.tree_map(lambda P, a: P.at[i].set(a), pool.params, theta)
        return _Pool(params, pool.age.at[i].set(jnp.where(renew, 0, age)))


class _DistillationState(eqx.Module):
    x: tuple[Array, Array]
    y: PyTree[Array]
    inner_state: PyTree
    opt_state: PyTree


class DatasetDistillation(AbstractBilevelAlgorithm):
    r"""Learn a synthetic support set `(X_s, Y_s)` (KIP / RCIG).

    Each step draws a batch of `batch_size` real samples `(X_t, Y_t)` (uniformly,
    with replacement), fits the inner `model` on the support set, and takes an
    optax step on the images (and on the targets when `learn_labels`) along the
    gradient of the model's loss on the batch, differentiated through the fit.

    **Arguments:**

    - `model`: `KernelRidge(kernel)` (default, KIP) or `LinearizedNetwork(network)`.
    - `optimizer`: optax transformation (default `optax.adam(0.01)`; KIP uses 0.04
      on standardised images).
    - `batch_size`: real samples per step (default 1000).
    - `learn_labels`: learn the support targets too (default `True`).

    Use `run(support, data, ...)`; the result is a `BilevelResult` whose `x` is the
    distilled `(X_s, Y_s)` and whose history records the loss on all of `data`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> X = jax.random.normal(jax.random.key(0), (200, 5))
    >>> Y = jax.nn.one_hot((X[:, 0] > 0).astype(int), 2) - 0.5
    >>> distill = bx.bilevel.DatasetDistillation(batch_size=100)
    >>> result = distill.run((X[:2], Y[:2]), (X, Y), num_steps=50)
    >>> loss = result.history.outer_loss
    >>> result.x[0].shape, bool(loss[-1] < loss[0])
    ((2, 5), True)

    ```
    """

    model: KernelRidge | LinearizedNetwork = KernelRidge()
    optimizer: optax.GradientTransformation = optax.adam(1e-2)
    batch_size: int = 1000
    learn_labels: bool = True

    def problem(self) -> BilevelProblem:
        """The model's bilevel problem (`x = (X_s, Y_s)`, real data as outer data)."""
        return self.model.problem()

    def init(self, problem, x0, y0, data: BilevelData, key):
        x0 = tuple(x0)
        y, inner_state = self.model._init_inner(x0, key)
        return _DistillationState(x0, y, inner_state, self.optimizer.init(x0))

    def iterates(self, state):
        return state.x, state.y

    def step(self, problem, state, data: BilevelData, key):
        batch_key, model_key = jax.random.split(key)
        batch = sample_batch(data.outer, batch_key, self.batch_size)

        def loss(x):
            y, picked = self.model._solve(x, state.inner_state, model_key)
            return problem.outer(x, y, batch), (y, picked)

        (_, (y, picked)), grad = jax.value_and_grad(loss, has_aux=True)(state.x)
        if not self.learn_labels:
            grad = (grad[0], jnp.zeros_like(grad[1]))
        updates, opt_state = self.optimizer.update(grad, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        inner_state = self.model._update(state.inner_state, x, picked)
        y = jax.lax.stop_gradient(y)
        return _DistillationState(x, y, inner_state, opt_state), StepInfo(
            tree_norm(grad)
        )

    def run(
        self,
        support: tuple[Array, Array],
        data: tuple[Array, Array],
        *,
        key: Array | None = None,
        num_steps: int = 1000,
        record_every: int | None = None,
        progress: bool = False,
        callback=None,
        state=None,
        throw: bool = True,
    ) -> BilevelResult:
        """Distil `data = (X, Y)` into a support set initialised at `support`.

        **Arguments:**

        - `support`: initial `(X_s (n_s, ...), Y_s (n_s, C))`, e.g. a random real
          subset with its one-hot targets.
        - `data`: real `(X (n, ...), Y (n, C))`; `X` of the same trailing shape and
          dtype as `X_s`.
        - `key`, `num_steps`, `record_every`, `progress`, `callback`, `state`,
          `throw`: as `AbstractBilevelAlgorithm.run`.

        **Returns:** a `BilevelResult`; `x` is the distilled support set.
        """
        X_s, Y_s = _check_support(support)
        X, Y = _check_support(data, "data")
        if X.shape[1:] != X_s.shape[1:] or Y.shape[1] != Y_s.shape[1]:
            raise ValueError(
                f"`data` has images {X.shape[1:]} and {Y.shape[1]} targets per sample "
                f"but `support` has {X_s.shape[1:]} and {Y_s.shape[1]}."
            )
        support = (X_s, Y_s.astype(X_s.dtype))
        y0 = _zeros_like_inner(self.model, support)
        return super().run(
            self.problem(),
            support,
            y0,
            BilevelData(outer=(X, Y.astype(X_s.dtype))),
            key=key,
            num_steps=num_steps,
            record_every=record_every,
            progress=progress,
            callback=callback,
            state=state,
            throw=throw,
        )


# compiled once per model and shapes: a repeated eager `run` does not trace the
# model's fit again to find the shapes of its inner variables
@eqx.filter_jit
def _zeros_like_inner(model, support):
    y0 = jax.eval_shape(model._init_inner, support, jax.random.key(0))[0]
    return jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), y0)
