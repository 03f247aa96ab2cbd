"""A recurring problem is logged once per spell, and its end once."""

from __future__ import annotations

import logging

from daemon.problems import RecurringProblem


def test_a_flapping_problem_is_one_line_until_it_settles(caplog):
    now = [0.0]
    problem = RecurringProblem(logging.getLogger("test.problems"), "write the store", settle_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.problems"):
        for second in range(0, 100, 10):  # fails, then works, then fails again ... within the minute
            now[0] = float(second)
            problem.failed(OSError(28, "No space left on device")) if second % 20 == 0 else problem.succeeded()
        now[0] = 200.0
        problem.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["cannot write the store: No space left on device (logged once until it works again)",
                     "can write the store again, after 5 failed attempts"]
