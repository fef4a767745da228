"""Every eval scorer on every real item of ../shared/realdata/ (see tests/realdata.py): gold answers written the
ways models write them score 1, every other option or a wrong value scores 0. Run with ``-s`` to see the table
(or ``python -m tests.realdata``)."""

from __future__ import annotations

import pytest

from tests.realdata import REALDATA, TASK_ITEMS, run_task, table


# Geometry3K's 3,002 items repeat 839 distinct answers, each verified in a forked child: minutes of CPU. The
# default suite covers the same answers and notations through the same verifier in
# tests/test_verifier_notations.py (the full real notation table), so the per-item pass runs with -m slow.
TASKS = [pytest.param(t, marks=pytest.mark.slow) if t == "geometry3k" else t for t in TASK_ITEMS]


@pytest.mark.parametrize("task", TASKS)
def test_gold_answers_score_one_and_wrong_answers_zero_on_every_real_item(task):
    folder = REALDATA / TASK_ITEMS[task][0]
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real benchmark files live outside the repository)")
    result = run_task(task)
    print("\n" + table([result]))
    assert result.items > 0
    assert result.failures == []
    assert result.gold_ok == result.items and result.wrong_accepted == 0
