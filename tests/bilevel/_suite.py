"""A suite of bilevel problems with exact solutions (used by the tests and by
`benchmarks/bilevel_suite.py`).

Every `SuiteProblem` carries the exact value `h(x) = f(x, y*(x))` (dense solves, a
tightly converged Newton solve, or a closed form) and its minimum `h*` (a
quasi-Newton solve on the exact `h`, or a closed form), so a run is scored by its
relative suboptimality `(h(x) - h*) / (h(x0) - h*)`.

Kinds:

- `quadratic`: inner `½yᵀHy - yᵀ(Bx + c)`, outer `½‖y - y_t‖² + μ/2 ‖x‖²`, over a
  grid of coupling `‖B‖`, inner condition number, dimensions and `μ`; the issue's
  31×31 instance (`H = MMᵀ/31 + ½I`, `B` 31×7) among them.
- `ridge` / `logistic`: regularisation selection on scikit-learn bundled data
  (log of one strength or of one strength per feature), validation loss outside.
- `several`: a lower level with a continuum of solutions (`y2` free), scored
  against the optimistic value `min_{y ∈ S(x)} f`.
- `constrained`: lower level `min ½‖y - a‖² s.t. y <= x` with a box on `x`
  (closed form, `y* = min(x, a)`), for LV-HBA.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import bilevax as bx


@dataclasses.dataclass
class SuiteProblem:
    name: str
    kind: str
    problem: bx.bilevel.BilevelProblem
    x0: jnp.ndarray
    y0: object
    data: object = None
    h: Callable = None  # exact h(x)
    h_star: float = 0.0
    lvhba: dict = dataclasses.field(default_factory=dict)  # LVHBA(**lvhba)
    finite_sum: bool = False

    def rel_subopt(self, x) -> float:
        h0 = float(self.h(self.x0))
        return (float(self.h(x)) - self.h_star) / (h0 - self.h_star)


def _minimise(h, x0) -> float:
    """`min h` by scipy's BFGS on the exact value and gradient, polished twice."""
    fun = jax.jit(jax.value_and_grad(h))
    x = np.asarray(x0, np.float64)
    for _ in range(3):
        res = scipy.optimize.minimize(
            lambda v: tuple(np.asarray(a, np.float64) for a in fun(jnp.asarray(v))),
            x,
            jac=True,
            method="L-BFGS-B",
            options=dict(maxiter=20000, gtol=1e-13, ftol=1e-16, maxcor=50),
        )
        x = res.x
    return float(h(jnp.asarray(x)))


def quadratic(name, dx, dy, coupling, cond, mu, seed=0, hessian=None, B=None):
    """The quadratic kind; `hessian`/`B` override the random spectrum/coupling."""
    rng = np.random.default_rng(seed)
    if hessian is None:
        q, _ = np.linalg.qr(rng.normal(size=(dy, dy)))
        hessian = q @ np.diag(np.geomspace(1.0, cond, dy)) @ q.T
    if B is None:
        B = rng.normal(size=(dy, dx))
        B = coupling * B / np.linalg.norm(B, 2)
    H, B = jnp.asarray(hessian), jnp.asarray(B)
    c, y_t = jnp.asarray(rng.normal(size=dy)), jnp.asarray(rng.normal(size=dy))
    inner = lambda x, y, _: 0.5 * y @ H @ y - y @ (B @ x + c)
    outer = lambda x, y, _: 0.5 * jnp.sum((y - y_t) ** 2) + 0.5 * mu * x @ x
    h = lambda x: outer(x, jnp.linalg.solve(H, B @ x + c), None)
    x0 = jnp.zeros(dx)
    p = SuiteProblem(
        name, "quadratic", bx.bilevel.BilevelProblem(outer, inner), x0, jnp.zeros(dy)
    )
    p.data, p.h = None, h
    # h is quadratic: h* by a dense solve
    K = jnp.linalg.solve(H, B)
    xs = jnp.linalg.solve(
        K.T @ K + mu * jnp.eye(dx), K.T @ (y_t - jnp.linalg.solve(H, c))
    )
    p.h_star = float(h(xs))
    return p


def issue_quadratic():
    """The issue's instance: `H = MMᵀ/31 + ½I`, `B` 31×7 standard normal,
    outer `½‖y - y_t‖² + 0.05‖x‖²` (μ = 0.1), x0 = 0."""
    rng = np.random.default_rng(31)
    M = rng.normal(size=(31, 31))
    return quadratic(
        "issue-31x7",
        7,
        31,
        None,
        None,
        0.1,
        seed=31,
        hessian=M @ M.T / 31 + 0.5 * np.eye(31),
        B=rng.normal(size=(31, 7)),
    )


