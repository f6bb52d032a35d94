"""Backpressure: one image per worker, a bounded queue, 503 + Retry-After beyond it, and a time limit."""
from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import requests
from PIL import Image

from api.predict import peer_closed, stop_when_client_leaves
from config import load_settings
from core.admission import InferenceSlot
from core.errors import Busy, Cancelled, NotReady
from core import memory, pipeline
from core.models import speed
from core.models.border import Border
from core.models.runtime import Network
from core.options import UpscaleOptions
from core.service import Service
from harness.live_server import live_server
from harness.raw_http import SLOW_FIELDS, SLOW_SERVER, gauge, png, start_predict, wait_for
from tests.conftest import TEST_MODELS, sample_bytes

# --- InferenceSlot on its own, with threads -------------------------------------------------------------------

THREAD_STATE_S = 5  # how long a thread may take to reach the slot; generous for a loaded CI machine


def hold_in_thread(slot: InferenceSlot, release: threading.Event, log: list[str], name: str,
                   host_bytes: int = 0) -> threading.Thread:
    def run() -> None:
        try:
            with slot.hold(host_bytes):
                log.append(f"{name} in")
                release.wait(10)
                log.append(f"{name} out")
        except Busy:
            log.append(f"{name} busy")
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_slot_with_no_queue_refuses_a_second_image_at_once():
    slot, release, log = InferenceSlot(queue_size=0, wait_timeout_s=60), threading.Event(), []
    first = hold_in_thread(slot, release, log, "first")
    wait_for(lambda: slot.running == 1, THREAD_STATE_S, 0.005)
    with pytest.raises(Busy, match="queue size 0"):  # at once: the first still holds the slot for 60 s
        with slot.hold():
            pass
    release.set()
    first.join()
    with slot.hold():  # free again
        assert slot.running == 1
    assert slot.running == slot.waiting == 0


def test_slot_queues_in_arrival_order_and_refuses_beyond_the_queue():
    slot, release, log = InferenceSlot(queue_size=2, wait_timeout_s=60), threading.Event(), []
    threads = [hold_in_thread(slot, release, log, "a")]
    wait_for(lambda: slot.running == 1, THREAD_STATE_S, 0.005)
    for name, queued in (("b", 1), ("c", 2)):
        threads.append(hold_in_thread(slot, release, log, name))
        wait_for(lambda queued=queued: slot.waiting == queued, THREAD_STATE_S, 0.005)
    threads.append(hold_in_thread(slot, release, log, "d"))
    threads[-1].join(5)
    assert log == ["a in", "d busy"]
    release.set()
    for thread in threads:
        thread.join(5)
    assert log == ["a in", "d busy", "a out", "b in", "b out", "c in", "c out"]
    assert slot.running == slot.waiting == 0


def test_slot_runs_one_image_at_a_time_under_contention():
    slot = InferenceSlot(queue_size=16, wait_timeout_s=60)
    inside, most_inside, lock = 0, 0, threading.Lock()

    def work() -> None:
        nonlocal inside, most_inside
        with slot.hold():
            with lock:
                inside += 1
                most_inside = max(most_inside, inside)
            time.sleep(0.002)
            with lock:
                inside -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: work(), range(64)))
    assert most_inside == 1
    assert slot.running == slot.waiting == 0


def test_a_queued_request_whose_client_left_leaves_the_queue_while_the_slot_is_still_taken():
    slot, release, log = InferenceSlot(queue_size=1, wait_timeout_s=60), threading.Event(), []
    first = hold_in_thread(slot, release, log, "first")
    wait_for(lambda: slot.running == 1, THREAD_STATE_S, 0.005)
    left = threading.Event()

    def client_check() -> None:
        if left.is_set():
            raise Cancelled("the client closed the connection")

    def queued() -> None:
        try:
            with slot.hold(0, client_check):
                log.append("queued in")
        except Cancelled:
            log.append("queued left")
    waiter = threading.Thread(target=queued)
    waiter.start()
    wait_for(lambda: slot.waiting == 1, THREAD_STATE_S, 0.005)
    left.set()
    waiter.join(THREAD_STATE_S + 60)
    assert log == ["first in", "queued left"] and slot.waiting == 0 and slot.running == 1
    slot.check_room()  # the place is free for a newcomer while the first image still runs
    release.set()
    first.join()


