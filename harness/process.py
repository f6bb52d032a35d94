"""A process's memory, and gunicorn's worker process."""
from __future__ import annotations

from pathlib import Path


def peak_rss_mb(pid: int | str = "self") -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def gunicorn_workers(master: int) -> list[int]:
    """The worker processes of a gunicorn master."""
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def gunicorn_worker(master: int) -> int:
    """The only worker of a gunicorn master."""
    children = gunicorn_workers(master)
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {children}")
    return children[0]