def _split(X, t, seed=0):
    rng = np.random.default_rng(seed)
    X = (X - X.mean(0)) / X.std(0)
    idx = rng.permutation(len(t))
    half = len(t) // 2
    tr, va = idx[:half], idx[half:]
    return (jnp.asarray(X[tr]), jnp.asarray(t[tr])), (
        jnp.asarray(X[va]),
        jnp.asarray(t[va]),
    )


def ridge(name, loader, per_feature, target=None):
    """Ridge regression, inner `mean((Xw - t)²) + Σ exp(x) w²`, outer the
    validation mean squared error; `y*` by a dense solve."""
    X, t = loader(return_X_y=True)
    train, val = _split(X, np.asarray(t, float) if target is None else target(X, t))
    d = train[0].shape[1]
    inner = lambda x, w, b: (
        jnp.mean((b[0] @ w - b[1]) ** 2) + jnp.sum(jnp.exp(x) * w**2)
    )
    outer = lambda x, w, b: jnp.mean((b[0] @ w - b[1]) ** 2)

    def y_star(x):
        A, t_ = train
        n = A.shape[0]
        return jnp.linalg.solve(
            A.T @ A / n + jnp.diag(jnp.exp(x) * jnp.ones(d)), A.T @ t_ / n
        )

    x0 = jnp.zeros(d if per_feature else ())
    h = lambda x: outer(x, y_star(x), val)
    p = SuiteProblem(
        name,
        "ridge",
        bx.bilevel.BilevelProblem(outer, inner),
        x0,
        jnp.zeros(d),
        (train, val),
        h,
        finite_sum=True,
    )
    p.h_star = _minimise(h, x0)
    return p


def logistic(name, loader, per_feature):
    """L2-regularised logistic regression (labels ±1), inner mean logistic loss
    `+ ½ Σ exp(x) w²`, outer the validation logistic loss; `y*` by 30 Newton
    steps (converged to machine precision, differentiable)."""
    X, t = loader(return_X_y=True)
    train, val = _split(X, 2.0 * np.asarray(t, float) - 1.0)
    d = train[0].shape[1]
    loss = lambda w, b: jnp.mean(jnp.logaddexp(0.0, -b[1] * (b[0] @ w)))
    inner = lambda x, w, b: loss(w, b) + 0.5 * jnp.sum(jnp.exp(x) * w**2)
    outer = lambda x, w, b: loss(w, b)

    def y_star(x):
        g = lambda w: inner(x, w, train)
        newton = lambda w, _: (
            w - jnp.linalg.solve(jax.hessian(g)(w), jax.grad(g)(w)),
            None,
        )
        return jax.lax.scan(newton, jnp.zeros(d), None, length=30)[0]

    x0 = jnp.zeros(d if per_feature else ())
    h = lambda x: outer(x, y_star(x), val)
    p = SuiteProblem(
        name,
        "logistic",
        bx.bilevel.BilevelProblem(outer, inner),
        x0,
        jnp.zeros(d),
        (train, val),
        h,
        finite_sum=True,
    )
    p.h_star = _minimise(h, x0)
    return p


def several_solutions(name="several-solutions", dx=5, d1=20, d2=10, mu=0.1, seed=3):
    """Inner `½‖y1 - Bx - c‖²` (`y2` free: a continuum of solutions), outer
    `½‖y - y_t‖² + μ/2‖x‖²`; optimistic `h(x) = ½‖Bx + c - t1‖² + μ/2‖x‖²`."""
    rng = np.random.default_rng(seed)
    B, c = jnp.asarray(rng.normal(size=(d1, dx))), jnp.asarray(rng.normal(size=d1))
    t1, t2 = jnp.asarray(rng.normal(size=d1)), jnp.asarray(rng.normal(size=d2))
    inner = lambda x, y, _: 0.5 * jnp.sum((y[0] - B @ x - c) ** 2)
    outer = lambda x, y, _: (
        0.5 * jnp.sum((y[0] - t1) ** 2)
        + 0.5 * jnp.sum((y[1] - t2) ** 2)
        + 0.5 * mu * x @ x
    )
    h = lambda x: 0.5 * jnp.sum((B @ x + c - t1) ** 2) + 0.5 * mu * x @ x
    xs = jnp.linalg.solve(B.T @ B + mu * jnp.eye(dx), B.T @ (t1 - c))
    x0 = jnp.zeros(dx)
    return SuiteProblem(
        name,
        "several",
        bx.bilevel.BilevelProblem(outer, inner),
        x0,
        (jnp.zeros(d1), jnp.zeros(d2)),
        None,
        h,
        float(h(xs)),
    )


def constrained_box(
    name="lvhba-box-4d",
    a=(1.0, -0.5, 2.0, 0.3),
    b=(2.0, 0.0, -1.0, 1.5),
    d=(0.5, 1.0, 3.0, -1.0),
    box=(-1.0, 2.5),
    scale_f=1.0,
    scale_g=1.0,
):
    """Lower level `min ½‖y - a‖² s.t. y <= x`, outer `½‖x - b‖² + ½‖y - d‖²`,
    `x` in a box: `y* = min(x, a)`, `h` separable, `h*` by a fine grid per
    coordinate (2e6 points); `scale_f`, `scale_g` rescale the levels."""
    a, b, d = (jnp.asarray(v) for v in (a, b, d))
    inner = lambda x, y, _: 0.5 * jnp.sum((y - a) ** 2)
    outer = lambda x, y, _: 0.5 * jnp.sum((x - b) ** 2) + 0.5 * jnp.sum((y - d) ** 2)
    h = lambda x: outer(x, jnp.minimum(x, a), None)
    grid = np.linspace(*box, 2_000_001)
    per = lambda i: (
        0.5 * (grid - b[i]) ** 2 + 0.5 * (np.minimum(grid, a[i]) - d[i]) ** 2
    )
    h_star = float(sum(per(i).min() for i in range(a.shape[0])))
    problem = bx.bilevel.BilevelProblem(
        outer, inner, inner_constraints=lambda x, y: y - x
    )
    sets = bx.bilevel.sets
    x0 = jnp.zeros(a.shape[0])
    return SuiteProblem(
        name,
        "constrained",
        problem,
        x0,
        jnp.zeros(a.shape[0]),
        None,
        h,
        h_star,
        dict(outer_set=sets.Box(*box), affine=True),
    )


def constrained_active():
    """The 1-D toy with an active coupled constraint: lower level `min ½θ² - 4θ s.t.
    θ <= x`, outer `½(x - 1)² + ½(θ - 3)²`; `x* = θ* = 2`, `h* = 1`."""
    inner = lambda x, y, _: jnp.sum(0.5 * y**2 - 4 * y)
    outer = lambda x, y, _: 0.5 * jnp.sum((x - 1) ** 2) + 0.5 * jnp.sum((y - 3) ** 2)
    h = lambda x: outer(x, jnp.minimum(x, 4.0), None)
    problem = bx.bilevel.BilevelProblem(
        outer, inner, inner_constraints=lambda x, y: y - x
    )
    return SuiteProblem(
        "active-1d",
        "constrained",
        problem,
        jnp.zeros(1),
        jnp.zeros(1),
        None,
        h,
        1.0,
        dict(affine=True),
    )


def _datasets():
    import sklearn.datasets as skd

    return skd


def fast_problems():
    """Small problems for the default test run."""
    return [
        quadratic("quad-B1-k10", 5, 20, 1.0, 10.0, 0.1),
        issue_quadratic(),
        constrained_active(),
    ]


def _catalogue():
    """`name -> constructor` of the whole suite (built lazily: the data sets and
    the reference solves take a few seconds)."""
    skd = _datasets()
    quad = {
        f"quad-B{b:g}-k{k:g}": (
            lambda b=b, k=k: quadratic(f"quad-B{b:g}-k{k:g}", 10, 50, b, k, 0.1)
        )
        for b in (0.1, 1.0, 10.0)
        for k in (1.0, 30.0, 1e3)
    }
    return {
        "issue-31x7": issue_quadratic,
        **quad,
        "quad-cond300": lambda: quadratic(
            "quad-cond300", 10, 50, 1.0, 300.0, 0.1, seed=1
        ),
        "quad-strong-coupling": lambda: quadratic(
            "quad-strong-coupling", 10, 50, 10.0, 10.0, 0.01, seed=2
        ),
        "quad-mu1": lambda: quadratic("quad-mu1", 10, 50, 1.0, 10.0, 1.0, seed=4),
        "quad-100x500": lambda: quadratic(
            "quad-100x500", 100, 500, 1.0, 30.0, 0.1, seed=5
        ),
        "ridge-wine-1": lambda: ridge("ridge-wine-1", skd.load_wine, False),
        "ridge-diabetes-per-feature": lambda: ridge(
            "ridge-diabetes-per-feature", skd.load_diabetes, True
        ),
        "logistic-cancer-1": lambda: logistic(
            "logistic-cancer-1", skd.load_breast_cancer, False
        ),
        "logistic-cancer-per-feature": lambda: logistic(
            "logistic-cancer-per-feature", skd.load_breast_cancer, True
        ),
        "several-solutions": several_solutions,
        "lvhba-box-4d": constrained_box,
        "lvhba-box-4d-scaled": lambda: constrained_box(
            "lvhba-box-4d-scaled", scale_f=100.0, scale_g=0.01
        ),
        "active-1d": constrained_active,
    }


NAMES = list(_catalogue())


def build(name):
    """One suite problem by name."""
    return _catalogue()[name]()


def all_problems():
    """The whole suite."""
    return [build(name) for name in NAMES]
