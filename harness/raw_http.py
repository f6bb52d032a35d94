"""Helpers for load tests against a live gunicorn: raw-socket requests, generated images, worker processes.

A raw socket lets a test leave a request running and then hang up on it, as
a client that gives up does; ``requests`` would hold the call until the answer.
"""
from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import numpy as np
import requests
from PIL import Image

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A PNG of smooth gradients with some noise: costs the network what a photo costs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def start_predict(url: str, image: bytes, **fields: str) -> socket.socket:
    """Send a whole POST /model/predict on a new connection and return without reading the answer."""
    prepared = requests.Request("POST", f"{url}/model/predict", data=fields,
                                files={"image": ("upload.png", image, "image/png")}).prepare()
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


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


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


# A server on which one image takes minutes on any CPU here, and a small one a moment: the RRDBNet model in
# fp32 on 32-px tiles (each a 96-px window for its 32-px margin) runs a 400x400 image as over 100 windows of about
# 0.4 TFLOP each; srgan, the default, answers small images at once. Tests of work in flight send SLOW_IMAGE
# with SLOW_FIELDS, so that what they watch cannot have finished, however fast the machine.
SLOW_SERVER = {"models": "srgan,realesrgan", "default_model": "srgan", "precision": "f32", "tile_size": 32,
               "tile_batch": 1, "request_time_limit_s": 3600}
SLOW_FIELDS = {"model": "realesrgan"}


def gauge(url: str, name: str) -> float:
    """A gauge's value from /metrics (0 when absent)."""
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


def wait_for(condition: Callable[[], T | None], timeout_s: float, interval_s: float = 0.2) -> T:
    """Poll ``condition()`` until it returns something truthy; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"not true within {timeout_s} s")


def _connect(url: str, receive_buffer: int | None = None) -> socket.socket:
    address = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connecting, so that the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect((address.hostname, address.port))
    return sock


def open_idle(url: str) -> socket.socket:
    """A client that starts a request line and then sends nothing more."""
    sock = _connect(url)
    sock.sendall(b"GET /hea")
    return sock


def open_slow_body(url: str) -> socket.socket:
    """A client that announces a 100 kB upload and sends 10 bytes of it."""
    sock = _connect(url)
    host = urlsplit(url).netloc
    sock.sendall(f"POST /model/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 f"Content-Length: 100000\r\n\r\n--b\r\nCont".encode())
    return sock


def open_non_reader(url: str, image: bytes) -> socket.socket:
    """A client that sends a whole predict and never reads its answer (with a 4 kB receive window)."""
    prepared = requests.Request("POST", f"{url}/model/predict", files={"image": ("upload.png", image, "image/png")}).prepare()
    sock = _connect(url, receive_buffer=4096)
    head = "".join([f"POST /model/predict HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n",
                    *(f"{name}: {value}\r\n" for name, value in prepared.headers.items()), "\r\n"])
    sock.sendall(head.encode() + prepared.body)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (whatever it sent before, e.g. a 408, is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset: closed as well
        return True


def scan_bomb(width: int, height: int, extra_scans: int) -> bytes:
    """A progressive JPEG with ``extra_scans`` empty copies of its last scan header before EOI.

    Each copy is a scan the decoder runs over the whole image: 100 k of them at 2000x2000 decode for minutes.
    """
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last_scan = data.rfind(b"\xff\xda")
    header = data[last_scan:last_scan + 2 + int.from_bytes(data[last_scan + 2:last_scan + 4], "big")]
    return data[:-2] + header * extra_scans + b"\xff\xd9"
