"""A real gunicorn under trouble: clients that hang up mid-request, and a worker killed mid-request."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest
import requests

from harness.live_server import live_server
from harness.raw_http import cpu_seconds, png, start_predict, wait_for, worker_pids

pytestmark = pytest.mark.slow

# 400x400 in 32 px tiles run one at a time: well over a hundred network calls, tens of seconds of CPU.
BIG = png(400, 400, seed=1)


@pytest.fixture(scope="module")
def server():
    with live_server(WORKERS=1, THREADS=4, QUEUE_SIZE=1, TILE_SIZE=32, TILE_BATCH=1) as live:
        yield live


def the_worker(server) -> int:
    (pid,) = wait_for(lambda: worker_pids(server.process.pid), 10)
    return pid


def post_small(server, timeout_s: float = 60) -> requests.Response:
    return requests.post(f"{server.url}/model/predict", files={"image": ("small.png", png(40, 40))}, timeout=timeout_s)


def test_a_client_that_hangs_up_stops_the_work_at_the_next_tile(server):
    worker = the_worker(server)
    earlier_log = len(server.log())
    request = start_predict(server.url, BIG)
    time.sleep(1.5)
    busy_cpu = cpu_seconds(worker)
    time.sleep(1)
    assert cpu_seconds(worker) - busy_cpu > 0.5, "the big request should be using the CPU"

    request.close()
    time.sleep(1.5)  # a tile of 64x64 takes well under a second
    idle_cpu = cpu_seconds(worker)
    time.sleep(2)
    assert cpu_seconds(worker) - idle_cpu < 0.2, "the worker kept computing after the client left"

    started = time.monotonic()
    response = post_small(server)
    assert response.status_code == 200
    assert response.headers["X-Output-Size"] == "160x160"
    assert time.monotonic() - started < 5

    stopped = re.search(r"the client closed the connection after (\d+) of (\d+) tiles", server.log()[earlier_log:])
    assert stopped, "the server should log the cancelled request"
    done, total = map(int, stopped.groups())
    assert total > 100 and done < total // 2


def test_the_server_keeps_answering_when_a_worker_is_killed_mid_request(server):
    master, worker = server.process.pid, the_worker(server)
    request = start_predict(server.url, BIG)
    time.sleep(1.5)
    os.kill(worker, signal.SIGKILL)

    # The request in flight is lost: its connection ends without an answer.
    request.settimeout(10)
    try:
        assert request.recv(1024) == b""
    except ConnectionResetError:
        pass
    request.close()

    replacement = wait_for(lambda: [pid for pid in worker_pids(master) if pid != worker], 30)[0]
    assert server.process.poll() is None, "the gunicorn master must survive its worker"

    # While the new worker loads its models it answers 503 + Retry-After, then serves as before.
    answers = []

    def served() -> bool:
        response = post_small(server)
        answers.append(response.status_code)
        if response.status_code == 503:
            assert "Retry-After" in response.headers and "not ready" in response.json()["message"]
        return response.status_code == 200

    wait_for(served, 60, interval_s=0.5)
    assert set(answers) <= {200, 503} and answers[-1] == 200
    assert worker_pids(master) == [replacement]


def read_answer(sock, timeout_s: float = 60) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def inference_running(url: str) -> bool:
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    return "superres_inference_running 1.0" in metrics


def test_sigterm_ends_the_work_in_flight_with_a_503_within_the_grace_period_and_logs_it():
    with live_server(SHUTDOWN_GRACE_S=6, QUEUE_SIZE=1, THREADS=4, TILE_SIZE=32, TILE_BATCH=1) as server:
        running = start_predict(server.url, BIG)
        wait_for(lambda: inference_running(server.url), 30)
        queued = start_predict(server.url, BIG)
        wait_for(lambda: "superres_inference_queued 1.0" in requests.get(f"{server.url}/metrics", timeout=10).text, 30)
        server.process.send_signal(signal.SIGTERM)

        told = read_answer(queued)
        assert told.startswith(b"HTTP/1.1 503") and b"starts no new image" in told and b"Retry-After" in told
        answer = read_answer(running)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"the server is shutting down: stopped after" in answer and b"Retry-After" in answer
        server.process.wait(30)
        assert "stopping: 1 image(s) running and 1 queued get 3 s to finish" in server.log()
