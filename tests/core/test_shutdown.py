"""The shutdown countdown of a worker: which tile ends a request's work once SIGTERM came."""
from __future__ import annotations

from dataclasses import replace

import pytest

from core import pipeline, shutdown
from core.models.speed import Throughput
from core.options import UpscaleOptions
from tests.conftest import sample_bytes


@pytest.fixture
def stopping(monkeypatch):
    """A worker told to stop, whose requests have 10 s left before its answer margin."""
    monkeypatch.setattr(shutdown, "_stop_at", None)  # the countdown is the process's: restored after the test
    shutdown.begin(shutdown.ANSWER_MARGIN_S + 10, running=1, waiting=0)


def test_without_a_stop_no_tile_is_refused(monkeypatch):
    monkeypatch.setattr(shutdown, "_stop_at", None)
    shutdown.check(0, 10, last_call_s=1e9)


def test_a_tile_that_ends_within_the_grace_period_runs(stopping):
    shutdown.check(3, 10, last_call_s=1.0)


def test_a_tile_as_long_as_the_last_that_would_end_past_the_grace_period_is_not_started(stopping):
    with pytest.raises(shutdown.ShuttingDown, match="^the server is shutting down: stopped after 3 of 10 tiles"):
        shutdown.check(3, 10, last_call_s=11.0)


def test_a_first_tile_whose_estimate_would_end_past_the_grace_period_is_not_started(stopping):
    with pytest.raises(shutdown.ShuttingDown, match="stopped after 0 of 10 tiles"):
        shutdown.check(0, 10, last_call_s=0.001, estimated_call_s=11.0)


def test_finished_work_is_kept_however_late(stopping):
    shutdown.check(10, 10, last_call_s=1e9)


def test_a_second_sigterm_does_not_move_the_end_of_the_grace_period(monkeypatch):
    clock = iter([100.0, 130.0])
    monkeypatch.setattr(shutdown, "_stop_at", None)
    monkeypatch.setattr(shutdown, "_clock", lambda: next(clock))
    shutdown.begin(shutdown.ANSWER_MARGIN_S + 50, running=1, waiting=0)
    shutdown.begin(shutdown.ANSWER_MARGIN_S + 50, running=1, waiting=0)  # 30 s later
    assert shutdown._stop_at == 150.0


def test_a_request_whose_first_window_would_end_past_the_grace_period_ends_before_it(service, monkeypatch):
    """It just got the slot when SIGTERM came: the time since its last check (its decoding) says nothing of a
    window's, and the estimate of one (20 s) is past the 10 s left."""
    monkeypatch.setattr(shutdown, "_stop_at", None)
    monkeypatch.setattr(shutdown, "_clock", lambda: 1000.0)
    shutdown.begin(shutdown.ANSWER_MARGIN_S + 10, running=1, waiting=0)
    plan = service.prepare(sample_bytes("camera.png"), UpscaleOptions())
    plan = replace(plan, network=replace(plan.network, throughput=Throughput(per_call_s=20.0, per_pixel_s=0.0)))
    with pytest.raises(shutdown.ShuttingDown, match=f"stopped after 0 of {plan.tile_count} tiles"):
        pipeline.run(plan, service.settings)
