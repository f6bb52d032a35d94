"""One inference slot per worker, a bounded queue in front of it, and 503 beyond.

Running one image at a time per worker bounds memory; a bounded queue means
an overloaded server answers at once instead of piling requests up.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from core.errors import Busy


class InferenceSlot:
    def __init__(self, queue_size: int, wait_timeout_s: float) -> None:
        self._slot = threading.Semaphore(1)
        self._lock = threading.Lock()
        self._queue_size = queue_size
        self._wait_timeout_s = wait_timeout_s
        self._waiting = 0
        self._running = 0
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
        """Run the block in the slot, waiting in the queue if there is room; else raise Busy."""
        if not self._slot.acquire(blocking=False):
            self._wait_in_queue()
        with self._lock:
            self._running += 1
            self._changed()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._changed()
            self._slot.release()

    def _wait_in_queue(self) -> None:
        with self._lock:
            if self._waiting >= self._queue_size:
                raise Busy(f"the server is busy: 1 image running and {self._waiting} queued (queue size {self._queue_size}); retry later")
            self._waiting += 1
            self._changed()
        try:
            acquired = self._slot.acquire(timeout=self._wait_timeout_s)
        finally:
            with self._lock:
                self._waiting -= 1
                self._changed()
        if not acquired:
            raise Busy(f"the server is busy: waited {self._wait_timeout_s:.0f} s for a free slot; retry later")

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    @property
    def running(self) -> int:
        with self._lock:
            return self._running
