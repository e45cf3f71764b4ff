"""Data-parallel bilevel runs with `jax.sharding` (samples sharded, variables
replicated) match the single-device run: on 8 CPU devices in one process, and on
2 processes joined by `jax.distributed` on localhost. Each configuration runs
`_distributed_worker.py` in a fresh interpreter (device count and distributed
initialisation are fixed at JAX start-up)."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("_distributed_worker.py")
KEYS = ["hypergradient", "hgd_x", "hgd_loss", "f2sa_x", "f2sa_loss"]


def _env(**extra):
    root = str(WORKER.parents[1])
    return dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu", **extra)


def _relative(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / "out.npz"
    subprocess.run(
        [sys.executable, str(WORKER), str(path)], env=_env(), check=True, timeout=600
    )
    return np.load(path)


def test_eight_devices_match_one(tmp_path):
    path = tmp_path / "out.npz"
    flags = "--xla_force_host_platform_device_count=8"
    subprocess.run(
        [sys.executable, str(WORKER), str(path)],
        env=_env(XLA_FLAGS=flags),
        check=True,
        timeout=600,
    )
    out = np.load(path)
    assert int(out["devices"]) == 8 and int(out["sharded_over"]) == 8
    for key in KEYS:
        assert _relative(out[key], out[f"single_{key}"]) < 1e-6, key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# slow: three more interpreters compiling the same runs (the 8-device case covers
# the sharded computation in the default run; this one adds jax.distributed)
@pytest.mark.slow
def test_two_processes_match_one(tmp_path, single):
    path, port = tmp_path / "out.npz", str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(path), str(rank), port],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    out = np.load(path)
    assert int(out["devices"]) == 2 and int(out["sharded_over"]) == 2
    for key in KEYS:
        assert _relative(out[key], single[f"single_{key}"]) < 1e-6, key
