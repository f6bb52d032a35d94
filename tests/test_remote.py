"""``sr-upscale --server`` against real gunicorn servers on loopback (MODELS=srgan, small images).

No test waits a fixed time or assumes a speed: each waits for a condition (a request in
flight, a line in a server's log) with a deadline that only bounds a failure.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image

import remote
from core.options import OptionContext, UpscaleOptions, form_fields, parse_options
from tests.conftest import ROOT, SAMPLES
from harness.live_server import LiveServer, free_port, live_server
from harness.run_cli import sr_upscale

pytestmark = pytest.mark.slow
SIDE = 48


def photos(folder: Path, count: int) -> Path:
    """``count`` small distinct PNGs cut from the samples."""
    folder.mkdir(parents=True)
    samples = sorted(SAMPLES.glob("*.png"))
    for index in range(count):
        with Image.open(samples[index % len(samples)]) as image:
            image.convert("RGB").crop((index, index, index + SIDE, index + SIDE)).save(folder / f"p{index:02}.png")
    return folder


def assert_all_upscaled(source: Path, out: Path) -> None:
    names = sorted(path.name for path in source.iterdir())
    assert sorted(path.name for path in (out / source.name).iterdir()) == names  # no .partial left either
    for name in names:
        with Image.open(out / source.name / name) as image:
            image.load()
            assert image.size == (SIDE * 4, SIDE * 4)


def files_done(stdout: str) -> dict[str, int]:
    """The summary's per-server lines: ``  http://127.0.0.1:5001: 3 files ...``."""
    return {url: int(count) for url, count in re.findall(r"^  (http://\S+): (\d+) files", stdout, re.MULTILINE)}


def predict_statuses(server: LiveServer) -> list[int]:
    """The status of every /model/predict the server answered so far, from its access log."""
    return answered(server, "/model/predict")


def answered(server: LiveServer, path: str) -> list[int]:
    """The status of every request for ``path`` the server answered so far, from its access log."""
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [entry["status"] for entry in entries if entry.get("logger") == "superres.access" and entry.get("path") == path]


def wait_for(condition, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s} s: {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[LiveServer, LiveServer]]:
    with live_server() as first, live_server() as second:
        yield first, second


def test_work_is_spread_over_both_servers_without_tensorflow(servers, tmp_path):
    first, second = servers
    before = len(predict_statuses(first)), len(predict_statuses(second))
    source = photos(tmp_path / "photos", 8)

    result = sr_upscale(source, "-o", tmp_path / "out", "--server", first.url, "--server", second.url,
                        python_flags=("-X", "importtime"))

    assert result.returncode == 0, result.stderr[-3000:]
    assert_all_upscaled(source, tmp_path / "out")
    done = files_done(result.stdout)
    assert done[first.url] >= 1 and done[second.url] >= 1 and done[first.url] + done[second.url] == 8
    assert (len(predict_statuses(first)) - before[0], len(predict_statuses(second)) - before[1]) == (
        done[first.url], done[second.url])
    assert "retried 0 files" in result.stdout and "converted 8" in result.stdout
    imported = re.findall(r"^import time:.*\|\s*(\S+)$", result.stderr, re.MULTILINE)
    assert "requests" in imported
    assert not [name for name in imported if name.split(".")[0] in ("tensorflow", "keras", "openvino")]


def test_a_bad_file_is_reported_once_with_its_4xx_message(servers, tmp_path):
    first, second = servers
    before = predict_statuses(first) + predict_statuses(second)
    source = photos(tmp_path / "photos", 3)
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")

    result = sr_upscale(source, "-o", tmp_path / "out", "--server", first.url, "--server", second.url)

    assert result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED ")]
    direct = requests.post(f"{first.url}/model/predict", files={"image": (source / "broken.png").read_bytes()}, timeout=60)
    assert direct.status_code == 400
    assert failed == [f"FAILED {source / 'broken.png'}: {direct.json()['message']}"]
    after = predict_statuses(first) + predict_statuses(second)
    # 3 good files, the bad one sent once (not retried), and the direct request above
    assert (len(after) - len(before), after.count(400) - before.count(400)) == (5, 2)
    assert "retried 0 files" in result.stdout and "converted 3" in result.stdout
    assert not (tmp_path / "out" / "photos" / "broken.png").exists()


