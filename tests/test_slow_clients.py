"""Slow, idle and non-reading clients, and inputs that cost minutes, against the deployed service (serve.py:
nginx in front of gunicorn).

Against gunicorn alone, four connections that send ``GET /hea`` and nothing more take every thread of the
worker (docs/load.md, "Slow and idle clients"); these tests fail there and pass with the front.
"""
from __future__ import annotations

import os
import shutil
import socket

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from harness.live_server import live_server
from harness.raw_http import closed_by_server, open_idle, open_non_reader, open_slow_body, png, scan_bomb, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"),
                                 reason="nginx is not installed (Debian: apt-get install nginx-light)")]

LIVENESS_S = 1.0  # what the liveness probe must get: an answer within a second


def test_fifty_slow_and_idle_clients_leave_health_and_predict_answering():
    # 30 of the clients hold image requests open, and nginx takes only as many at once as SPOOL_MB holds at
    # MAX_UPLOAD_BYTES (serve.spool_plan): 4096 MiB hold 62 of 32 MiB; the default, 10 (the rest get 503 at once,
    # tests/test_deploy.py).
    with live_server(front=True, CLIENT_TIMEOUT_S=60, THREADS=4, QUEUE_SIZE=2, SPOOL_MB=4096) as server:
        answer = png(96, 96, seed=3)
        clients = ([open_idle(server.url) for _ in range(20)] + [open_slow_body(server.url) for _ in range(20)]
                   + [open_non_reader(server.url, answer) for _ in range(10)])
        try:
            for _ in range(5):
                health = requests.get(f"{server.url}/health", timeout=LIVENESS_S)
                assert health.status_code == 200
            # The non-readers' images may still be running or queued: the normal client retries on 503 as told.
            served = wait_for(lambda: _predict_served(server.url), 120, interval_s=1)
            assert served.headers["X-Output-Size"] == "192x192"
            assert requests.get(f"{server.url}/health", timeout=LIVENESS_S).status_code == 200
            assert not any(closed_by_server(client) for client in clients[:40]), "the slow clients should still wait"
        finally:
            for client in clients:
                client.close()


def _predict_served(url: str) -> requests.Response | None:
    response = requests.post(f"{url}/model/predict", files={"image": ("small.png", png(48, 48))}, timeout=60)
    assert response.status_code in (200, 503), response.text
    return response if response.status_code == 200 else None


@pytest.fixture(scope="module")
def impatient_server():
    with live_server(front=True, CLIENT_TIMEOUT_S=2) as server:
        yield server


def test_clients_that_stall_are_disconnected_after_the_client_timeout(impatient_server):
    server = impatient_server
    idle, slow_body = open_idle(server.url), open_slow_body(server.url)
    try:
        assert not closed_by_server(idle)
        wait_for(lambda: closed_by_server(idle), 30)
        wait_for(lambda: closed_by_server(slow_body), 30)
        assert requests.get(f"{server.url}/health", timeout=LIVENESS_S).status_code == 200
    finally:
        idle.close()
        slow_body.close()


def test_the_workers_metrics_count_what_nginx_refuses_by_itself(impatient_server):
    """serve.py counts nginx's refusals in the workers' metrics folder: /metrics, whichever worker answers it,
    shows them with the workers' own."""
    def counted() -> dict[tuple[str, str, str], float]:
        text = requests.get(f"{impatient_server.url}/metrics", timeout=30).text
        return {(sample.labels["route"], sample.labels["status"], sample.labels["reason"]): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "superres_refusals_total"}

    before = counted()
    assert {("/model/predict", "413", "upload_too_large"), ("other", "503", "no_worker")} <= before.keys()
    port = int(impatient_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:  # nginx answers from the headers
        client.sendall(f"POST /model/predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
                       f"{Settings().max_upload_bytes + 1}\r\nConnection: close\r\n\r\n".encode())
        assert client.recv(65536).startswith(b"HTTP/1.1 413 ")
    slow_body = open_slow_body(impatient_server.url)
    silent = socket.create_connection(("127.0.0.1", port), timeout=30)  # sends nothing: nginx has no request to log
    wait_for(lambda: closed_by_server(slow_body) and closed_by_server(silent), 30)
    slow_body.close()
    silent.close()
    expected = {("/model/predict", "413", "upload_too_large"): 1, ("/model/predict", "408", "client_timeout"): 1,
                ("other", "408", "no_request"): 1}
    wait_for(lambda: {key: counted()[key] - before[key] for key in expected} == expected, 30, interval_s=0.2)


def test_a_progressive_jpeg_scan_bomb_is_refused_from_its_structure(impatient_server):
    bomb = scan_bomb(256, 256, 20_000)  # 20 k empty scans: each one a decoding pass over the whole image
    response = requests.post(f"{impatient_server.url}/model/predict",
                             files={"image": ("bomb.jpg", bomb, "image/jpeg")}, timeout=120)
    assert response.status_code == 400
    assert "more than 100 scans" in response.json()["message"]


# gunicorn's longest request line (its limit_request_line), which a redirect's Location echoes all but a few bytes of.
GUNICORN_REQUEST_LINE = 4094


def test_a_redirect_echoing_the_longest_request_line_gunicorn_takes_reaches_the_client(impatient_server):
    """The app's redirect of /model//metadata?... names the route with the query in Location (api/errors.py): its
    head outgrew nginx's default 4 KiB for an answer's head, and the client got nginx's own 503 "the server is
    starting, restarting or stopping" instead."""
    empty = len("GET /model//metadata?q= HTTP/1.1")
    query = "q=" + "a" * (GUNICORN_REQUEST_LINE - empty)
    response = requests.get(f"{impatient_server.url}/model//metadata?{query}", allow_redirects=False, timeout=30)
    assert response.status_code == 308 and response.headers["Content-Type"] == "application/json"
    assert response.headers["Location"] == f"/model/metadata?{query}"
