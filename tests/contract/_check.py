"""The differentiation contract: for a function `fn(*args) -> array`, every mode of
differentiation agrees with every other and with central finite differences, with
respect to every argument, under `jit` and `vmap`.

A `Case` names the entry point it exercises (`entry`), so that the coverage test can
compare the cases against the public `__all__`s.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

CHECKS = ("jacobians", "vmap_grad", "grad_vmap_batched", "grad_vmap_shared", "hessian")


@dataclasses.dataclass(frozen=True)
class Case:
    entry: str  # the public name exercised, e.g. "implicit.custom_root"
    fn: Callable  # fn(*args) -> array (or pytree of arrays)
    make_args: Callable  # dtype -> tuple of args
    forward: bool = True  # jacfwd/jvp supported
    fd: bool = True  # finite differences are the truth (else only self-agreement)
    hessian: bool = True
    argnums: tuple | None = None  # default: every argument
    rtol: float = 1e-6
    fd_eps: float = 1e-6  # larger where the solve's own noise swamps a 1e-6 step


def _loss(fn):
    """A scalar of the output that weights every entry differently."""

    def loss(*args):
        flat, _ = ravel_pytree(fn(*args))
        weights = jnp.cos(jnp.arange(flat.size, dtype=flat.dtype))
        return jnp.sum(weights * jnp.sin(flat))

    return loss


def _close(a, b, rtol, what):
    fa, _ = ravel_pytree(a)
    fb, _ = ravel_pytree(b)
    scale = max(float(jnp.max(jnp.abs(fb))) if fb.size else 0.0, 1e-3)
    err = float(jnp.max(jnp.abs(fa - fb))) if fa.size else 0.0
    assert err <= rtol * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def _fd_grad(loss, args, i, eps):
    loss = jax.jit(loss)
    flat, unravel = ravel_pytree(args[i])
    flat = np.asarray(flat, np.float64)
    out = np.zeros_like(flat)
    for k in range(flat.size):
        e = np.zeros_like(flat)
        e[k] = eps
        plus = args[:i] + (unravel(jnp.asarray(flat + e)),) + args[i + 1 :]
        minus = args[:i] + (unravel(jnp.asarray(flat - e)),) + args[i + 1 :]
        out[k] = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
    return unravel(jnp.asarray(out))


def _perturbed(arg, k):
    return jax.tree.map(lambda a: a * (1 + 0.05 * k) + 0.01 * k, arg)


def _stack(arg, n=2):
    return jax.tree.map(
        lambda *a: jnp.stack(a), *[_perturbed(arg, k) for k in range(n)]
    )


def _replace(args, i, value):
    return args[:i] + (value,) + args[i + 1 :]


def _jacobians(case, loss, args, i, rtol, dtype):
    grad = jax.grad(loss, i)(*args)
    _close(jax.jit(jax.grad(loss, i))(*args), grad, rtol, f"jit∘grad arg {i}")
    J_rev = jax.jacrev(case.fn, i)(*args)
    if case.forward:
        _close(jax.jacfwd(case.fn, i)(*args), J_rev, rtol, f"jacfwd arg {i}")
    if case.fd and dtype == jnp.float64:
        _close(grad, _fd_grad(loss, args, i, case.fd_eps), 1e-5, f"FD arg {i}")


def _vmap_grad(case, loss, args, i, rtol, dtype):
    in_axes = tuple(0 if j == i else None for j in range(len(args)))
    got = jax.jit(jax.vmap(jax.grad(loss, i), in_axes))(
        *_replace(args, i, _stack(args[i]))
    )
    want = [
        jax.grad(loss, i)(*_replace(args, i, _perturbed(args[i], k))) for k in (0, 1)
    ]
    _close(got, jax.tree.map(lambda *a: jnp.stack(a), *want), rtol, f"vmap∘grad {i}")


def _grad_vmap_batched(case, loss, args, i, rtol, dtype):
    in_axes = tuple(0 if j == i else None for j in range(len(args)))
    batched = _stack(args[i])

    def total(b):
        return jnp.sum(jax.vmap(loss, in_axes)(*_replace(args, i, b)))

    want = jax.vmap(jax.grad(loss, i), in_axes)(*_replace(args, i, batched))
    _close(jax.grad(total)(batched), want, rtol, f"grad∘vmap batched arg {i}")


def _grad_vmap_shared(case, loss, args, i, rtol, dtype):
    """Argument `i` shared across the batch, every other one batched (iMAML's
    meta-parameters over a batch of tasks)."""
    if len(args) == 1:
        return
    stacked = tuple(a if j == i else _stack(a) for j, a in enumerate(args))
    in_axes = tuple(None if j == i else 0 for j in range(len(args)))

    def total(p):
        return jnp.sum(jax.vmap(loss, in_axes)(*_replace(stacked, i, p)))

    per = [
        jax.grad(loss, i)(
            *(a if j == i else _perturbed(a, k) for j, a in enumerate(args))
        )
        for k in (0, 1)
    ]
    want = jax.tree.map(jnp.add, *per)
    _close(jax.grad(total)(args[i]), want, rtol, f"grad∘vmap shared arg {i}")


def _hessian(case, loss, args, i, rtol, dtype):
    if case.hessian and case.forward:
        H_rr = jax.jacrev(jax.grad(loss, i), i)(*args)
        _close(jax.hessian(loss, i)(*args), H_rr, rtol, f"hessian arg {i}")


_CHECKS = {
    "jacobians": _jacobians,
    "vmap_grad": _vmap_grad,
    "grad_vmap_batched": _grad_vmap_batched,
    "grad_vmap_shared": _grad_vmap_shared,
    "hessian": _hessian,
}


def run_check(case: Case, check: str, dtype=jnp.float64, rtol=None):
    """Run `check` (one of `CHECKS`) on `case` for every differentiated argument."""
    args = case.make_args(dtype)
    rtol = case.rtol if rtol is None else rtol
    loss = _loss(case.fn)
    for i in case.argnums or tuple(range(len(args))):
        _CHECKS[check](case, loss, args, i, rtol, dtype)