def test_an_observer_that_fails_leaves_the_slot_free(caplog):
    slot = InferenceSlot(queue_size=0, wait_timeout_s=1)
    slot.observe(lambda waiting, running: 1 / 0)
    with caplog.at_level("ERROR", logger="core.admission"):
        with slot.hold():
            assert slot.running == 1
    assert slot.running == 0 and "observer of the inference slot failed" in caplog.text
    with slot.hold():  # free again
        pass


def test_a_queued_request_gives_up_after_the_wait_timeout():
    slot, release, log = InferenceSlot(queue_size=1, wait_timeout_s=0.2), threading.Event(), []
    first = hold_in_thread(slot, release, log, "first")
    wait_for(lambda: slot.running == 1, THREAD_STATE_S, 0.005)
    started = time.monotonic()
    with pytest.raises(Busy, match="waited 0.2 s"):
        with slot.hold():
            pass
    assert time.monotonic() - started >= 0.2
    assert slot.waiting == 0
    release.set()
    first.join()


def test_the_slot_is_released_when_the_work_fails():
    slot = InferenceSlot(queue_size=0, wait_timeout_s=1)
    with pytest.raises(ValueError):
        with slot.hold():
            raise ValueError("the work failed")
    with slot.hold():
        assert slot.running == 1


def test_images_run_together_only_while_their_bytes_fit_the_room_and_in_arrival_order():
    slot, log = InferenceSlot(queue_size=4, wait_timeout_s=60, slots=3, room=lambda: 100), []
    release = {name: threading.Event() for name in "abcd"}
    threads = [hold_in_thread(slot, release["a"], log, "a", 60), hold_in_thread(slot, release["b"], log, "b", 30)]
    wait_for(lambda: slot.running == 2, THREAD_STATE_S, 0.005)
    # c does not fit beside a and b though a slot is free; d would fit, but arrived after c
    threads.append(hold_in_thread(slot, release["c"], log, "c", 50))
    wait_for(lambda: slot.waiting == 1, THREAD_STATE_S, 0.005)
    threads.append(hold_in_thread(slot, release["d"], log, "d", 10))
    wait_for(lambda: slot.waiting == 2, THREAD_STATE_S, 0.005)
    assert sorted(log) == ["a in", "b in"]
    release["a"].set()
    wait_for(lambda: slot.running == 3, THREAD_STATE_S, 0.005)  # b 30 + c 50 + d 10 fit
    assert log[2] == "a out" and sorted(log[3:]) == ["c in", "d in"]
    for event in release.values():
        event.set()
    for thread in threads:
        thread.join(5)
    assert slot.running == slot.waiting == 0


def test_an_image_larger_than_the_room_runs_alone():
    slot, release, log = InferenceSlot(queue_size=1, wait_timeout_s=60, slots=2, room=lambda: 100), threading.Event(), []
    with slot.hold(500):  # prepare refused what does not fit alone; alone, it runs
        assert slot.running == 1
        waiter = hold_in_thread(slot, release, log, "small", 10)
        wait_for(lambda: slot.waiting == 1, THREAD_STATE_S, 0.005)
        assert log == []
    wait_for(lambda: log == ["small in"], THREAD_STATE_S, 0.005)
    release.set()
    waiter.join(5)


def test_a_refusal_says_when_the_first_running_image_should_end():
    now = [100.0]
    slot = InferenceSlot(queue_size=0, wait_timeout_s=60, slots=2, clock=lambda: now[0])
    with slot.hold(seconds=30):  # should end at 130
        now[0] = 110.0
        with slot.hold(seconds=5):  # should end at 115: the first place to free
            with pytest.raises(Busy) as refused:
                slot.check_room()
            assert refused.value.retry_after_s == 5
            now[0] = 120.0  # past its estimate: it may end any moment
            with pytest.raises(Busy) as refused:
                slot.check_room()
            assert refused.value.retry_after_s == 0
        with slot.hold(seconds=60):  # the second place again, ending at 180: the first (130) frees sooner
            with pytest.raises(Busy) as refused:
                slot.check_room()
            assert refused.value.retry_after_s == 10
    assert slot.running == 0


