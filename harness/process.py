"""A process's memory, and gunicorn's worker process."""
from __future__ import annotations

from pathlib import Path

from config import MEBIBYTE
from core.memory import peak_rss_bytes


def peak_rss_mb(pid: int | str = "self") -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    return peak_rss_bytes(pid) / MEBIBYTE


def gunicorn_workers(master: int) -> list[int]:
    """The worker processes of a gunicorn master."""
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def gunicorn_worker(master: int) -> int:
    """The only worker of a gunicorn master."""
    children = gunicorn_workers(master)
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {children}")
    return children[0]
