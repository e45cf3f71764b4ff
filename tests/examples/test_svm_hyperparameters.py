"""The SVM example (LV-HBA, the KKT-implicit route and grid search on per-sample
slack bounds) runs end to end; LV-HBA beats the grid's validation loss."""

import re

from ._run import run_example


def test_svm_hyperparameters_synthetic(tmp_path):
    stdout = run_example(
        "svm_hyperparameters.py",
        "--dataset",
        "synthetic",
        "--lvhba-steps",
        "400",
        "--kkt-steps",
        "20",
        "--out",
        str(tmp_path),
    )
    row = lambda name: [
        float(v)
        for v in re.search(
            rf"^{name}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", stdout, re.M
        ).groups()
    ]
    grid = row(r"grid search \(one C\)")
    lvhba, refit = row("LV-HBA"), row("LV-HBA, refit at its c")
    assert lvhba[0] <= grid[0]  # validation loss
    assert refit[0] <= grid[0]
    assert lvhba[2] >= grid[2] - 0.01  # test accuracy
    assert "KKT-implicit (AL + IFT)" in stdout
    assert (tmp_path / "svm_hyperparameters_synthetic.png").stat().st_size > 10_000