def test_retry_after_is_whole_seconds_from_retry_after_s_to_queue_wait_s():
    assert Busy("busy", 41.2).retry_after(5, 60) == 42
    assert Busy("busy", 0.3).retry_after(5, 60) == 5
    assert Busy("busy", 3000).retry_after(5, 60) == 60  # one worker's estimate: another may be free sooner
    assert NotReady("loading").retry_after(7, 60) == 7  # no estimate: the setting


def test_observers_see_every_change_in_order():
    slot, seen = InferenceSlot(queue_size=1, wait_timeout_s=5), []
    slot.observe(lambda waiting, running: seen.append((waiting, running)))
    with slot.hold():
        pass
    assert seen == [(0, 1), (0, 0)]


# --- Detecting a client that hung up ------------------------------------------------------------------------


def test_peer_closed_sees_a_hang_up_but_not_an_idle_or_pipelining_client():
    server, client = socket.socketpair()
    with server:
        assert not peer_closed(server)  # open, nothing sent
        client.sendall(b"GET / HTTP/1.1\r\n")
        assert not peer_closed(server)  # a pipelined request is data, and the peek leaves it unread
        assert server.recv(100) == b"GET / HTTP/1.1\r\n"
        client.close()
        assert peer_closed(server)


def test_the_progress_check_raises_cancelled_only_under_a_server_socket():
    assert stop_when_client_leaves({}) is None  # Flask's test client: nothing to watch
    server, client = socket.socketpair()
    with server:
        check = stop_when_client_leaves({"gunicorn.socket": server})
        check(1, 10)
        client.close()
        with pytest.raises(Cancelled, match="after 2 of 10 tiles"):
            check(2, 10)


# --- Through the Flask app: 503 + Retry-After, and the time limit ------------------------------------------


@pytest.fixture()
def strict_service(app, service, monkeypatch):
    """The app's service swapped for one with a queue of 0, a 50 ms time limit and tiny tiles (same models).

    Its cost estimate says every image is free, as an estimate that is wrong would: the limit in flight is
    what then stops a request.
    """
    settings = load_settings(models=TEST_MODELS, queue_size=0, request_time_limit_s=0.05, retry_after_s=7,
                             tile_size=32, tile_batch=1)
    strict = Service(settings, service.registry, InferenceSlot(settings.queue_size, settings.queue_wait_s))
    monkeypatch.setattr(strict, "estimate_seconds", lambda *args: 0.0)
    app.extensions["super_resolution"] = strict
    yield strict
    app.extensions["super_resolution"] = service


def post(client, data: bytes):
    return client.post("/model/predict", data={"image": (io.BytesIO(data), "a.png")},
                       content_type="multipart/form-data")


