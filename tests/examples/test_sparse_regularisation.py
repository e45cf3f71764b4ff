"""The sparse-regularisation example (LassoHO, ElasticNetHO, SparseLogisticHO
against scikit-learn's CV estimators) runs end to end, each within 1% of (or
below) its reference grid's best cross-validation error."""

import re

import pytest

from ._run import run_example


@pytest.mark.slow
def test_sparse_regularisation(tmp_path):
    stdout = run_example(
        "sparse_regularisation.py", "--p", "2000", "--out", str(tmp_path)
    )
    ratio = r"100-point grid{}: ([\d.]+)$"
    ratios = [float(r) for r in re.findall(ratio.format(""), stdout, re.M)]
    assert len(ratios) == 3 and all(r <= 1.01 for r in ratios)
    # liblinear's tol-1e-4 solves sit ~1% below the exact log-loss curve; the
    # exact 100-point grid is checked in tests/test_sklearn_estimators.py
    (logistic,) = re.findall(ratio.format(r" \(liblinear, tol 1e-4\)"), stdout, re.M)
    assert float(logistic) <= 1.02
    assert "breast_cancer, L1 logistic" in stdout
    assert (tmp_path / "sparse_regularisation.png").stat().st_size > 10_000
