"""The stochastic quadratic bilevel problem of the benchopt bilevel suite.

Re-created from the recipe in ../shared/BENCHMARKS.md (not from the suite's code):
both levels are means of n rank-structured quadratic samples,

    φ_i(x, z) = ½ (w_i·z)² + ½ (v_i·x)² + (p_i·x)(q_i·z) + a_i·z + b_i·x,

so that A_i = w_i w_iᵀ, B_i = v_i v_iᵀ and C_i = p_i q_iᵀ are stored as factors.
Each algorithm runs in its stochastic form (batch 64), F2SA and the penalty method
also with SVRG variance reduction, and the deterministic IFT baseline (HOAG) on the
whole data; reported: the squared norm of the exact
hypergradient (full-batch means, float64) against outer iterations and wall time
(compile apart), and the iterations and time to reach 1e-2, 1e-4 and 1e-6 of its
starting value.

Work per outer iteration differs: HOAG uses the whole data; the SVRG forms take
two batch gradients per oracle (3 inner steps on z and on y, then the x
direction) plus three full gradients per pass over the data. Wall time (compile
apart) is the fair comparison.

SOBA, SABA, MA-SOBA, BOME and BO-REP run with batch 64 and their defaults;
MAID, like HOAG, on the whole data.

Run: python benchmarks/bilevel_quadratic.py [--config default|paper|both]
     [--steps 3000] [--seed 2442] [--out outputs] [--only SOBA,SABA]
     (also saves the curves)
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bilevax as bx

CONFIGS = {
    "default": dict(n_inner=1024, n_outer=1024, dz=100, dx=100),
    "paper": dict(n_inner=32768, n_outer=1024, dz=100, dx=10),
}


def _orthogonal(rng, d):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


def level_samples(rng, n, dz, dx, L_zz=1.0, L_xx=1.0, L_c=0.1, mu=0.1):
    """Factors of n samples of one level (see BENCHMARKS.md)."""
    U = _orthogonal(rng, dz)
    S = U @ np.diag(np.geomspace(np.sqrt(mu), np.sqrt(L_zz), dz)) @ U.T
    w = rng.normal(size=(n, dz)) @ S.T
    Ux = _orthogonal(rng, dx)
    sx = np.concatenate([[0.0], np.geomspace(np.sqrt(mu), np.sqrt(L_xx), dx - 1)])
    v = rng.normal(size=(n, dx)) @ (Ux @ np.diag(sx) @ Ux.T).T
    Ug, _, Vt = np.linalg.svd(rng.normal(size=(dx, dz)))
    D = np.zeros((dx, dz))
    k = min(dx, dz)
    D[np.arange(k), np.arange(k)] = np.geomspace(mu, L_c, k)
    r = rng.normal(size=(n, dz))
    p = r @ (Ug @ D).T  # U D r_i
    q = r @ Vt  # V r_i  (rows of Vᵀ are the columns of V)
    a = rng.normal(size=(n, dz))
    b = rng.normal(size=(n, dx))
    return dict(w=w, v=v, p=p, q=q, a=a, b=b)


def phi(x, z, s):
    """Mean of the samples in the batch `s`."""
    return jnp.mean(
        0.5 * (s["w"] @ z) ** 2
        + 0.5 * (s["v"] @ x) ** 2
        + (s["p"] @ x) * (s["q"] @ z)
        + s["a"] @ z
        + s["b"] @ x
    )


def means(s):
    n = s["w"].shape[0]
    return dict(
        zz=s["w"].T @ s["w"] / n,
        xx=s["v"].T @ s["v"] / n,
        xz=s["p"].T @ s["q"] / n,
        a=s["a"].mean(0),
        b=s["b"].mean(0),
    )


def exact_hypergradient(x, g, f):
    """∇h(x) with full-batch means (float64 NumPy)."""
    z = -np.linalg.solve(g["zz"], g["a"] + g["xz"].T @ x)
    grad_z = f["zz"] @ z + f["xz"].T @ x + f["a"]
    grad_x = f["xx"] @ x + f["xz"] @ z + f["b"]
    return grad_x + g["xz"] @ (-np.linalg.solve(g["zz"], grad_z))


def hessian_of_h(g, f):
    J = -np.linalg.solve(g["zz"], g["xz"].T)  # dz*/dx
    return f["xx"] + f["xz"] @ J + J.T @ f["xz"].T + J.T @ f["zz"] @ J


def run_one(name, algorithm, problem, x0, z0, data, steps, record_every, metric):
    state = algorithm.init(
        problem, x0, z0, bx.bilevel.BilevelData(*data), jax.random.key(0)
    )
    run = jax.jit(
        lambda st, key: algorithm.run(
            problem,
            x0,
            z0,
            data,
            key=key,
            num_steps=record_every,
            state=st,
            throw=False,  # a failed run is reported below by its status
        )
    )
    start = time.perf_counter()
    jax.block_until_ready(run(state, jax.random.key(1)))
    compile_s = time.perf_counter() - start
    m0 = metric(x0)
    its, times, values = [0], [0.0], [1.0]
    elapsed = 0.0
    for c in range(steps // record_every):
        start = time.perf_counter()
        res = run(state, jax.random.fold_in(jax.random.key(2), c))
        jax.block_until_ready(res)
        elapsed += time.perf_counter() - start
        state = res.state
        its.append((c + 1) * record_every)
        times.append(elapsed)
        values.append(metric(np.asarray(res.x, np.float64)) / m0)
        if res.result != bx.bilevel.RESULTS.successful:
            print(f"  {name}: {res.result}")
            break
    return dict(name=name, compile=compile_s, its=its, times=times, values=values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", choices=["default", "paper", "both"], default="both"
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--record-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=2442)
    parser.add_argument("--out", default="outputs")
    parser.add_argument(
        "--only", default="", help="comma-separated name filters, e.g. 'SOBA,SABA'"
    )
    args = parser.parse_args()
    print(
        f"bilevax {bx.__version__}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}, float32"
    )
    for config in ["default", "paper"] if args.config == "both" else [args.config]:
        c = CONFIGS[config]
        rng = np.random.default_rng(args.seed)
        inner = level_samples(rng, c["n_inner"], c["dz"], c["dx"])
        outer = level_samples(rng, c["n_outer"], c["dz"], c["dx"])
        g, f = means(inner), means(outer)
        eig = np.linalg.eigvalsh(hessian_of_h(g, f))
        x0 = -2.0 * np.ones(c["dx"])
        metric = lambda x, g=g, f=f: float(np.sum(exact_hypergradient(x, g, f) ** 2))
        print(
            f"\n== {config}: n_inner={c['n_inner']}, n_outer={c['n_outer']}, "
            f"dz={c['dz']}, dx={c['dx']}; eig(Ā) in "
            f"[{np.linalg.eigvalsh(g['zz'])[0]:.3f}, "
            f"{np.linalg.eigvalsh(g['zz'])[-1]:.3f}], Hessian of h in "
            f"[{eig[0]:.3f}, {eig[-1]:.3f}], starting metric {metric(x0):.1f}"
        )
        to32 = lambda s: {k: jnp.asarray(v, jnp.float32) for k, v in s.items()}
        data = (to32(inner), to32(outer))
        problem = bx.bilevel.BilevelProblem(outer=phi, inner=phi)
        lr = float(1.0 / eig[-1])
        b = args.batch_size
        steps = args.steps
        algorithms = {
            "HOAG (deterministic IFT)": bx.bilevel.HOAG(
                inner_solver=bx.bilevel.GradientDescent(2000)
            ),
            # Stochastic IFT: a batch's inner Hessian has rank <= b, so the adjoint
            # is a truncated Neumann series (bounded on singular systems), not CG.
            f"IFT, batch {b}": bx.bilevel.HypergradientDescent(
                optax.sgd(optax.cosine_decay_schedule(0.5 * lr, steps)),
                batch_size=b,
                inner_solver=bx.bilevel.GradientDescent(20),
                adjoint=bx.implicit.ImplicitAdjoint(bx.implicit.Neumann(20)),
            ),
            f"F2SA, batch {b}": bx.bilevel.F2SA(
                lr_outer=lr, lambda0=10.0, lambda_growth=10.0, batch_size=b
            ),
            f"F2SA-SVRG, batch {b}": bx.bilevel.F2SA(
                lr_outer=0.5 * lr,
                lambda0=10.0,
                lambda_growth=1.0,
                lambda_power=1.0,
                noise="none",
                outer_decay=0.0,
                inner_steps=3,
                batch_size=b,
                variance_reduction="svrg",
            ),
            f"penalty, batch {b}": bx.bilevel.PenaltyMethod(
                gamma_max=100.0, lr_outer=0.5 * lr, batch_size=b
            ),
            f"penalty-SVRG, batch {b}": bx.bilevel.PenaltyMethod(
                gamma_max=100.0,
                lr_outer=0.5 * lr,
                y_steps=3,
                z_steps=3,
                batch_size=b,
                variance_reduction="svrg",
            ),
            # the single-loop family and the adaptive methods, with their
            # defaults (steps from constants they estimate at the start)
            f"SOBA, batch {b}": bx.bilevel.SOBA(batch_size=b),
            f"SABA, batch {b}": bx.bilevel.SABA(batch_size=b),
            f"MA-SOBA, batch {b}": bx.bilevel.MASOBA(batch_size=b),
            f"BOME, batch {b}": bx.bilevel.BOME(batch_size=b),
            f"BO-REP, batch {b}": bx.bilevel.BOREP(batch_size=b),
            "MAID (deterministic)": bx.bilevel.MAID(inner_steps=2000),
        }
        if args.only:
            algorithms = {
                k: v
                for k, v in algorithms.items()
                if any(word.lower() in k.lower() for word in args.only.split(","))
            }
        x0j, z0 = jnp.asarray(x0, jnp.float32), jnp.zeros(c["dz"], jnp.float32)
        results = [
            run_one(name, alg, problem, x0j, z0, data, steps, args.record_every, metric)
            for name, alg in algorithms.items()
        ]
        print(
            f"{'method':28s} {'compile s':>9s} {'final':>9s}   "
            "iterations / seconds to reach 1e-2, 1e-4, 1e-6 of the start"
        )
        for r in results:
            reach = []
            for level in (1e-2, 1e-4, 1e-6):
                hit = [i for i, v in enumerate(r["values"]) if v <= level]
                reach.append(
                    "-"
                    if not hit
                    else f"{r['its'][hit[0]]} / {r['times'][hit[0]]:.2f}s"
                )
            print(
                f"{r['name']:28s} {r['compile']:9.2f} {r['values'][-1]:9.1e}   "
                + ", ".join(reach)
            )
        _plot(results, config, args.out)


def _plot(results, config, out):
    """Metric against outer iterations and against wall time, one panel each."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    import os

    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for r in results:
        axes[0].semilogy(r["its"], r["values"], label=r["name"])
        axes[1].semilogy(r["times"], r["values"], label=r["name"])
    axes[0].set_xlabel("outer iterations")
    axes[1].set_xlabel("seconds (compile apart)")
    axes[0].set_ylabel("‖∇h(x)‖² / start")
    for ax in axes:
        for level in (1e-2, 1e-4, 1e-6):
            ax.axhline(level, color="gray", lw=0.5, ls=":")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Stochastic quadratic bilevel problem, {config}")
    fig.tight_layout()
    path = os.path.join(out, f"bilevel_quadratic_{config}.png")
    fig.savefig(path, dpi=120)
    print(f"saved the curves to {os.path.abspath(path)}")


if __name__ == "__main__":
    main()
