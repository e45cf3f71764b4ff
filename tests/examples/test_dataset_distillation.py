"""The dataset distillation example runs end to end on digits (KIP; the
linearised network is tested in tests/bilevel/test_distillation.py), the distilled
set beats the random subset, plots are saved."""

import re

from ._run import run_example


def test_dataset_distillation_example(tmp_path):
    model, steps = "kernel", "100"
    stdout = run_example(
        "dataset_distillation.py",
        "--model",
        model,
        "--ipc",
        "1",
        "--steps",
        steps,
        "--eval-steps",
        "200",
        "--out",
        str(tmp_path),
    )
    random, distilled = (
        float(v)
        for v in re.search(
            r"random subset ([\d.]+) -> distilled ([\d.]+)", stdout
        ).groups()
    )
    assert distilled > random + 0.05, stdout
    assert (
        tmp_path / f"dataset_distillation_digits_{model}_1.png"
    ).stat().st_size > 5_000
    assert (
        tmp_path / f"dataset_distillation_digits_{model}.png"
    ).stat().st_size > 10_000
