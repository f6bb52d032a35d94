"""The real server: gunicorn on a free port, a real multipart upload over TCP."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
from types import SimpleNamespace

import pytest
import requests
from gunicorn.app.base import Application
from gunicorn.arbiter import Arbiter
from PIL import Image

from config import load_settings
from core import shutdown
from core.admission import InferenceSlot
from harness.live_server import live_server, wait_until_ready
from tests.conftest import ROOT, sample_bytes

pytestmark = pytest.mark.slow


def test_gunicorn_serves_predict_and_errors():
    with live_server() as server:
        response = requests.post(f"{server.url}/model/predict",
                                 files={"image": ("chelsea.png", sample_bytes("chelsea.png"), "image/png")}, timeout=120)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (112 * 4, 75 * 4)

        corrupt = requests.post(f"{server.url}/model/predict",
                                files={"image": ("x.png", b"\x89PNG\r\n\x1a\n broken", "image/png")}, timeout=30)
        assert corrupt.status_code == 400
        assert "message" in corrupt.json()
        assert requests.get(f"{server.url}/model/metadata", timeout=10).status_code == 200



def raw_answer(url: str, request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """The status line, headers and body gunicorn answers to ``request``, bytes the HTTP clients would not send."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, dict(line.lower().split(b": ", 1) for line in lines), body


@pytest.mark.parametrize("request_bytes, problem", [
    # Raw UTF-8 in the path, as a client that does not percent-encode sends it (nginx passes it on as it came).
    (b"GET /model/metad\xc3\xa9ta HTTP/1.1\r\nHost: x\r\n\r\n", "Invalid Request Line"),
    (b"GET /model/metadata HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", "Invalid HTTP Header: 'X-A'"),
])
def test_a_request_gunicorn_cannot_parse_is_answered_in_json(request_bytes, problem):
    with live_server() as server:
        status, headers, body = raw_answer(server.url, request_bytes)
    assert status.startswith(b"HTTP/1.1 400 ")
    assert headers[b"content-type"] == b"application/json"
    assert problem in json.loads(body)["message"]


class ConfigOnly(Application):
    """gunicorn's own reading of gunicorn.conf.py, without a command line or an app to load."""

    def load_config(self) -> None:
        self.load_config_from_file(str(ROOT / "gunicorn.conf.py"))

    def load(self) -> None:
        raise AssertionError("only the configuration is read")


@pytest.mark.parametrize("device, sized_for", [
    ("auto", "cuda"),  # the master cannot look for a GPU (CUDA before the fork): the larger count, the GPU's
    ("cpu", "cpu"),
])
def test_started_directly_gunicorn_listens_on_host_and_port_with_threads_for_the_device(
        monkeypatch, device, sized_for):
    """`gunicorn app:app` without serve.py: HOST and PORT apply, and THREADS=0 is sized without a CUDA check."""
    for name, value in {"HOST": "127.0.0.2", "PORT": "5123", "DEVICE": device, "THREADS": "0"}.items():
        monkeypatch.setenv(name, value)
    config = ConfigOnly().cfg
    assert config.bind == ["127.0.0.2:5123"]
    assert config.threads == load_settings().threads_for(sized_for)


def test_started_directly_gunicorn_listens_on_an_ipv6_host(monkeypatch):
    monkeypatch.setenv("HOST", "::")
    monkeypatch.setenv("PORT", "5123")
    assert ConfigOnly().cfg.address == [("::", 5123)]


def test_a_workers_sigterm_closes_its_slot_and_a_second_one_keeps_the_countdown(monkeypatch):
    """The hook gunicorn runs in each worker, with the handler it installs called as the signal would be."""
    installed, passed_on = {}, []
    monkeypatch.setattr(signal, "getsignal", lambda signum: lambda *args: passed_on.append(signum))
    monkeypatch.setattr(signal, "signal", lambda signum, handler: installed.update({signum: handler}))
    monkeypatch.setattr(shutdown, "_stop_at", None)
    clock = iter([100.0, 120.0])
    monkeypatch.setattr(shutdown, "_clock", lambda: next(clock))
    slot = InferenceSlot(queue_size=1, wait_timeout_s=1)
    service = SimpleNamespace(slot=slot, on_device_failure=lambda stop: None)
    worker = SimpleNamespace(wsgi=SimpleNamespace(extensions={"super_resolution": service}))
    ConfigOnly().cfg.post_worker_init(worker)
    for _ in range(2):
        installed[signal.SIGTERM](signal.SIGTERM, None)
    assert passed_on == [signal.SIGTERM, signal.SIGTERM]  # gunicorn's own handler stops the worker each time
    assert shutdown._stop_at == 100.0 + load_settings().shutdown_grace_s - shutdown.ANSWER_MARGIN_S
    with pytest.raises(shutdown.ShuttingDown, match="starts no new image"):
        slot.check_room()


