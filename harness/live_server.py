"""Start the real service under gunicorn on a free loopback port, for end-to-end tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    output: IO[bytes]

    def log(self) -> str:
        """What gunicorn and the app wrote so far (JSON lines from the app)."""
        # pread leaves the file offset alone: gunicorn shares it and goes on appending.
        descriptor = self.output.fileno()
        return os.pread(descriptor, os.fstat(descriptor).st_size, 0).decode(errors="replace")


# MEMORY_BUDGET_MB of a test process's in-process services (tests/conftest.py), which hold many models at once;
# never passed on to a real worker.
IN_PROCESS_BUDGET = "65536"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(start_timeout_s: float = 180, front: bool = False, served: str = "app:app", **settings: str
                ) -> Iterator[LiveServer]:
    """gunicorn serving ``served`` (``app:app``) with ``settings`` as environment overrides, until every model is
    ready (RuntimeError, with its exit code and log, where gunicorn exits first).

    ``front``: the whole deployed service instead, nginx in front of gunicorn (serve.py).
    """
    port = free_port()
    inherited = {name: value for name, value in os.environ.items()
                 if not (name == "MEMORY_BUDGET_MB" and value == IN_PROCESS_BUDGET)}
    env = {**inherited, "PORT": str(port), "HOST": "127.0.0.1", "MODELS": "srgan",
           **{k.upper(): str(v) for k, v in settings.items()}}
    command = ["serve.py"] if front else ["-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
                                          served]
    # The log goes to a file, not a pipe: one JSON line per request would fill a pipe nobody reads and block the server.
    output = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, *command], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    server = LiveServer(f"http://127.0.0.1:{port}", process, output)
    try:
        wait_until_ready(server, start_timeout_s)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()


def wait_until_ready(server: LiveServer, timeout_s: float) -> None:
    """Until /ready answers 200; RuntimeError where gunicorn exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with code {server.process.returncode}: {server.log()[-3000:]}")
        try:
            if requests.get(f"{server.url}/ready", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"models not ready within {timeout_s} s")