def test_a_full_worker_answers_503_with_retry_after_at_once(client, strict_service):
    with strict_service.slot.hold():  # another image is running, and no queue: refused without waiting
        response = post(client, sample_bytes("camera.png"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert "busy" in response.json["message"] and "queue size 0" in response.json["message"]


def test_a_full_worker_says_when_its_running_image_should_end(app, client, service):
    settings = load_settings(models=TEST_MODELS, queue_size=0, retry_after_s=7)
    busy = Service(settings, service.registry, InferenceSlot(0, settings.queue_wait_s, clock=lambda: 100.0))
    app.extensions["super_resolution"] = busy
    try:
        with busy.slot.hold(seconds=41.5):  # an image the plan says runs 41.5 s has just started
            predict = post(client, sample_bytes("camera.png"))
            page = client.post("/app/upscale", data={"image": (io.BytesIO(sample_bytes("camera.png")), "a.png")},
                               content_type="multipart/form-data")
    finally:
        app.extensions["super_resolution"] = service
    assert (predict.status_code, predict.headers["Retry-After"]) == (503, "42")
    assert (page.status_code, page.headers["Retry-After"]) == (503, "42")


def test_the_pages_stream_ends_a_busy_refusal_with_the_queues_retry_after():
    from api.web import _error_event

    settings = load_settings(models=TEST_MODELS, retry_after_s=7, queue_wait_s=50)
    assert _error_event(Busy("busy", 41.5), settings)["retry_after_s"] == 42
    assert _error_event(Busy("busy", 400), settings)["retry_after_s"] == 50
    assert _error_event(NotReady("loading"), settings)["retry_after_s"] == 7


def test_a_request_past_its_time_limit_stops_with_503(client, strict_service):
    response = post(client, sample_bytes("astronaut.png"))  # 128x128 in 32 px tiles: several tiles
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    message = response.json["message"]
    assert "the request time limit is 0.05 s (REQUEST_TIME_LIMIT_S)" in message  # not "0 s"
    done, total = map(int, re.search(r"after (\d+) of (\d+) tiles", message).groups())
    assert 1 <= done < total
    assert strict_service.slot.running == 0  # the slot is free for the next request


def test_the_pages_route_refuses_a_full_worker_with_retry_after_at_once(client, strict_service):
    with strict_service.slot.hold():
        response = client.post("/app/upscale", data={"image": (io.BytesIO(sample_bytes("camera.png")), "a.png")},
                               content_type="multipart/form-data")
    assert (response.status_code, response.headers["Retry-After"]) == (503, "7")
    assert "busy" in response.json["message"]


def test_the_pages_stream_ends_a_503_with_when_to_retry(client, strict_service):
    """The page's route has sent its 200 before the time runs out: the error event carries Retry-After's value."""
    response = client.post("/app/upscale", data={"image": (io.BytesIO(sample_bytes("astronaut.png")), "a.png")},
                           content_type="multipart/form-data")
    last = json.loads(response.data.splitlines()[-1])
    assert (last["event"], last["status"], last["retry_after_s"]) == ("error", 503, 7)
    assert "time limit" in last["message"]


# --- Against a real gunicorn -------------------------------------------------------------------------------


@pytest.mark.slow
def test_gunicorn_refuses_requests_beyond_the_queue_at_once_then_recovers():
    with live_server(queue_size=1, threads=4, retry_after_s=7, **SLOW_SERVER) as server:
        big = png(400, 400)  # minutes of work on SLOW_SERVER
        running = start_predict(server.url, big, **SLOW_FIELDS)
        wait_for(lambda: gauge(server.url, "superres_inference_running") == 1, 60)
        queued = start_predict(server.url, big, **SLOW_FIELDS)
        wait_for(lambda: gauge(server.url, "superres_inference_queued") == 1, 30)

        def post_big(_) -> requests.Response:
            return requests.post(f"{server.url}/model/predict", data=SLOW_FIELDS, files={"image": ("big.png", big)},
                                 timeout=60)

        with ThreadPoolExecutor(2) as pool:
            refused = list(pool.map(post_big, range(2)))
        for response in refused:  # at once: the queue is full, so nothing waits
            assert response.status_code == 503
            # the big image should end in minutes: QUEUE_WAIT_S (60), not RETRY_AFTER_S
            assert response.headers["Retry-After"] == "60"
            assert "1 queued (queue size 1)" in response.json()["message"]

        # The queued client hangs up: it leaves the queue while the big image still runs (minutes of work).
        queued.close()
        wait_for(lambda: gauge(server.url, "superres_inference_queued") == 0, 30)
        assert gauge(server.url, "superres_inference_running") == 1
        # The running one hangs up: its work stops at its next tile, and long before the minutes the big image
        # needs, the worker serves new requests.
        running.close()

        def small_served() -> requests.Response | None:
            response = requests.post(f"{server.url}/model/predict", files={"image": ("small.png", png(48, 48))},
                                     timeout=60)
            assert response.status_code in (200, 503)
            return response if response.status_code == 200 else None

        small = wait_for(small_served, 120, interval_s=0.5)
        assert small.headers["X-Output-Size"] == "192x192"


def test_the_hang_up_check_and_the_clock_start_before_decoding(service, monkeypatch):
    from core import images, pipeline

    calls: list[str] = []
    decode = images.decode_pixels
    monkeypatch.setattr(images, "decode_pixels", lambda *args: (calls.append("decode"), decode(*args))[1])

    def client_gone(done: int, total: int) -> None:
        calls.append(f"check {done}/{total}")
        raise Cancelled("the client closed the connection")

    with pytest.raises(Cancelled):
        pipeline.run(service.prepare(sample_bytes("camera.png"), UpscaleOptions()), service.settings, client_gone)
    assert calls == ["check 0/0"], "a client that has left must not cost a decode"


# --- Cost known before work ---------------------------------------------------------------------------------


def service_with(service, **overrides) -> Service:
    settings = load_settings(models=TEST_MODELS, **overrides)
    return Service(settings, service.registry, InferenceSlot(settings.queue_size, settings.queue_wait_s))


def estimate(service, width: int, height: int, ensemble: bool = False) -> float:
    """The seconds the service's own plan gives the image (its tiles as its memory budget cuts them)."""
    return service.prepare(png(width, height), UpscaleOptions(model="srgan", scale=4, ensemble=ensemble)).seconds


def test_a_request_the_time_limit_would_stop_is_refused_before_it_queues(app, client, service):
    # A 1 x 6000 strip: few pixels, but one network call per 160 pixels; the limit is set from this machine's speed.
    strip = png(6000, 1)
    limit = estimate(service, 6000, 1) / 2
    app.extensions["super_resolution"] = strict = service_with(service, request_time_limit_s=limit)
    try:
        with strict.slot.hold():  # the slot is taken: a refusal that came from the queue would say "busy"
            response = post(client, strip)
    finally:
        app.extensions["super_resolution"] = service
    assert response.status_code == 413
    message = response.json["message"]
    assert "6000x1 image would take about" in message and "REQUEST_TIME_LIMIT_S" in message and "srgan" in message


def test_strength_0_is_not_refused_for_the_network_it_does_not_run(app, client, service):
    """strength 0 is the Lanczos enlargement alone: the network's time is not its to meet, and ensemble, which
    would change nothing, is refused for that (400), not for ensemble's pixel limit (413)."""
    strip = png(6000, 1)
    limit = estimate(service, 6000, 1) / 2
    app.extensions["super_resolution"] = service_with(service, request_time_limit_s=limit, max_ensemble_pixels=100)

    def post_strip(**fields):
        return client.post("/model/predict", data={"image": (io.BytesIO(strip), "a.png"), **fields},
                           content_type="multipart/form-data")
    try:
        lanczos_only, with_ensemble, mixed = (post_strip(strength="0"), post_strip(strength="0", ensemble="true"),
                                              post_strip(strength="0.5"))
    finally:
        app.extensions["super_resolution"] = service
    assert lanczos_only.status_code == 200, lanczos_only.json
    assert lanczos_only.headers["X-Output-Size"] == "24000x4"
    assert with_ensemble.status_code == 400 and "no model runs" in with_ensemble.json["message"]
    assert mixed.status_code == 413 and "REQUEST_TIME_LIMIT_S" in mixed.json["message"]


def test_strength_0_is_not_refused_for_the_models_result_it_does_not_make(app, client, service):
    """At scale 2 the output (12000 x 2) fits 60000 pixels; the model's 4x result (24000 x 4), not made at
    strength 0, does not."""
    app.extensions["super_resolution"] = service_with(service, max_output_pixels=60000)
    try:
        answers = {strength: client.post("/model/predict", data={"image": (io.BytesIO(png(6000, 1)), "a.png"),
                                                                 "scale": "2", "strength": strength},
                                         content_type="multipart/form-data") for strength in ("0", "1")}
    finally:
        app.extensions["super_resolution"] = service
    assert answers["0"].status_code == 200 and answers["0"].headers["X-Output-Size"] == "12000x2"
    assert answers["1"].status_code == 413 and "the model's 4x result" in answers["1"].json["message"]


def test_a_request_within_the_estimate_is_served(app, client, service):
    app.extensions["super_resolution"] = service_with(service, request_time_limit_s=max(10 * estimate(service, 48, 48), 5))
    try:
        response = post(client, png(48, 48))
    finally:
        app.extensions["super_resolution"] = service
    assert response.status_code == 200


def test_ensemble_has_its_own_pixel_limit(app, client, service):
    app.extensions["super_resolution"] = service_with(service, max_ensemble_pixels=40 * 40)
    try:
        response = client.post("/model/predict", data={"image": (io.BytesIO(png(48, 48)), "a.png"), "ensemble": "true"},
                               content_type="multipart/form-data")
    finally:
        app.extensions["super_resolution"] = service
    assert response.status_code == 413
    assert "48x48 = 2304 pixels" in response.json["message"] and "MAX_ENSEMBLE_PIXELS" in response.json["message"]


def test_the_estimate_grows_with_calls_pixels_and_ensemble(service):
    assert estimate(service, 6000, 1) > estimate(service, 160, 1)
    assert estimate(service, 400, 400) > estimate(service, 100, 100)
    assert estimate(service, 100, 100, ensemble=True) == pytest.approx(8 * estimate(service, 100, 100))


class NoisyNetwork:
    """A network whose calls take ``per_call_s + per_pixel_s * pixels`` on a clock of its own, except the calls
    a noisy neighbour slows down ``slowed`` times (by call number, the untimed first calls counted)."""

    def __init__(self, per_call_s: float, per_pixel_s: float, slowed: dict[int, float]) -> None:
        self.per_call_s, self.per_pixel_s, self.slowed = per_call_s, per_pixel_s, slowed
        self.now, self.calls = 0.0, 0

    def clock(self) -> float:
        return self.now

    def predict(self, batch):
        seconds = self.per_call_s + self.per_pixel_s * batch.shape[1] * batch.shape[2]
        self.now += seconds * self.slowed.get(self.calls, 1.0)
        self.calls += 1
        return batch


@pytest.mark.parametrize("slowed", [
    {1: 20.0},  # the first timed call of the small window, while a neighbour takes the cores
    {speed.TIMED_CALLS + 2: 20.0},  # the first timed call of the large window
    {2: 0.05},  # a small call cut short (a clock's jump): the per-pixel cost must not come out of it
])
def test_one_disturbed_call_does_not_change_the_measured_speed(slowed):
    network = NoisyNetwork(0.01, 1e-6, slowed)
    throughput = speed.measure(network.predict, 160, network.clock)
    assert throughput.per_call_s == pytest.approx(0.01) and throughput.per_pixel_s == pytest.approx(1e-6)
    assert network.calls == 2 * (1 + speed.TIMED_CALLS)  # a bounded measurement: the same few calls every time


def test_a_network_with_whole_image_averages_is_timed_for_its_tiles_and_its_averages_apart():
    """Its tiles run with the averages given; the averages' pass costs on its own (here twice the tiles' per call
    and three times per pixel), once per pass and not once per tile."""
    now = [0.0]

    def run(inputs):
        windows = inputs[0]
        now[0] += 0.01 + 1e-6 * windows.shape[1] * windows.shape[2]
        return windows.repeat(4, axis=1).repeat(4, axis=2)

    def averages(windows):
        now[0] += 0.02 + 3e-6 * windows.shape[1] * windows.shape[2]
        return [windows.mean(axis=(1, 2), keepdims=True)]

    throughput = speed.measure_network(Network("averaged", run, margin=8, measure=averages), 160, lambda: now[0])
    assert (throughput.per_call_s, throughput.per_pixel_s) == (pytest.approx(0.01), pytest.approx(1e-6))
    assert (throughput.statistics.per_call_s, throughput.statistics.per_pixel_s) == (pytest.approx(0.02),
                                                                                     pytest.approx(3e-6))


def test_a_padded_network_is_timed_per_pixel_it_runs_so_that_small_windows_cost_their_border():
    """Real-CUGAN's runner extends each window by its border: timed per window pixel at 16 and 160 px, a call of a
    64-px window (run at 64 + 2 x 18 px) came out a quarter cheaper than it is."""
    now = [0.0]

    def run(windows):
        now[0] += 0.01 + 1e-6 * windows.shape[1] * windows.shape[2]
        return windows.repeat(2, axis=1).repeat(2, axis=2)

    border = Border(18, 4)
    throughput = speed.measure_network(Network("padded", run, margin=8, scale=2, border=border), 160,
                                       lambda: now[0])
    assert (throughput.per_call_s, throughput.per_pixel_s) == (pytest.approx(0.01), pytest.approx(1e-6))
    assert throughput.seconds(1, memory.run_pixels(64, 64, border)) == pytest.approx(0.01 + 1e-6 * 100 * 100)


class CountingNetwork:
    """A 4x network (nearest neighbour) that counts the calls and window pixels it is given, its tiles' and its
    whole-image averages' apart."""

    def __init__(self) -> None:
        self.calls = self.pixels = 0

    def run(self, inputs):
        batch = inputs[0] if isinstance(inputs, list) else inputs  # with averages: [windows, *averages]
        self.calls += 1
        self.pixels += batch.shape[0] * batch.shape[1] * batch.shape[2]
        return batch.repeat(4, axis=1).repeat(4, axis=2)

    def measure(self, batch):
        self.calls += 1
        self.pixels += batch.shape[1] * batch.shape[2]
        return [batch.mean(axis=(1, 2), keepdims=True)]


def grey16(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(width * height, dtype=np.uint16).reshape(height, width) * 7).save(buffer, "PNG")
    return buffer.getvalue()


def with_alpha(width: int, height: int) -> bytes:
    pixels = np.asarray(Image.open(io.BytesIO(png(width, height))).convert("RGBA")).copy()
    pixels[..., 3] = np.arange(width, dtype=np.uint8)  # a gradient of transparency, upscaled beside the colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("border", [None, Border(7, 2)], ids=["unpadded", "padded"])
@pytest.mark.parametrize("averages", [False, True], ids=["tiles", "whole-image averages"])
@pytest.mark.parametrize("image, fields", [
    (png(100, 70), {}),
    (png(100, 70), {"scale": 8}),  # two passes
    (png(60, 50), {"ensemble": True}),
    (png(100, 70), {"strength": 0.4}),
    (png(100, 70), {"width": 300, "height": 300, "fit": "cover"}),
    (grey16(90, 40), {"scale": 3}),
    (with_alpha(80, 60), {}),  # the alpha is resized, not run: the colour's tiles alone are the network's
    (png(700, 1), {}),  # a line: every window mostly margin, and the averages' windows more than the tiles
])
def test_the_estimate_counts_the_calls_and_pixels_the_pipeline_runs(service, image, fields, averages, border):
    """With a cost of one second a call, then one a pixel run, the estimate is what the network was given (a
    padded network's windows and averages' windows with their border)."""
    strict = service_with(service, tile_size=32, tile_batch=3)
    options = UpscaleOptions(model="srgan", **fields)
    plan = strict.prepare(image, options)
    for per_call, per_pixel in ((1.0, 0.0), (0.0, 1.0)):
        # As measured at load: the averages' pass timed where the network has one
        cost = speed.Throughput(per_call, per_pixel, speed.Throughput(per_call, per_pixel) if averages else None)
        counting = CountingNetwork()
        network = Network("srgan", counting.run, margin=8, measure=counting.measure if averages else None,
                          throughput=cost, border=border)
        passes = strict.plan_passes(network, plan.output, 0)
        seconds = strict.estimate_seconds(network, passes, options.ensemble)
        pipeline.run(replace(plan, network=network, passes=passes, seconds=seconds), strict.settings)
        assert seconds == (counting.calls if per_call else counting.pixels)
