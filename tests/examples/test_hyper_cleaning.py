"""The hyper-cleaning example on scikit-learn digits: every bilevel method cleans
the labels (accuracy far above no cleaning, corrupted samples found)."""

import re

from ._run import run_example


def test_hyper_cleaning_digits(tmp_path):
    stdout = run_example(
        "hyper_cleaning.py",
        "--dataset",
        "digits",
        "--steps",
        "200",
        "--out",
        str(tmp_path),
    )
    acc = lambda name: float(
        re.search(rf"^{name}\s+test accuracy (\d\.\d+)", stdout, re.M)[1]
    )
    baseline, oracle = acc("no cleaning"), acc("clean-only oracle")
    validation_only = acc("validation only")
    assert oracle > baseline + 0.2
    for method in ("ift", "f2sa", "penalty"):
        line = re.search(
            rf"^{method}\s+test accuracy (\d\.\d+), F1 (\d\.\d+).*"
            r"refit on kept \+ validation (\d\.\d+)",
            stdout,
            re.M,
        )
        accuracy, f1, refit = float(line[1]), float(line[2]), float(line[3])
        assert accuracy >= oracle - 0.03, method
        assert accuracy > baseline + 0.15, method
        assert f1 >= 0.85, method
        assert refit >= validation_only - 0.01, method
    assert (tmp_path / "hyper_cleaning_digits.png").stat().st_size > 10_000
