"""Where one request's time goes, stage by stage (sent as the Server-Timing header)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Stages:
    """Seconds per named stage; a stage entered several times (each tile's network run) adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def timed(self, name: str, function: Callable[P, R]) -> Callable[P, R]:
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with self.time(name):
                return function(*args, **kwargs)
        return run

    def server_timing(self) -> str:
        """The stages as an HTTP Server-Timing value, in milliseconds."""
        return ", ".join(f"{name};dur={1000 * seconds:.1f}" for name, seconds in self.seconds.items())
