"""A real gunicorn under trouble: clients that hang up mid-request, and a worker killed mid-request."""
from __future__ import annotations

import os
import re
import signal

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.live_server import live_server
from harness.raw_http import SLOW_FIELDS, SLOW_SERVER, gauge, png, start_predict, wait_for, worker_pids

pytestmark = pytest.mark.slow

# Minutes of work on SLOW_SERVER, whatever the machine: the tests watch it while it runs.
BIG = png(400, 400, seed=1)


@pytest.fixture(scope="module")
def server():
    with live_server(workers=1, threads=4, queue_size=1, **SLOW_SERVER) as live:
        yield live


def running(server) -> bool:
    return gauge(server.url, "superres_inference_running") == 1


def the_worker(server) -> int:
    (pid,) = wait_for(lambda: worker_pids(server.process.pid), 10)
    return pid


def post_small(server, timeout_s: float = 60) -> requests.Response:
    return requests.post(f"{server.url}/model/predict", files={"image": ("small.png", png(40, 40))}, timeout=timeout_s)


def test_a_client_that_hangs_up_stops_the_work_at_the_next_tile(server):
    earlier_log = len(server.log())
    request = start_predict(server.url, BIG, **SLOW_FIELDS)
    wait_for(lambda: running(server), 60)

    request.close()
    pattern = r"the client closed the connection after (\d+) of (\d+) tiles"
    stopped = wait_for(lambda: re.search(pattern, server.log()[earlier_log:]), 120)
    done, total = map(int, stopped.groups())
    assert total > 100 and done < total, "the work stopped at a tile, long before its end"
    wait_for(lambda: not running(server), 10)  # the slot is free again

    response = post_small(server)
    assert response.status_code == 200
    assert response.headers["X-Output-Size"] == "160x160"


def samples(server, name: str) -> dict[str, float]:
    """The samples of metric ``name`` on /metrics, by their labels' values."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return {",".join(sample.labels.values()): sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


def answered_so_far(server) -> float:
    """Every request /metrics has counted, by every worker, dead ones included."""
    return sum(samples(server, "superres_http_requests_total").values())


def test_the_server_keeps_answering_when_a_worker_is_killed_mid_request(server):
    master, worker = server.process.pid, the_worker(server)
    request = start_predict(server.url, BIG, **SLOW_FIELDS)
    wait_for(lambda: running(server), 60)
    counted = answered_so_far(server)
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
    # The dead worker's gauges are gone (mark_process_dead), its counts are kept: no counter went down.
    assert gauge(server.url, "superres_inference_running") == 0
    # the replacement's own gauges, once it has loaded every model (srgan may serve before realesrgan is loaded)
    wait_for(lambda: samples(server, "superres_model_ready_workers") == {"srgan": 1, "realesrgan": 1}, 180)
    assert answered_so_far(server) >= counted + len(answers)


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


def test_sigterm_ends_the_work_in_flight_with_a_503_within_the_grace_period_and_logs_it():
    # A grace period that outlasts a tile of SLOW_SERVER's on a loaded machine (about 11 s on 2 busy cores): the
    # tile running at SIGTERM ends within it, and the next is started only where it would end in time too.
    with live_server(shutdown_grace_s=15, queue_size=1, threads=4, **SLOW_SERVER) as server:
        running_request = start_predict(server.url, BIG, **SLOW_FIELDS)
        wait_for(lambda: running(server), 60)
        queued = start_predict(server.url, BIG, **SLOW_FIELDS)
        wait_for(lambda: gauge(server.url, "superres_inference_queued") == 1, 30)
        server.process.send_signal(signal.SIGTERM)

        told = read_answer(queued)
        assert told.startswith(b"HTTP/1.1 503") and b"starts no new image" in told and b"Retry-After" in told
        answer = read_answer(running_request)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"the server is shutting down: stopped after" in answer and b"Retry-After" in answer
        server.process.wait(30)
        assert "stopping: 1 image(s) running and 1 queued get 12 s to finish" in server.log()