def worker_stop(monkeypatch):
    """The stop the hook gives the service for a failed GPU, with what it would do recorded instead of done."""
    done = []
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    monkeypatch.setattr(os, "kill", lambda pid, signum: done.append(("kill", pid, signum)))
    monkeypatch.setattr(os, "_exit", lambda code: done.append(("exit", code)))
    stops = []
    service = SimpleNamespace(slot=InferenceSlot(queue_size=1, wait_timeout_s=1), on_device_failure=stops.append)
    ConfigOnly().cfg.post_worker_init(SimpleNamespace(wsgi=SimpleNamespace(extensions={"super_resolution": service})))
    stop, = stops
    return stop, done


def test_a_worker_whose_gpu_failed_at_a_request_stops_itself_as_gunicorn_stops_it(monkeypatch):
    """The service tells the hook once its GPU failed for good: the worker sends itself the SIGTERM of a graceful
    stop (its requests in flight end, then gunicorn's master starts a fresh worker with a new CUDA context)."""
    stop, done = worker_stop(monkeypatch)
    stop(False)
    assert done == [("kill", os.getpid(), signal.SIGTERM)]


def test_a_worker_whose_gpu_failed_while_the_models_loaded_exits_as_one_that_failed_to_boot(monkeypatch):
    """A fresh worker would fail the same way, and the master restarted them in a loop: code 3 stops the master."""
    stop, done = worker_stop(monkeypatch)
    stop(True)
    assert done == [("exit", Arbiter.WORKER_BOOT_ERROR)] and Arbiter.WORKER_BOOT_ERROR == 3


def test_a_gpu_that_fails_at_the_models_warm_up_stops_gunicorn_naming_the_reason():
    """A real gunicorn whose worker's device fails at the warm-up: the master stops (it restarted a worker every
    few seconds, each answering /health until it failed) with code 3, and the log says why."""
    with pytest.raises(RuntimeError) as exited:
        with live_server(served="tests.device_fails:app", backend="pytorch", device="cpu", device_fails="warm-up"):
            pass
    log = str(exited.value)
    assert log.startswith("gunicorn exited with code 3:")
    assert ("the device failed while the models loaded, before this worker served; this worker stops: the GPU "
            "failed (CUDA error: an illegal memory access was encountered)") in log
    assert "Reason: Worker failed to boot." in log


def test_a_gpu_that_fails_at_one_workers_warm_up_stops_gunicorn_without_waiting_for_the_others_load(tmp_path):
    """WORKERS=2: one worker's device fails at the warm-up while the other's models still load (here for ever).
    The master stops the other worker with SIGTERM and waits up to graceful_timeout (SHUTDOWN_GRACE_S, here longer
    than the harness waits) for it; its models load in a daemon thread and its main loop, idle, ends at once, so
    gunicorn exits with code 3 without waiting for that load."""
    with pytest.raises(RuntimeError) as exited:
        with live_server(served="tests.device_fails:app", backend="pytorch", device="cpu", workers=2,
                         shutdown_grace_s=3600, device_fails="warm-up-of-one",
                         device_fails_mark=tmp_path / "failed"):
            pass
    log = str(exited.value)
    assert log.startswith("gunicorn exited with code 3:")
    assert "Reason: Worker failed to boot." in log


def test_a_gpu_that_fails_at_a_request_has_the_worker_replaced_and_gunicorn_serves_on():
    with live_server(served="tests.device_fails:app", backend="pytorch", device="cpu",
                     device_fails="request") as server:
        answer = requests.post(f"{server.url}/model/predict",
                               files={"image": ("chelsea.png", sample_bytes("chelsea.png"), "image/png")}, timeout=120)
        assert answer.status_code == 503
        assert answer.json()["message"].startswith("the GPU failed (CUDA error: an illegal memory access")
        wait_until_ready(server, 180)  # the failed worker's /ready is 503: a fresh worker answers
        assert server.process.poll() is None and server.log().count("Booting worker") == 2
        assert "the device failed at a request; this worker stops" in server.log()
