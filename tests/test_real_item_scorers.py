"""Every eval scorer on every real item of ../shared/realdata/ (see tests/realdata.py): gold answers written the
ways models write them score 1, every other option or a wrong value scores 0. Run with ``-s`` to see the table
(or ``python -m tests.realdata``)."""

from __future__ import annotations

import pytest

from tests.realdata import REALDATA, TASK_ITEMS, run_task, table


@pytest.mark.parametrize("task", list(TASK_ITEMS))
def test_gold_answers_score_one_and_wrong_answers_zero_on_every_real_item(task):
    folder = REALDATA / TASK_ITEMS[task][0]
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real benchmark files live outside the repository)")
    result = run_task(task)
    print("\n" + table([result]))
    assert result.items > 0
    assert result.failures == []
    assert result.gold_ok == result.items and result.wrong_accepted == 0