def test_a_file_over_the_servers_upload_limit_is_refused_without_being_read_or_sent(servers, tmp_path):
    first, _ = servers
    before = predict_statuses(first)
    limit = requests.get(f"{first.url}/model/metadata", timeout=60).json()["limits"]["max_upload_bytes"]
    source = photos(tmp_path / "photos", 1)
    with (source / "huge.png").open("wb") as huge:
        huge.truncate(limit + 1)  # sparse: no disk used, but read whole it would take the limit's memory

    result = sr_upscale(source, "-o", tmp_path / "out", "--server", first.url)

    assert result.returncode == 1
    assert f"FAILED {source / 'huge.png'}: the file is too large: the limit is {limit} bytes (MAX_UPLOAD_BYTES) " \
           f"and the file is {limit + 1} bytes" in result.stderr.splitlines()
    assert predict_statuses(first)[len(before):] == [200]  # the good file only: the huge one was never sent
    assert "converted 1" in result.stdout


def test_an_unreachable_server_is_skipped_with_a_clear_message(servers, tmp_path):
    first, _ = servers
    nowhere = f"http://127.0.0.1:{free_port()}"
    source = photos(tmp_path / "photos", 2)

    result = sr_upscale(source, "-o", tmp_path / "out", "--server", nowhere, "--server", first.url)

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sr-upscale: skipping server {nowhere}: cannot connect (connection refused)" in result.stderr
    assert files_done(result.stdout) == {first.url: 2}
    assert f"  {nowhere}: skipped at start: cannot connect (connection refused)" in result.stdout
    assert_all_upscaled(source, tmp_path / "out")

    alone = sr_upscale(source, "-o", tmp_path / "again", "--server", nowhere)
    assert alone.returncode == 2 and "no server can take the work" in alone.stderr


def test_a_server_answering_503_is_waited_for(servers, tmp_path):
    first, _ = servers
    source = photos(tmp_path / "photos", 2)
    with odd_once_in_front_of(first.url, answer_busy) as (proxy_url, seen):
        result = sr_upscale(source, "-o", tmp_path / "out", "--server", proxy_url)

    assert result.returncode == 0, result.stderr[-3000:]
    assert_all_upscaled(source, tmp_path / "out")
    predicts = [(when, status, _uploaded_name(body)) for when, path, status, body in seen if path == "/model/predict"]
    assert [status for _, status, _ in predicts].count(503) == 1 and len(predicts) == 3
    refused_at, _, refused = next(entry for entry in predicts if entry[1] == 503)
    retried_at = next(when for when, status, name in predicts if status == 200 and name == refused)
    assert retried_at - refused_at >= RETRY_AFTER_S  # waited for Retry-After: a lower bound, not a speed
    assert "retried 1 files" in result.stdout and files_done(result.stdout) == {proxy_url: 2}


RETRY_AFTER_S = 1


def _uploaded_name(multipart: bytes) -> bytes:
    return re.search(rb'filename="([^"]+)"', multipart).group(1)


def answer_busy(handler: BaseHTTPRequestHandler, upstream: str, body: bytes) -> int:
    """A 503 with Retry-After, as a server with a full queue answers."""
    message = json.dumps({"message": "the server is busy; retry later"}).encode()
    handler.send_response(503)
    handler.send_header("Retry-After", str(RETRY_AFTER_S))
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(message)))
    handler.end_headers()
    handler.wfile.write(message)
    return 503


