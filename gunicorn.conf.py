"""gunicorn settings, taken from the same typed settings as the app (see config.py)."""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
from types import FrameType

from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker
from pydantic import ValidationError

from config import invalid_settings, load_settings

try:
    _settings = load_settings()
except ValidationError as error:
    # gunicorn started directly (not through serve.py) says which settings are wrong, not pydantic's traceback.
    raise SystemExit(f"gunicorn.conf.py: {invalid_settings(error)}") from None

# serve.py binds gunicorn to its own socket behind nginx (--bind wins over this); started directly, HOST:PORT.
# An IPv6 address (HOST=::) goes in brackets.
bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# serve.py passes THREADS sized for the device it found. Started directly, the master cannot look for a GPU:
# CUDA initialised before the fork leaves the workers unable to use it. So DEVICE=auto gets the GPU's count,
# the larger: on a CPU the extra threads only answer the requests the slot and the queue refuse (503) and the
# probes, while the CPU's count on a GPU would leave slots idle and no thread for /health. Only behind nginx
# must the count be exact (nginx's limit is the workers' free threads), and there serve.py gives it.
threads = _settings.threads_for("cpu" if _settings.device == "cpu" else "cuda")
worker_class = "gthread"
timeout = _settings.timeout_s
# After SIGTERM the requests in flight get SHUTDOWN_GRACE_S; core/shutdown.py ends the ones still running just
# before, with a 503, so that no client sees a cut connection.
graceful_timeout = _settings.shutdown_grace_s
# gunicorn 27's control socket sits at one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl), shared by every
# instance on the host; nothing here uses it.
control_socket_disable = True
# Each worker imports the app itself and so loads its own models once, after the fork:
# TensorFlow's thread pools do not survive a fork.
preload_app = False
accesslog = None
loglevel = _settings.log_level.lower()



def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it cannot parse (raw UTF-8 in the path, a control byte in a header, which
    nginx passes on as they came), as JSON ``{"message": ...}`` like every other answer, not gunicorn's HTML page."""
    body = json.dumps({"message": mesg}).encode() + b"\n"  # ASCII: the request's bytes it quotes are escaped
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn's workers call util.write_error for these answers, with no setting to change what it writes.
util.write_error = write_json_error

# Metric folders this master created (and removes on exit).
_created_folders: list[str] = []


def on_starting(server: Arbiter) -> None:
    """Give the workers one folder for their Prometheus metrics, so that /metrics adds up all of them.

    Set before any worker imports prometheus-client (it reads the variable at import). A folder given in
    PROMETHEUS_MULTIPROC_DIR is emptied first: files from an earlier run would count twice.
    """
    if _settings.prometheus_multiproc_dir is not None:
        folder = str(_settings.prometheus_multiproc_dir)
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, "*.db")):
            os.remove(stale)
    else:
        folder = tempfile.mkdtemp(prefix="superres-metrics-")
        _created_folders.append(folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def post_worker_init(worker: Worker) -> None:
    """Before gunicorn's own SIGTERM handler stops the worker, start the countdown of the requests in flight; and
    a worker whose GPU failed for good stops (``stop_on_device_failure``)."""
    previous = signal.getsignal(signal.SIGTERM)
    service = worker.wsgi.extensions["super_resolution"]
    service.on_device_failure(stop_on_device_failure)

    def on_term(signum: int, frame: FrameType | None) -> None:
        from core import shutdown

        shutdown.begin(_settings.shutdown_grace_s, service.slot.running, service.slot.waiting)
        service.slot.close()
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def stop_on_device_failure(while_loading: bool) -> None:
    """A worker whose GPU failed for good at a request stops itself as gunicorn stops it (SIGTERM: its other
    requests end), and the master starts a fresh one with a new CUDA context. One whose GPU failed while the
    models loaded would be replaced by workers failing the same way, in a loop, each answering /health until it
    fails: it exits with gunicorn's WORKER_BOOT_ERROR instead, on which the master stops the server ("Worker failed
    to boot") and exits non-zero, so that the container's orchestrator restarts or moves it, with its back-off."""
    if not while_loading:
        os.kill(os.getpid(), signal.SIGTERM)
        return
    # At once, from the loading thread or the worker's start: while the models load only probes can be in flight,
    # and images the failed device fails anyway. Without the interpreter's shutdown, which would touch the broken
    # CUDA context again.
    logging.shutdown()
    os._exit(Arbiter.WORKER_BOOT_ERROR)


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A dead worker's gauges stop counting (its counters and histograms are kept)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Arbiter) -> None:
    for folder in _created_folders:
        shutil.rmtree(folder, ignore_errors=True)
