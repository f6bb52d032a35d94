"""Graceful shutdown of a worker: what is in flight finishes within SHUTDOWN_GRACE_S, or ends with a 503.

gunicorn stops accepting at SIGTERM and waits ``graceful_timeout`` (= SHUTDOWN_GRACE_S) for the requests in
flight, then kills the worker: a request still running then would lose its connection without an answer.
A tile cannot be stopped once it runs, so once the stop begins the per-tile check of every request
(core/pipeline.py) ends the work with ``ShuttingDown`` (503 + Retry-After: another pod answers the retry) where
the next tile, taking as long as the last or as its estimate (core/cost.py), whichever is longer, would end past
that moment less a few seconds; requests waiting for the slot are told at once.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from core.errors import Reason, Unavailable

log = logging.getLogger(__name__)
# Time kept back from the grace period to write the 503s before gunicorn's deadline.
ANSWER_MARGIN_S = 3.0

_stop_at: float | None = None
# The countdown's clock; the tests give their own.
_clock: Callable[[], float] = time.monotonic


class ShuttingDown(Unavailable):
    """The worker is stopping and the request could not finish within the grace period."""

    reason = Reason.SHUTTING_DOWN


def begin(grace_s: float, running: int, waiting: int) -> None:
    """Start the countdown (from the worker's SIGTERM handler) and log what is in flight.

    Once only: gunicorn kills the worker ``grace_s`` after its master's first SIGTERM, so a second one (the
    master's beside a signal sent to the whole process group) must not move the countdown's end later."""
    global _stop_at
    if _stop_at is not None:
        return
    _stop_at = _clock() + max(0.0, grace_s - ANSWER_MARGIN_S)
    log.warning("stopping: %d image(s) running and %d queued get %.0f s to finish, then end with 503",
                running, waiting, max(0.0, grace_s - ANSWER_MARGIN_S),
                extra={"running": running, "queued": waiting, "grace_s": grace_s})


def check(done: int, total: int, last_call_s: float, estimated_call_s: float = 0.0) -> None:
    """Raise ShuttingDown where the work is not done and its next call of the network would end past the grace
    period. That call is taken to last as long as the longer of the last one, ``last_call_s``, and the cost
    model's estimate of one, ``estimated_call_s``: before a request's first call the time since the last check
    is its decoding's, no call's, and a call started on it could run past gunicorn's deadline."""
    next_call_s = max(last_call_s, estimated_call_s)
    if _stop_at is not None and done < total and _clock() + next_call_s > _stop_at:
        raise ShuttingDown(f"the server is shutting down: stopped after {done} of {total} tiles, as the next "
                           f"would end past its grace period (SHUTDOWN_GRACE_S); retry")