def answer_cut_short(handler: BaseHTTPRequestHandler, upstream: str, body: bytes) -> int:
    """The upstream's 200 with its whole Content-Length announced and half its body, then a closed connection."""
    answer = requests.post(upstream + handler.path, data=body, timeout=600,
                           headers={"Content-Type": handler.headers["Content-Type"]})
    handler.send_response(200)
    handler.send_header("Content-Type", answer.headers["Content-Type"])
    handler.send_header("Content-Length", str(len(answer.content)))
    handler.end_headers()
    handler.wfile.write(answer.content[: len(answer.content) // 2])
    handler.wfile.flush()
    handler.close_connection = True
    return 200


@contextmanager
def odd_once_in_front_of(upstream: str, first_answer: Callable[..., int]) -> Iterator[tuple[str, list]]:
    """A loopback proxy to ``upstream`` that answers the first /model/predict with ``first_answer``.

    Yields its URL and what it saw: (time, path, status, request body) per request.
    """
    seen: list[tuple[float, str, int, bytes]] = []
    answered_oddly = threading.Event()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._answer(requests.get(upstream + self.path, timeout=60), b"")

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                first_predict = self.path == "/model/predict" and not answered_oddly.is_set()
                if first_predict:
                    answered_oddly.set()
            if first_predict:
                started = time.monotonic()
                status = first_answer(self, upstream, body)
                with lock:
                    seen.append((started, self.path, status, body))
                return
            answer = requests.post(upstream + self.path, data=body, timeout=600,
                                   headers={"Content-Type": self.headers["Content-Type"]})
            self._answer(answer, body)

        def _answer(self, answer: requests.Response, body: bytes) -> None:
            with lock:
                seen.append((time.monotonic(), self.path, answer.status_code, body))
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", seen
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_an_answer_cut_short_is_not_kept_and_the_file_goes_to_another_server(servers, tmp_path):
    first, second = servers
    source = photos(tmp_path / "photos", 2)
    with odd_once_in_front_of(first.url, answer_cut_short) as (proxy_url, seen):
        result = sr_upscale(source, "-o", tmp_path / "out", "--server", proxy_url, "--server", second.url)

    assert result.returncode == 0, result.stderr[-3000:]
    assert_all_upscaled(source, tmp_path / "out")  # whole images, and no .partial left by the cut answer
    assert re.search(rf"^  {re.escape(proxy_url)}: \d+ files, marked down 1x "
                     r"\(last: the connection closed in the middle of the answer\)$", result.stdout, re.MULTILINE), \
        result.stdout
    assert "retried 1 files" in result.stdout and sum(files_done(result.stdout).values()) == 2


def test_a_server_killed_mid_run_loses_no_file(servers, tmp_path):
    _, survivor = servers
    source = photos(tmp_path / "photos", 24)
    survivor_before = len(predict_statuses(survivor))
    with live_server() as doomed:
        port = int(doomed.url.rsplit(":", 1)[1])
        run = subprocess.Popen([sys.executable, "-m", "cli", str(source), "-o", str(tmp_path / "out"),
                                "--server", doomed.url, "--server", survivor.url],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The start-up probes are over once the survivor has answered a file; then catch the doomed
        # server with a request in flight, freeze it, and kill it if the request is still there.
        wait_for(lambda: len(predict_statuses(survivor)) > survivor_before, "the survivor answers a file")
        wait_for(lambda: _frozen_with_request_in_flight(doomed, port), "a request in flight on the doomed server")
        os.killpg(doomed.process.pid, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=600)

    assert run.returncode == 0, stderr[-3000:]
    assert_all_upscaled(source, tmp_path / "out")
    done = files_done(stdout)
    assert done[doomed.url] + done[survivor.url] == 24
    down = re.search(rf"^  {re.escape(doomed.url)}: \d+ files, marked down (\d+)x \(last: (.+)\)$", stdout, re.MULTILINE)
    assert down and down.group(2) in ("connection reset", "the connection closed without an answer",
                                      "connection refused"), stdout
    assert int(re.search(r"retried (\d+) files", stdout).group(1)) >= 1


def test_ctrl_c_stops_at_once_with_a_summary_and_no_half_written_file(servers, tmp_path):
    """With a request in flight on a server that does not answer, Ctrl-C waited for the request's --timeout
    and its retries (minutes), then printed a traceback and no summary."""
    source = photos(tmp_path / "photos", 6)
    out = tmp_path / "out"
    with live_server() as frozen:
        port = int(frozen.url.rsplit(":", 1)[1])
        run = subprocess.Popen([sys.executable, "-m", "cli", str(source), "-o", str(out), "--server", frozen.url],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Once the start-up probe has its answer (its connection then closes), an open request is a file's.
            wait_for(lambda: answered(frozen, "/model/metadata"), "sr-upscale's start-up probe answered")
            wait_for(lambda: _frozen_with_request_in_flight(frozen, port), "a file's request in flight on the frozen server")
            run.send_signal(signal.SIGINT)
            stdout, stderr = run.communicate(timeout=120)  # a bound on a failure: the default --timeout is 690 s
        finally:
            os.killpg(frozen.process.pid, signal.SIGCONT)
            if run.poll() is None:
                run.kill()
                run.wait()

    assert run.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    written = sorted(path.name for path in out.rglob("*") if path.is_file()) if out.exists() else []
    assert not [name for name in written if not name.endswith(".png") or name.startswith(".")]
    converted = int(re.search(r"^converted (\d+) ", stdout, re.MULTILINE).group(1))
    assert converted == len(written) < 6
    assert f"interrupted: {6 - converted} files not done; the same command does them" in stderr.splitlines()

    resumed = sr_upscale(source, "-o", out, "--server", servers[0].url)
    assert resumed.returncode == 0 and f"skipped {converted} already done" in resumed.stdout
    assert_all_upscaled(source, out)


def _frozen_with_request_in_flight(server: LiveServer, port: int) -> bool:
    """Stop the server's processes if a client's request is open on ``port``; True if one still is then."""
    if not _open_connections(port):
        return False
    os.killpg(server.process.pid, signal.SIGSTOP)
    if _open_connections(port):
        return True
    os.killpg(server.process.pid, signal.SIGCONT)
    return False


def _open_connections(port: int) -> int:
    """Server-side connections on loopback ``port`` not yet closed by the server: requests not yet answered.

    The client asks for ``Connection: close``, so the server closes each connection once it has answered.
    """
    established = "01"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[1] == f"0100007F:{port:04X}" and row[3] == established)


def test_options_become_the_predict_form_fields():
    options = UpscaleOptions(model="srresnet", scale=2.5, output_format="jpeg", quality=80, ensemble=True)
    assert form_fields(options) == {"model": "srresnet", "scale": "2.5", "format": "jpeg", "quality": "80",
                                    "ensemble": "true"}
    sized = UpscaleOptions(model="srgan", width=300, height=200, fit="cover", strength=0.5)
    assert form_fields(sized) == {"model": "srgan", "width": "300", "height": "200", "fit": "cover", "strength": "0.5"}
    # The server reads the fields back through the same schema into the same options.
    context = OptionContext(("srgan", "srresnet"), "srgan")
    assert [parse_options(form_fields(sent), context) for sent in (options, sized)] == [options, sized]


# --- Retries against stand-in servers: no model, and no waiting (time.sleep and DOWN_FOR_S replaced) ---


@contextmanager
def stand_in(*answers: Callable[[BaseHTTPRequestHandler], None],
             metadata: dict | None = None) -> Iterator[tuple[str, list[str]]]:
    """A loopback server whose n-th /model/predict gets ``answers[n]`` (the last one once they run out),
    and whose GET /model/metadata answers ``metadata``.

    Yields its URL and the name of the answer given to each request, in order.
    """
    given: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            _send(self, 200, json.dumps(metadata).encode(), Content_Type="application/json")

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                answer = answers[min(len(given), len(answers) - 1)]
                given.append(answer.__name__)
            answer(self)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", given
    finally:
        server.shutdown()
        server.server_close()


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def upscaled(handler: BaseHTTPRequestHandler) -> None:
    _send(handler, 200, b"upscaled", Content_Type="image/png")


def busy_for_an_hour(handler: BaseHTTPRequestHandler) -> None:
    _send(handler, 503, b'{"message": "busy"}', Retry_After="3600", Content_Type="application/json")


# How the client words a server that hangs up: the kernel may report the closed socket either way.
HUNG_UP = "(the connection closed without an answer|connection reset)"


def hang_up(handler: BaseHTTPRequestHandler) -> None:
    handler.close_connection = True  # no answer at all, as a worker killed mid-request


def refused_by_the_file(handler: BaseHTTPRequestHandler) -> None:
    _send(handler, 400, b'{"message": "not an image"}', Content_Type="application/json")


@pytest.fixture()
def pauses(monkeypatch) -> list[float]:
    """The pauses the cluster takes after 503s, taken at once; a server marked down is up again at once."""
    taken: list[float] = []
    monkeypatch.setattr(remote.time, "sleep", taken.append)
    monkeypatch.setattr(remote, "DOWN_FOR_S", 0.0)
    return taken


def _upscale(cluster: remote.Cluster, name: str = "a.png") -> bytes:
    kept = []
    cluster.upscale(b"image", name, {"model": "srgan"}, lambda pieces: kept.append(b"".join(pieces)))
    return kept[0]


@pytest.mark.parametrize("retry_after", ["0", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_a_503_saying_retry_at_once_still_waits_a_second(pauses, retry_after):
    """"Retry-After: 0" (or a date past) resent the file at once, over and over: the pauses summed to 0,
    so --max-wait was never reached and the client hammered the server for ever."""
    def busy_now(handler: BaseHTTPRequestHandler) -> None:
        _send(handler, 503, b'{"message": "busy"}', Retry_After=retry_after, Content_Type="application/json")

    # A bound for the old code's loop: after 20 busy answers, a 400 ends the file.
    with stand_in(*[busy_now] * 20, refused_by_the_file) as (url, given):
        cluster = remote.Cluster([url], jobs=1, retries=3, timeout_s=60, max_wait_s=3)
        with pytest.raises(remote.FileFailed, match=r"the servers stayed busy for more than 3 s \(--max-wait\)"):
            _upscale(cluster)
    assert pauses == [remote.MIN_RETRY_AFTER_S] * 3 and given == ["busy_now"] * 4


def test_a_server_answering_503_gets_no_new_file_while_another_is_free(pauses):
    """After a 503 the next file went back to the busy server (it had the fewest files in flight and done),
    and waited its Retry-After again while the other server was free."""
    with stand_in(busy_for_an_hour) as (busy, at_busy), stand_in(upscaled) as (free, at_free):
        cluster = remote.Cluster([busy, free], jobs=2, retries=3, timeout_s=60, max_wait_s=7200)
        assert [_upscale(cluster, f"{index}.png") for index in range(3)] == [b"upscaled"] * 3
    assert at_busy == ["busy_for_an_hour"] and at_free == ["upscaled"] * 3
    assert pauses == [3600] and cluster.retried == 1


def test_once_every_server_has_failed_a_files_tries_in_a_row_no_more_files_are_sent(pauses):
    """With every server gone, each of the files left was still tried --retries + 1 times, DOWN_FOR_S apart:
    a folder of 10 000 files took days to fail one by one. An answer between failures starts the count again."""
    with stand_in(hang_up, upscaled, hang_up, upscaled, hang_up) as (url, given):
        cluster = remote.Cluster([url], jobs=1, retries=1, timeout_s=60, max_wait_s=600)
        assert [_upscale(cluster, name) for name in ("a.png", "b.png")] == [b"upscaled"] * 2
        with pytest.raises(remote.FileFailed, match=rf"^{HUNG_UP} \(gave up after 2 attempts\)$"):
            _upscale(cluster, "c.png")
        with pytest.raises(remote.ServersDown, match=rf"^every server left 2 requests in a row unanswered \(last: {HUNG_UP}\)$"):
            _upscale(cluster, "d.png")
    assert given == ["hang_up", "upscaled", "hang_up", "upscaled", "hang_up", "hang_up"]  # d.png never sent


@pytest.mark.parametrize("state, remark", [
    ("ready", None),
    ("loading", "model srgan is still loading there: it gets files once ready"),
    ("pending", "model srgan is still loading there: it gets files once ready"),
])
def test_a_server_still_loading_its_model_takes_part(state, remark):
    """A server whose model was still loading at the start was skipped for the whole run: started beside its
    servers, or during a rolling restart, a run left them out to the end. It answers 503 until ready."""
    metadata = {"default_model": "srgan", "models": [{"id": "srgan", "state": state}],
                "limits": {"max_upload_bytes": 1000}}
    with stand_in(upscaled, metadata=metadata) as (url, _):
        assert remote.probe(url, None) == (remote.Offer("srgan", 1000, ("srgan",)), remark)


def test_a_server_whose_model_failed_to_load_is_skipped():
    metadata = {"default_model": "srgan", "models": [{"id": "srgan", "state": "failed: no weights"}],
                "limits": {"max_upload_bytes": 1000}}
    with stand_in(upscaled, metadata=metadata) as (url, _):
        assert remote.probe(url, "srgan") == (None, "model srgan is not ready there (failed: no weights)")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_a_stop_during_an_answer_leaves_no_partial_file(tmp_path, stop):
    """The threads writing answers are daemons, which end with the process where they are: Ctrl-C while an
    answer arrived left its ``.name.partial`` file in the output folder. SIGTERM (``timeout``, a job's end)
    ended the process where it was: a partial file left and no summary."""
    release = threading.Event()

    def half_then_stall(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"x" * 10)
        handler.wfile.flush()
        release.wait(120)

    metadata = {"default_model": "srgan", "models": [{"id": "srgan", "state": "ready"}],
                "limits": {"max_upload_bytes": 1000}}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"image")
    out = tmp_path / "out"
    with stand_in(half_then_stall, metadata=metadata) as (url, _):
        run = subprocess.Popen([sys.executable, "-m", "cli", str(tmp_path / "in" / "a.png"), "-o", str(out),
                                "--server", url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: (out / ".a.png.partial").exists(), "the answer's partial file")
            run.send_signal(stop)
            stdout, stderr = run.communicate(timeout=120)
        finally:
            release.set()
            if run.poll() is None:
                run.kill()
                run.wait()
    assert run.returncode == 130, stderr[-3000:]
    assert "interrupted: 1 files not done; the same command does them" in stderr.splitlines()
    assert list(out.iterdir()) == []


def test_files_that_each_get_a_500_fail_on_their_own_without_stopping_the_run(pauses):
    """A 500 is an answer from a server that is up (a file it cannot take): it does not count towards
    every server being down, which would leave the rest of the folder unsent."""
    def broken(handler: BaseHTTPRequestHandler) -> None:
        _send(handler, 500, b'{"message": "internal error"}', Content_Type="application/json")

    with stand_in(broken, broken, broken, broken, hang_up, upscaled) as (url, given):
        cluster = remote.Cluster([url], jobs=1, retries=1, timeout_s=60, max_wait_s=600)
        for name in ("a.png", "b.png"):
            with pytest.raises(remote.FileFailed, match=r"^HTTP 500: internal error \(gave up after 2 attempts\)$"):
                _upscale(cluster, name)
        assert _upscale(cluster, "c.png") == b"upscaled"  # a failure to answer, then an answer
    assert given == ["broken"] * 4 + ["hang_up", "upscaled"]


def test_options_that_depend_on_the_model_are_checked_by_each_servers_models():
    """``--denoise 2`` for a server whose default model is realcugan was a usage error: it was checked against
    this machine's DEFAULT_MODEL (srgan, no levels) before any server was asked, as was a MODELS_DIR model's level."""
    from cli import parse_args, server_options

    def metadata(default_model: str) -> dict:
        levels = {"srgan": ["none"], "realcugan": ["none", "conservative", "1", "2", "3"]}
        return {"default_model": default_model, "limits": {"max_upload_bytes": 1000},
                "models": [{"id": name, "state": "ready"} for name in levels],
                "options": [{"name": "denoise", "choices_by_model": levels}]}

    with stand_in(upscaled, metadata=metadata("realcugan")) as (cugan, _), \
            stand_in(upscaled, metadata=metadata("srgan")) as (plain, _):
        args = parse_args(["a.png", "-o", "out", "--server", cugan, "--denoise", "2"])
        options, problem = server_options(args, remote.probe(cugan, None)[0])
        assert problem is None and form_fields(options["png"]) == {"model": "realcugan", "denoise": "2"}
        assert server_options(args, remote.probe(plain, None)[0]) == (
            None, "denoise must be one of none with model srgan, not '2'")


def test_requests_in_flight_when_a_server_goes_away_count_once_towards_every_server_down(pauses):
    """Four requests in flight on a server that went away counted four failures in a row at once, so the
    run stopped before any file was tried again: ``--jobs 16`` on a Service whose one pod died would stop it."""
    arrived = threading.Barrier(4, timeout=60)

    def hang_up_together(handler: BaseHTTPRequestHandler) -> None:
        arrived.wait()
        hang_up(handler)

    with stand_in(*[hang_up_together] * 4, upscaled) as (url, given):
        cluster = remote.Cluster([url], jobs=4, retries=1, timeout_s=60, max_wait_s=600)
        results: list[object] = []
        threads = [threading.Thread(target=lambda: results.append(_attempted(cluster))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert results == [b"upscaled"] * 4 and given == ["hang_up_together"] * 4 + ["upscaled"] * 4


def _attempted(cluster: remote.Cluster) -> object:
    try:
        return _upscale(cluster)
    except Exception as error:  # noqa: BLE001 - the test compares outcomes
        return error


def test_a_run_sends_the_files_whatever_the_order_of_usable_and_skipped_servers(tmp_path):
    metadata = {"default_model": "srgan", "models": [{"id": "srgan", "state": "ready"}],
                "limits": {"max_upload_bytes": 1000}}
    (tmp_path / "a.png").write_bytes(b"image")
    nowhere = f"http://127.0.0.1:{free_port()}"
    with stand_in(upscaled, metadata=metadata) as (url, given):
        for order in ((url, nowhere), (nowhere, url)):
            out = tmp_path / f"out-{order.index(url)}"
            result = sr_upscale(tmp_path / "a.png", "-o", out, *[flag for server in order for flag in ("--server", server)])
            assert result.returncode == 0, result.stderr[-3000:]
            assert (out / "a.png").read_bytes() == b"upscaled"
    assert given == ["upscaled"] * 2


def test_files_named_in_latin_1_are_sent_written_and_reported(tmp_path):
    """A name that is not UTF-8 on disk (old cameras, zips from Windows) failed with "UnicodeEncodeError: ...
    surrogates not allowed" when put in the form, and printing its failure on a strict terminal ended the run."""
    metadata = {"default_model": "srgan", "models": [{"id": "srgan", "state": "ready"}],
                "limits": {"max_upload_bytes": 1000}}
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in (b"caf\xe9.png", b"th\xe9.png"):
        (folder / os.fsdecode(name)).write_bytes(b"image")
    with stand_in(upscaled, refused_by_the_file, metadata=metadata) as (url, given):
        result = sr_upscale(folder, "-o", tmp_path / "out", "--server", url, "--jobs", "1",
                            PYTHONIOENCODING="utf-8:strict")
    assert result.returncode == 1, result.stderr[-3000:]
    assert given == ["upscaled", "refused_by_the_file"]
    assert (tmp_path / "out" / "photos" / os.fsdecode(b"caf\xe9.png")).read_bytes() == b"upscaled"
    assert f"FAILED {folder}/th\\udce9.png: not an image" in result.stderr.splitlines()
    assert "converted 1" in result.stdout


def test_a_file_goes_to_a_server_that_takes_its_size(pauses):
    """Servers with different MAX_UPLOAD_BYTES: a file over the first's limit was sent to it anyway, got its
    413 and failed, though the other server takes it."""
    def too_large(handler: BaseHTTPRequestHandler) -> None:
        _send(handler, 413, b'{"message": "the file is too large"}', Content_Type="application/json")

    with stand_in(too_large) as (small, at_small), stand_in(upscaled) as (large, at_large):
        cluster = remote.Cluster([small, large], jobs=2, retries=3, timeout_s=60, max_wait_s=600,
                                 upload_limits={small: 4, large: 1000})
        assert _upscale(cluster) == b"upscaled"  # b"image": 5 bytes
    assert (at_small, at_large) == ([], ["upscaled"])


def test_with_format_auto_each_file_is_asked_for_in_the_format_it_keeps(tmp_path, monkeypatch):
    """--format auto (the default): a JPEG is asked for as jpeg with --quality, a GIF as png without it."""
    from cli import main

    metadata = {"default_model": "srgan", "models": [{"id": "srgan", "state": "ready"}],
                "limits": {"max_upload_bytes": 1000}}
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.jpg", "b.webp", "c.gif", "d.png"):
        (folder / name).write_bytes(b"image")
    sent = {}

    def upscale(cluster: remote.Cluster, data: bytes, name: str, fields: dict[str, str], save: remote.Save) -> None:
        sent[name] = fields
        save([b"upscaled"])

    monkeypatch.setattr(remote.Cluster, "upscale", upscale)
    with stand_in(upscaled, metadata=metadata) as (url, _):
        assert main([str(folder), "-o", str(tmp_path / "out"), "--server", url, "--quality", "80"]) == 0
    assert sent == {"a.jpg": {"model": "srgan", "format": "jpeg", "quality": "80"},
                    "b.webp": {"model": "srgan", "format": "webp", "quality": "80"},
                    "c.gif": {"model": "srgan"}, "d.png": {"model": "srgan"}}
    assert sorted(path.name for path in (tmp_path / "out" / "mixed").iterdir()) == ["a.jpg", "b.webp", "c.png", "d.png"]
