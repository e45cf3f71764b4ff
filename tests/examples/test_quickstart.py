"""The README's main job runs end to end and learns something."""

import re

from ._run import run_example


def _run(tmp_path, *flags):
    stdout = run_example(
        "quickstart.py", "--steps", "15", "--out", str(tmp_path), *flags
    )
    losses = [float(v) for v in re.findall(r"validation loss (\d+\.\d+)", stdout)]
    return stdout, losses


def test_quickstart_scalar(tmp_path):
    stdout, (before, after, grid_best) = _run(tmp_path)
    assert after < before - 0.005  # the hypergradient steps reduce the outer loss
    assert after < grid_best + 0.005  # and land near the best single λ
    assert (tmp_path / "quickstart.png").stat().st_size > 10_000
    assert "test accuracy" in stdout


def test_quickstart_per_feature(tmp_path):
    _, (before, after, _) = _run(tmp_path, "--per-feature")
    assert after < before - 0.01
    assert (tmp_path / "quickstart_per_feature.png").exists()
