"""Dataset distillation: the closed-form kernels against wide random networks, the
kernel-ridge inner model, KIP beating a random subset on digits, the linearised
network's implicit hypergradient against finite differences, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bilevax as bx

B = bx.bilevel
K = bx.bilevel.kernels


def _inputs(n=4, d=6):
    return jax.random.normal(jax.random.key(0), (n, d))


def _wide_relu(X, depth, width, key, w_std=2**0.5, b_std=0.1):
    """Last-layer features (scaled) of one wide random ReLU network, NTK
    parameterisation: `φ φᵀ + b²` estimates the NNGP kernel."""
    h, d = X, X.shape[1]
    for _ in range(depth):
        key, kw, kb = jax.random.split(key, 3)
        W = jax.random.normal(kw, (d, width))
        z = w_std * h @ W / np.sqrt(d) + b_std * jax.random.normal(kb, (width,))
        h, d = jax.nn.relu(z), width
    return w_std * h / np.sqrt(d)


@pytest.mark.parametrize("depth, width, tol", [(1, 200_000, 0.02), (2, 6000, 0.05)])
def test_nngp_matches_a_wide_network(depth, width, tol):
    X = _inputs()
    phi = _wide_relu(X, depth, width, jax.random.key(1))
    empirical = phi @ phi.T + 0.1**2
    exact = K.NNGP(depth=depth)(X, X)
    np.testing.assert_allclose(exact, empirical, rtol=tol, atol=tol)


def test_ntk_matches_a_wide_network():
    X = _inputs()
    width = 20_000
    W1 = jax.random.normal(jax.random.key(2), (6, width))
    b1 = jax.random.normal(jax.random.key(3), (width,))
    w2 = jax.random.normal(jax.random.key(4), (width,))
    s = 2**0.5

    def f(params, x):  # one hidden layer, scalar output, NTK parameterisation
        W1, b1, w2, b2 = params
        h = jax.nn.relu(s * x @ W1 / np.sqrt(6) + 0.1 * b1)
        return s * h @ w2 / np.sqrt(width) + 0.1 * b2

    params = (W1, b1, w2, jnp.zeros(()))
    J = jax.vmap(jax.grad(f), in_axes=(None, 0))(params, X)
    flat = jnp.concatenate([a.reshape(X.shape[0], -1) for a in J], axis=1)
    np.testing.assert_allclose(K.NTK()(X, X), flat @ flat.T, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kernel", [K.NNGP(), K.NTK(depth=2), K.RBF()])
def test_kernels_are_psd_and_differentiable_on_the_diagonal(kernel):
    X = _inputs(8)
    G = kernel(X, X)
    assert np.all(np.linalg.eigvalsh(np.asarray(G)) > -1e-10)
    np.testing.assert_allclose(G, G.T, atol=1e-12)
    # identical inputs (correlation exactly 1) must not give NaN gradients
    grad = jax.grad(lambda X: jnp.sum(kernel(X, X)))(X)
    assert np.all(np.isfinite(np.asarray(grad)))
    # images are flattened
    np.testing.assert_allclose(kernel(X.reshape(8, 2, 3), X.reshape(8, 2, 3)), G)


def test_kernel_input_errors():
    with pytest.raises(ValueError, match="features"):
        K.RBF()(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="batches"):
        K.NNGP()(jnp.zeros(3), jnp.zeros((2, 3)))


def test_kernel_ridge_fit_is_the_inner_minimiser():
    model = B.KernelRidge(K.NTK())
    X_s = _inputs(5)
    Y_s = jax.random.normal(jax.random.key(1), (5, 3))
    alpha = model.fit(X_s, Y_s)
    grad = jax.grad(model.problem().inner, argnums=1)((X_s, Y_s), alpha, None)
    assert float(jnp.max(jnp.abs(grad))) < 1e-9


def _digits(per_class, seed=0):
    split = bx.datasets.digits(sizes=(1000, 100), seed=seed)
    (X, y), (X_test, y_test) = split.train, split.test
    Y = jax.nn.one_hot(y, 10) - 0.1
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [
            rng.choice(np.flatnonzero(np.asarray(y) == c), per_class, replace=False)
            for c in range(10)
        ]
    )
    return (X, Y), (X[idx], Y[idx]), (X_test, y_test)


def _kernel_accuracy(model, support, test):
    X_test, y_test = test
    pred = model.predict(support[0], model.fit(*support), X_test)
    return float(jnp.mean(jnp.argmax(pred, -1) == y_test))


def test_kip_beats_a_random_subset_on_digits():
    data, support, test = _digits(per_class=1)
    model = B.KernelRidge(K.NNGP())
    distill = B.DatasetDistillation(model, optax.adam(0.04), batch_size=500)
    result = jax.jit(lambda s: distill.run(s, data, num_steps=150))(support)
    assert result.result == B.RESULTS.successful
    loss = result.history.outer_loss
    assert float(loss[-1]) < 0.6 * float(loss[0])
    random = _kernel_accuracy(model, support, test)
    distilled = _kernel_accuracy(model, result.x, test)
    assert distilled >= random + 0.15, (random, distilled)


def test_fixed_labels_stay_fixed_and_float32_runs():
    data, support, _ = _digits(per_class=1)
    to32 = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), t)
    distill = B.DatasetDistillation(batch_size=200, learn_labels=False)
    result = distill.run(to32(support), to32(data), num_steps=20)
    assert result.result == B.RESULTS.successful
    assert result.x[0].dtype == jnp.float32
    np.testing.assert_array_equal(result.x[1], to32(support)[1])
    assert not np.allclose(result.x[0], to32(support)[0])


class _Net(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, x):
        return self.mlp(x)


def _tiny_network(key):
    return _Net(eqx.nn.MLP(4, 3, 6, 1, activation=jnp.tanh, key=key))


def test_linearized_network_hypergradient_matches_finite_differences():
    model = B.LinearizedNetwork(
        _tiny_network, l2=0.1, inner_steps=300, adjoint_steps=300, pool_size=1
    )
    X_s = jax.random.normal(jax.random.key(0), (5, 4))
    Y_s = jax.random.normal(jax.random.key(1), (5, 3))
    X_t = jax.random.normal(jax.random.key(2), (20, 4))
    Y_t = jax.nn.one_hot(jnp.arange(20) % 3, 3)
    _, pool = model._init_inner((X_s, Y_s), jax.random.key(3))

    def loss(x):
        y, _ = model._solve(x, pool, jax.random.key(4))
        return model.problem().outer(x, y, (X_t, Y_t))

    grad = jax.grad(loss)((X_s, Y_s))
    d = (
        jax.random.normal(jax.random.key(5), X_s.shape),
        jax.random.normal(jax.random.key(6), Y_s.shape),
    )
    eps = 1e-4
    fd = (
        loss((X_s + eps * d[0], Y_s + eps * d[1]))
        - loss((X_s - eps * d[0], Y_s - eps * d[1]))
    ) / (2 * eps)
    directional = jnp.vdot(grad[0], d[0]) + jnp.vdot(grad[1], d[1])
    np.testing.assert_allclose(directional, fd, rtol=1e-5)
    # the inner solution is the minimiser of the linearised problem
    (theta0, delta), _ = model._solve((X_s, Y_s), pool, jax.random.key(4))
    inner_grad = jax.grad(model.problem().inner, argnums=1)(
        (X_s, Y_s), (theta0, delta), None
    )[1]
    assert float(bx.implicit._tree.tree_norm(inner_grad)) < 1e-6


def test_linearized_network_distillation_lowers_the_loss():
    data, support, _ = _digits(per_class=1)
    to32 = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), t)

    def network(key):
        return _Net(eqx.nn.MLP(64, 10, 64, 1, key=key))

    model = B.LinearizedNetwork(network, pool_size=3, pool_steps=5, max_age=20)
    distill = B.DatasetDistillation(model, optax.adam(0.01), batch_size=200)
    result = jax.jit(lambda s: distill.run(s, to32(data), num_steps=60))(to32(support))
    assert result.result == B.RESULTS.successful
    loss = np.asarray(result.history.outer_loss)
    assert loss[-10:].mean() < 0.8 * loss[:5].mean()
    # pool networks were trained and some re-initialised (age wraps at max_age)
    ages = np.asarray(result.state.inner_state.age)
    assert ages.max() < 20 and ages.sum() > 0


def test_bad_input():
    data, support, _ = _digits(per_class=1)
    distill = B.DatasetDistillation(batch_size=100)
    with pytest.raises(TypeError, match="pair"):
        distill.run(support[0], data)
    with pytest.raises(TypeError, match="floating"):
        distill.run((support[0], jnp.arange(10)), data)
    with pytest.raises(ValueError, match="same n"):
        distill.run((support[0], support[1][:5]), data)
    with pytest.raises(ValueError, match="trailing|images"):
        distill.run((support[0][:, :10], support[1]), data)
    # NaN in the real data: the run stops with a failure status, no NaN returned
    X, Y = data
    result = distill.run(support, (X.at[:].set(jnp.nan), Y), num_steps=5, throw=False)
    assert result.result == B.RESULTS.diverged
    assert np.all(np.isfinite(np.asarray(result.x[0])))
