"""The shutdown countdown of a worker: which tile ends a request's work once SIGTERM came."""
from __future__ import annotations

import pytest

from core import shutdown


@pytest.fixture
def stopping(monkeypatch):
    """A worker told to stop, whose requests have 10 s left before its answer margin."""
    monkeypatch.setattr(shutdown, "_stop_at", None)  # the countdown is the process's: restored after the test
    shutdown.begin(shutdown.ANSWER_MARGIN_S + 10, running=1, waiting=0)


def test_without_a_stop_no_tile_is_refused(monkeypatch):
    monkeypatch.setattr(shutdown, "_stop_at", None)
    shutdown.check(0, 10, next_tile_s=1e9)


def test_a_tile_that_ends_within_the_grace_period_runs(stopping):
    shutdown.check(3, 10, next_tile_s=1.0)


def test_a_tile_as_long_as_the_last_that_would_end_past_the_grace_period_is_not_started(stopping):
    with pytest.raises(shutdown.ShuttingDown, match="^the server is shutting down: stopped after 3 of 10 tiles"):
        shutdown.check(3, 10, next_tile_s=11.0)


def test_finished_work_is_kept_however_late(stopping):
    shutdown.check(10, 10, next_tile_s=1e9)


def test_a_second_sigterm_does_not_move_the_end_of_the_grace_period(monkeypatch):
    clock = iter([100.0, 130.0])
    monkeypatch.setattr(shutdown, "_stop_at", None)
    monkeypatch.setattr(shutdown, "_clock", lambda: next(clock))
    shutdown.begin(shutdown.ANSWER_MARGIN_S + 50, running=1, waiting=0)
    shutdown.begin(shutdown.ANSWER_MARGIN_S + 50, running=1, waiting=0)  # 30 s later
    assert shutdown._stop_at == 150.0
