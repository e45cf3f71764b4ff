"""`bilevax.prox`: each operator is the argmin it claims, and its autodiff
Jacobian (in `v` and `θ`) equals finite differences at generic points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.optimize import minimize

import bilevax as bx

V = jnp.array([2.0, -0.3, 0.8, -1.7, 0.05, 1.2])
ETA = 0.7


def _l1(u, th):
    return jnp.sum(th * jnp.abs(u))


def _elastic(u, th):
    return jnp.sum(th[0] * jnp.abs(u) + 0.5 * th[1] * u**2)


def _group(u, th):
    return jnp.sum(th * jnp.linalg.norm(u.reshape(3, 2), axis=-1))


def _nonneg(u, th):
    return jnp.where(jnp.all(u >= -1e-9), jnp.sum(th * u), jnp.inf)


# name: (prox, θ, penalty g(u, θ) or None for a projection, feasibility test)
CASES = {
    "l1": (bx.prox.l1, 0.5, _l1),
    "l1_weighted": (bx.prox.l1, jnp.array([0.1, 0.5, 2.0, 0.3, 0.0, 1.0]), _l1),
    "elastic_net": (bx.prox.elastic_net, (0.5, 0.8), _elastic),
    "elastic_net_weighted": (
        bx.prox.elastic_net,
        (jnp.array([0.1, 0.5, 2.0, 0.3, 0.0, 1.0]), 0.3),
        _elastic,
    ),
    "group_l1": (bx.prox.group_l1, 0.6, _group),
    "group_l1_weighted": (bx.prox.group_l1, jnp.array([0.2, 1.5, 0.6]), _group),
    "non_negative_l1": (bx.prox.non_negative_l1, 0.4, _nonneg),
}


def _call(name, v, theta):
    prox = CASES[name][0]
    if name.startswith("group"):
        return prox(v.reshape(3, 2), theta, ETA).reshape(-1)
    return prox(v, theta, ETA)


@pytest.mark.parametrize("name", list(CASES))
def test_prox_is_the_argmin(name):
    _, theta, penalty = CASES[name]
    u = np.asarray(_call(name, V, theta))
    obj = jax.vmap(lambda w: 0.5 * jnp.sum((w - V) ** 2) + ETA * penalty(w, theta))
    rng = np.random.default_rng(0)
    perturbed = u + 1e-3 * rng.standard_normal((200, V.size))
    assert jnp.all(obj(u[None]) <= obj(perturbed) + 1e-12)


def _central_differences(fn, z, h=1e-6):
    """Columns `(fn(z + h e_i) - fn(z - h e_i)) / 2h`."""
    steps = h * jnp.eye(z.size, dtype=z.dtype)
    return (jax.vmap(fn)(z + steps) - jax.vmap(fn)(z - steps)).T / (2 * h)


@pytest.mark.parametrize("name", list(CASES))
def test_jacobian_equals_finite_differences(name):
    _, theta, _ = CASES[name]
    jac_v = jax.jacobian(_call, argnums=1)(name, V, theta)
    fd = _central_differences(lambda v: _call(name, v, theta), V)
    np.testing.assert_allclose(jac_v, fd, atol=1e-8)
    leaves, unflatten = ravel_pytree(jax.tree_util.tree_map(jnp.asarray, theta))
    fn = lambda t: _call(name, V, unflatten(t))
    np.testing.assert_allclose(
        jax.jacobian(fn)(leaves), _central_differences(fn, leaves), atol=1e-8
    )


def test_group_l1_of_a_zero_group_has_a_finite_derivative():
    v = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    jac = jax.jacobian(bx.prox.group_l1)(v, 1.0)
    assert jnp.all(jnp.isfinite(jac)) and jnp.all(jac[0] == 0)


PROJECTIONS = {
    "box": (bx.prox.box, (-0.5, 1.0), lambda u: np.all((u >= -0.5) & (u <= 1.0))),
    "simplex": (
        bx.prox.simplex,
        2.0,
        lambda u: np.all(u >= 0) & (abs(u.sum() - 2) < 1e-9),
    ),
    "l1_ball": (bx.prox.l1_ball, 1.5, lambda u: np.abs(u).sum() <= 1.5 + 1e-9),
    "l2_ball": (bx.prox.l2_ball, 1.5, lambda u: np.linalg.norm(u) <= 1.5 + 1e-9),
}


@pytest.mark.parametrize("name", list(PROJECTIONS))
def test_projection_is_the_nearest_feasible_point(name):
    project, theta, feasible = PROJECTIONS[name]
    u = np.asarray(project(V, theta, ETA))
    assert feasible(u)
    rng = np.random.default_rng(1)
    others = jax.vmap(lambda v: project(v, theta, ETA))(
        V + rng.standard_normal((300, V.size))
    )  # feasible points
    assert np.sum((u - V) ** 2) <= np.min(np.sum((others - V) ** 2, axis=1)) + 1e-12


@pytest.mark.parametrize("name", list(PROJECTIONS))
def test_projection_jacobian_equals_finite_differences(name):
    project, theta, _ = PROJECTIONS[name]
    fn = lambda v: project(v, theta, ETA)
    fd = _central_differences(fn, V)
    np.testing.assert_allclose(jax.jacobian(fn)(V), fd, atol=1e-7)


def test_scipy_agrees_on_the_elastic_net_prox():
    theta = (0.5, 0.8)
    obj = lambda w: 0.5 * np.sum((w - V) ** 2) + ETA * float(_elastic(w, theta))
    ref = minimize(obj, np.zeros(V.size), method="Powell", options={"xtol": 1e-10})
    np.testing.assert_allclose(_call("elastic_net", V, theta), ref.x, atol=1e-6)


def test_none_theta_means_the_default_or_is_refused_by_name():
    """jaxopt passes `hyperparams=None` for "the default": the projections with a
    default radius take it; the penalties, which have none, say so."""
    v = jnp.array([1.0, 0.5, -1.0])
    for project in (bx.prox.simplex, bx.prox.l1_ball, bx.prox.l2_ball):
        assert jnp.array_equal(project(v, None), project(v, 1.0))
    for prox in (bx.prox.l1, bx.prox.elastic_net, bx.prox.group_l1, bx.prox.box):
        with pytest.raises(TypeError, match=f"prox.{prox.__name__}`: `theta`"):
            prox(v, None)
