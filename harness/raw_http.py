"""Helpers for load tests against a live gunicorn: raw-socket requests, generated images, worker processes.

A raw socket lets a test leave a request running and then hang up on it, as
a client that gives up does; ``requests`` would hold the call until the answer.
"""
from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests
from PIL import Image

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A PNG of smooth gradients with some noise: costs the network what a photo costs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def start_predict(url: str, image: bytes) -> socket.socket:
    """Send a whole POST /model/predict on a new connection and return without reading the answer."""
    prepared = requests.Request("POST", f"{url}/model/predict", files={"image": ("upload.png", image, "image/png")}).prepare()
    address = urlsplit(url)
    head = "".join([f"POST /model/predict HTTP/1.1\r\nHost: {address.netloc}\r\n",
                    *(f"{name}: {value}\r\n" for name, value in prepared.headers.items()), "\r\n"])
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    sock.sendall(head.encode() + prepared.body)
    return sock


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn master's child processes, from /proc (field 4 of /proc/PID/stat is the parent)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == master_pid:
            children.append(int(stat.parent.name))
    return sorted(children)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


def wait_for(condition, timeout_s: float, interval_s: float = 0.2):
    """Poll ``condition()`` until it returns something truthy; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"not true within {timeout_s} s")
