"""The learning-rate-schedule example runs and improves on its starting schedule.

The test starts from a deliberately small constant learning rate (0.05, far below
the best constant on the grid) so that the improvement is large and not a matter of
noise; the example's own default starts from the best constant.
"""

import re

from ._run import run_example


def test_learning_rate_schedule_example(tmp_path):
    stdout = run_example(
        "learning_rate_schedule.py",
        "--steps",
        "40",
        "--meta-steps",
        "25",
        "--init-lr",
        "0.05",
        "--meta-lr",
        "0.05",
        "--out",
        str(tmp_path),
    )
    start = float(re.search(r"start: .*validation loss (\d+\.\d+)", stdout)[1])
    learned = float(
        re.search(r"learned schedule: validation loss (\d+\.\d+)", stdout)[1]
    )
    assert learned < 0.9 * start
    assert (tmp_path / "learning_rate_schedule.png").stat().st_size > 10_000
