"""The inference slots of a worker, a bounded queue in front of them, and 503 beyond.

On the CPU a worker runs one image at a time: the network takes every core, and its working set is
paid once per worker, not once per request. On a GPU it runs several, so that one request's decode,
resize and encode (on the host's cores) overlap another's network (on the GPU, which runs one window
at a time: core/backends/pytorch.py). A bounded queue means an overloaded server answers at once
instead of piling requests up until the container runs out of memory or the clients time out.

A refusal says when to come back (Busy.retry_after_s): a newcomer finds a queue place once the head of the
queue starts, so once the first running image ends, as its plan's estimate (``Plan.seconds``) puts it at the start
and the work it has left puts it as it runs (after an out-of-memory retry, more than the plan said).

Images run together only while their host buffers fit the worker's memory budget together: each holds
its share (``Plan.host_bytes``) while it runs, and one that would not fit beside those running waits for
them, in its turn. Alone, an image always runs: ``Service.prepare`` refused any that does not fit alone.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from core.errors import Busy, QueueTimeout
from core.shutdown import ShuttingDown

log = logging.getLogger(__name__)
# How often a queued request looks whether its client is still there: one that hung up leaves the queue (and
# its gunicorn thread) within this, instead of keeping them until QUEUE_WAIT_S or its turn.
QUEUE_CHECK_S = 0.5


class InferenceSlot:
    """Admission control for one worker: ``slots`` images run while their bytes fit ``room()``, ``queue_size``
    wait, the rest get Busy (503).

    Waiters are served in arrival order: a newcomer never starts while others are queued, and only the
    longest waiter starts, so under steady load a queued request (a large one included) is not starved by
    later ones and does not run into ``wait_timeout_s``.
    """

    def __init__(self, queue_size: int, wait_timeout_s: float, slots: int = 1,
                 room: Callable[[], int] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._free = threading.Condition(threading.Lock())
        self._slots = slots
        self._room = room
        self._queue_size = queue_size
        self._wait_timeout_s = wait_timeout_s
        self._tickets = itertools.count()
        self._queue: deque[int] = deque()
        self._clock = clock  # the estimates' clock (the queue's waits are the condition's, in real time)
        # When each running image should end, by its ticket: a refusal's Retry-After comes from the soonest.
        self._ends: dict[int, float] = {}
        self._reserved = 0
        self._closed = False
        self._observers: list[Callable[[int, int], None]] = []

    def observe(self, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(waiting, running)`` on every change (the HTTP layer's metrics)."""
        self._observers.append(callback)

    def _changed(self) -> None:
        # Called with the lock held, so that observers see the changes in order. An observer that fails is logged:
        # raised here, between a count and its undoing, it would leave a slot taken for good.
        for callback in self._observers:
            try:
                callback(len(self._queue), len(self._ends))
            except Exception:  # noqa: BLE001 - the slot's counts matter more than one metric
                log.exception("an observer of the inference slot failed")

    @contextmanager
    def hold(self, host_bytes: int = 0, while_queued: Callable[[], None] | None = None,
             seconds: float = 0.0) -> Iterator[Callable[[float], None]]:
        """Run the block in a slot, holding ``host_bytes`` of the worker's room, waiting in the queue if there is
        room in it; else raise Busy at once. While queued, ``while_queued()`` runs every QUEUE_CHECK_S (with the
        slot's lock held: it must not block) and may raise to leave the queue (Cancelled: the client left).
        ``seconds``: how long the block is expected to run, for the Retry-After of the requests refused meanwhile;
        the block is given a function that it tells the seconds it has left, from now, as it learns them."""
        ticket = self._enter(host_bytes, while_queued, seconds)
        try:
            yield lambda seconds_left: self._expect_end(ticket, seconds_left)
        finally:
            self._leave(host_bytes, ticket)

    def check_room(self) -> None:
        """Busy (503) now where ``hold`` would refuse at once: before a request starts any work or a stream."""
        with self._free:
            self._refuse_if_closed()
            if not (len(self._ends) < self._slots and not self._queue) and len(self._queue) >= self._queue_size:
                raise self._busy()

    def close(self) -> None:
        """The worker is stopping: requests waiting for the slot, and any that arrive, get ShuttingDown at once."""
        with self._free:
            self._closed = True
            self._free.notify_all()

    def _can_start(self, host_bytes: int) -> bool:
        if len(self._ends) >= self._slots:
            return False
        return len(self._ends) == 0 or self._room is None or self._reserved + host_bytes <= self._room()

    def _enter(self, host_bytes: int, while_queued: Callable[[], None] | None, seconds: float) -> int:
        """The ticket of the image once it runs."""
        with self._free:
            self._refuse_if_closed()
            ticket = next(self._tickets)
            if not self._queue and self._can_start(host_bytes):
                self._start(ticket, host_bytes, seconds)
                return ticket
            if len(self._queue) >= self._queue_size:
                raise self._busy()
            self._queue.append(ticket)
            self._changed()
            try:
                acquired = self._wait_turn(ticket, host_bytes, while_queued)
            finally:
                self._queue.remove(ticket)
                self._changed()
                self._free.notify_all()  # the next in line may start now
            self._refuse_if_closed()
            if not acquired:
                raise QueueTimeout(f"the server is busy: waited {self._wait_timeout_s:g} s for a free slot; retry "
                                   f"later", self._until_first_end())
            self._start(ticket, host_bytes, seconds)
            return ticket

    def _wait_turn(self, ticket: int, host_bytes: int, while_queued: Callable[[], None] | None) -> bool:
        """Wait, with the lock held, until ``ticket`` may start or the worker closes: False after the queue's
        wait timeout."""
        deadline = time.monotonic() + self._wait_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if self._free.wait_for(lambda: self._closed or (self._queue[0] == ticket and self._can_start(host_bytes)),
                                   min(remaining, QUEUE_CHECK_S)):
                return True
            if remaining <= QUEUE_CHECK_S:
                return False
            if while_queued is not None:
                while_queued()

    def _busy(self) -> Busy:
        return Busy(f"the server is busy: {len(self._ends)} of {self._slots} images running and "
                    f"{len(self._queue)} queued (queue size {self._queue_size}); retry later", self._until_first_end())

    def _until_first_end(self) -> float:
        """Seconds until the first running image should end (0 when none runs or all ran past their estimate)."""
        now = self._clock()
        return max(0.0, min(self._ends.values(), default=now) - now)

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise ShuttingDown("the server is shutting down and starts no new image; retry")

    def _start(self, ticket: int, host_bytes: int, seconds: float) -> None:
        self._ends[ticket] = self._clock() + seconds
        self._reserved += host_bytes
        self._changed()

    def _expect_end(self, ticket: int, seconds_left: float) -> None:
        with self._free:
            self._ends[ticket] = self._clock() + seconds_left

    def _leave(self, host_bytes: int, ticket: int) -> None:
        with self._free:
            del self._ends[ticket]
            self._reserved -= host_bytes
            self._changed()
            # Every waiter looks: only the longest one may start, and the bytes just freed may be what it needs.
            self._free.notify_all()

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def waiting(self) -> int:
        with self._free:
            return len(self._queue)

    @property
    def running(self) -> int:
        with self._free:
            return len(self._ends)
