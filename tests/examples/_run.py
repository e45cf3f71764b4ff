"""Runs an example script in a subprocess, as a user would."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_example(script: str, *args: str) -> str:
    """Run `examples/<script>` with `args`; assert it succeeds; return its stdout."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout
