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
    ratios = [
        float(r) for r in re.findall(r"100-point grid.*: ([\d.]+)$", stdout, re.M)
    ]
    assert len(ratios) == 4
    assert all(r <= 1.01 for r in ratios)
    assert "breast_cancer, L1 logistic" in stdout
    assert (tmp_path / "sparse_regularisation.png").stat().st_size > 10_000
