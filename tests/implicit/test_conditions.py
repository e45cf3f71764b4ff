import jax
import jax.numpy as jnp
import lineax as lx

from bilevax.implicit import conditions, custom_fixed_point, custom_root


def test_stationarity_is_the_gradient_and_tagged_spd():
    f = lambda y, a: jnp.sum(a * y**2) + jnp.sum(y)
    F = conditions.stationarity(f)
    y, a = jnp.array([1.0, -2.0]), jnp.array([2.0, 3.0])
    assert jnp.allclose(F(y, a), jax.grad(f)(y, a))
    assert lx.symmetric_tag in F.tags and lx.positive_semidefinite_tag in F.tags


def _box_problem():
    """min_y ½ Σ a_i (y_i - θ_i)² over the box [lo, hi]: y* = clip(θ, lo, hi)."""
    a = jnp.array([1.0, 2.0, 0.5, 3.0])
    f = lambda y, theta: 0.5 * jnp.sum(a * (y - theta) ** 2)
    project = lambda v, box: jnp.clip(v, box[0], box[1])
    return f, project


def test_projected_gradient_derivatives_match_clip():
    f, project = _box_problem()
    theta = jnp.array([-0.5, 0.3, 0.7, 2.0])  # below, inside, inside, above
    box = (jnp.zeros(4), jnp.ones(4))

    @custom_root(conditions.projected_gradient(f, project, stepsize=0.25))
    def solve(init, box, theta):
        return jnp.clip(theta, box[0], box[1])

    d_theta = jax.jacobian(solve, argnums=2)(None, box, theta)
    assert jnp.allclose(d_theta, jnp.diag(jnp.array([0.0, 1.0, 1.0, 0.0])), atol=1e-12)
    d_lo, d_hi = jax.jacobian(solve, argnums=1)(None, box, theta)
    assert jnp.allclose(d_lo, jnp.diag(jnp.array([1.0, 0, 0, 0])), atol=1e-12)
    assert jnp.allclose(d_hi, jnp.diag(jnp.array([0, 0, 0, 1.0])), atol=1e-12)


def test_prox_gradient_soft_threshold_derivatives():
    """min_y ½‖y - θ‖² + λ‖y‖₁: y* = soft(θ, λ), dy*/dλ = -sign(y*) on the support."""
    f = lambda y, theta: 0.5 * jnp.sum((y - theta) ** 2)
    soft = lambda v, lam, s: jnp.sign(v) * jnp.maximum(jnp.abs(v) - s * lam, 0.0)
    theta = jnp.array([2.0, -0.1, -3.0, 0.4])

    @custom_root(conditions.prox_gradient(f, soft, stepsize=0.5))
    def solve(init, lam, theta):
        return soft(theta, lam, 1.0)

    # Python-float hyperparameter: -1 from y_0 > 0 and +1 from y_2 < 0.
    d_lam = jax.grad(lambda lam: jnp.sum(solve(None, lam, theta)))(0.5)
    assert jnp.allclose(d_lam, 0.0, atol=1e-12)
    d_lam_first = jax.grad(lambda lam: solve(None, lam, theta)[0])(0.5)
    assert jnp.allclose(d_lam_first, -1.0)
    d_lam_vec = jax.jacobian(solve, argnums=1)(None, 0.5, theta)
    assert jnp.allclose(d_lam_vec, jnp.array([-1.0, 0.0, 1.0, 0.0]), atol=1e-12)


def test_custom_fixed_point_matches_closed_form():
    """y = ½ M y + θ has y* = (I - ½M)⁻¹ θ."""
    M = jnp.array([[0.5, 0.2, 0.0], [0.1, 0.3, 0.4], [0.0, 0.2, 0.6]])
    T = lambda y, theta: 0.5 * M @ y + theta

    @custom_fixed_point(T)
    def solve(init, theta):
        return jax.lax.fori_loop(0, 200, lambda _, y: T(y, theta), init)

    jac = jax.jacrev(solve, argnums=1)(jnp.zeros(3), jnp.ones(3))
    assert jnp.allclose(jac, jnp.linalg.inv(jnp.eye(3) - 0.5 * M), rtol=1e-9)
    jac_fwd = jax.jacfwd(solve, argnums=1)(jnp.zeros(3), jnp.ones(3))
    assert jnp.allclose(jac_fwd, jac, rtol=1e-9)


def test_kkt_condition_is_active_set_aware():
    """Projection onto {y : y <= 0, sum(y) = s}: derivatives through the KKT
    conditions hold active inequalities fixed and free the inactive ones."""
    f = lambda y, theta, s: 0.5 * jnp.sum((y - theta) ** 2)
    eq = lambda y, theta, s: jnp.array([jnp.sum(y) - s])
    ineq = lambda y, theta, s: y  # y <= 0
    condition = conditions.kkt(f, eq, ineq)

    @custom_root(condition, lx.LU())
    def solve(z0, theta, s):
        # closed form for theta = (-1, -2, 3), s = -2.5: y3 is held at 0 and the
        # others share the remaining sum
        del z0
        shift = (s - theta[0] - theta[1]) / 2
        y = jnp.array([theta[0] + shift, theta[1] + shift, 0.0])
        nu = -shift
        mu = jnp.array([0.0, 0.0, theta[2] - nu])
        return y, {"eq": jnp.array([nu]), "ineq": mu}

    theta, s = jnp.array([-1.0, -2.0, 3.0]), -2.5
    z0 = (jnp.zeros(3), {"eq": jnp.zeros(1), "ineq": jnp.zeros(3)})
    y, mult = solve(z0, theta, s)
    residual = condition((y, mult), theta, s)
    assert jnp.allclose(residual[0], 0.0, atol=1e-6)
    assert float(mult["ineq"][2]) > 0  # active
    jac = jax.jacobian(lambda t: solve(z0, t, s)[0])(theta)
    expected = jnp.array([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    assert jnp.allclose(jac, expected, atol=1e-6)
    ds = jax.grad(lambda s_: solve(z0, theta, s_)[0][0])(s)
    assert jnp.allclose(ds, 0.5, atol=1e-6)
