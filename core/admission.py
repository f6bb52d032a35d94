"""The inference slots of a worker, a bounded queue in front of them, and 503 beyond.

On the CPU a worker runs one image at a time: the network takes every core, and its working set is
paid once per worker, not once per request. On a GPU it runs several, so that one request's decode,
resize and encode (on the host's cores) overlap another's network (on the GPU, which runs one window
at a time: core/backends/pytorch.py). A bounded queue means an overloaded server answers at once
instead of piling requests up until the container runs out of memory or the clients time out.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from core.errors import Busy
from core.shutdown import ShuttingDown


class InferenceSlot:
    """Admission control for one worker: ``slots`` images run, ``queue_size`` wait, the rest get Busy (503).

    Waiters are served in arrival order: a newcomer never takes the slot while
    others are queued, so under steady load a queued request is not starved by
    later ones and does not run into ``wait_timeout_s``.
    """

    def __init__(self, queue_size: int, wait_timeout_s: float, slots: int = 1) -> None:
        self._free = threading.Condition(threading.Lock())
        self._slots = slots
        self._queue_size = queue_size
        self._wait_timeout_s = wait_timeout_s
        self._waiting = 0
        self._running = 0
        self._closed = False
        self._observers: list[Callable[[int, int], None]] = []

    def observe(self, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(waiting, running)`` on every change (the HTTP layer's metrics)."""
        self._observers.append(callback)

    def _changed(self) -> None:
        # Called with the lock held, so that observers see the changes in order.
        for callback in self._observers:
            callback(self._waiting, self._running)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Run the block in the slot, waiting in the queue if there is room; else raise Busy at once."""
        self._enter()
        try:
            yield
        finally:
            self._leave()

    def check_room(self) -> None:
        """Busy (503) now where ``hold`` would refuse at once: before a request starts any work or a stream."""
        with self._free:
            self._refuse_if_closed()
            if not (self._running < self._slots and self._waiting == 0) and self._waiting >= self._queue_size:
                raise self._busy()

    def close(self) -> None:
        """The worker is stopping: requests waiting for the slot, and any that arrive, get ShuttingDown at once."""
        with self._free:
            self._closed = True
            self._free.notify_all()

    def _enter(self) -> None:
        with self._free:
            self._refuse_if_closed()
            if self._running < self._slots and self._waiting == 0:
                self._start()
                return
            if self._waiting >= self._queue_size:
                raise self._busy()
            self._waiting += 1
            self._changed()
            try:
                # Condition.notify wakes the longest waiter first, which gives the arrival order.
                acquired = self._free.wait_for(lambda: self._running < self._slots or self._closed,
                                               self._wait_timeout_s)
            finally:
                self._waiting -= 1
                self._changed()
            self._refuse_if_closed()
            if not acquired:
                raise Busy(f"the server is busy: waited {self._wait_timeout_s:g} s for a free slot; retry later")
            self._start()

    def _busy(self) -> Busy:
        return Busy(f"the server is busy: {self._running} of {self._slots} images running and "
                    f"{self._waiting} queued (queue size {self._queue_size}); retry later")

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise ShuttingDown("the server is shutting down and starts no new image; retry")

    def _start(self) -> None:
        self._running += 1
        self._changed()

    def _leave(self) -> None:
        with self._free:
            self._running -= 1
            self._changed()
            self._free.notify()

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def waiting(self) -> int:
        with self._free:
            return self._waiting

    @property
    def running(self) -> int:
        with self._free:
            return self._running
