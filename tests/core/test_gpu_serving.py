"""What a GPU worker does beyond the CPU's, proven on the CPU through the PyTorch backend: several images in
flight whose host stages overlap another's network, the out-of-memory retry with halved tiles, the GPU memory
budget's arithmetic, and the device's figures in /model/metadata and /metrics."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
import tracemalloc

import numpy as np
import png
import pytest
import torch
from pydantic import ValidationError

from bench import gpu
from config import CPU_WORKER_MEMORY_BUDGET_MB, GPU_WORKER_MEMORY_BUDGET_MB, load_settings
from core import backends, cost, encoding, images, memory, pipeline, shutdown
from core.admission import InferenceSlot
from core.backends import pytorch
from core.errors import Busy, Cancelled, NotReady, OutOfDeviceMemory, TooLarge
from core.metrics import psnr
from core.models.ensemble import self_ensemble, turned
from core.models.registry import ModelRegistry
from core.models.runtime import Network
from core.models.specs import SPECS
from core.models.speed import Throughput
from core.models.weights import REALCUGAN_BORDERS
from core.options import UpscaleOptions
from core.plan import plan_pass
from core.service import GPU_MEMORY_SHARE, Service, worker_room
from harness.raw_http import wait_for
from tests.api.test_inputs import read_png16
from tests.conftest import decode, encode, loaded_app

EVENT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def gpu_like_app():
    """The PyTorch backend on the CPU with two images in flight, as a GPU worker runs them."""
    return loaded_app(load_settings(models="anime", default_model="anime", backend="pytorch", inference_slots=2))


@pytest.fixture(scope="module")
def service(gpu_like_app):
    return gpu_like_app.extensions["super_resolution"]


def photo(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(height * width)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(height, width, 3)), axis=0), axis=1)
    return np.uint8(255 * (smooth - smooth.min()) / np.ptp(smooth))


def test_the_slots_let_that_many_images_run_and_queue_the_rest():
    slot = InferenceSlot(queue_size=0, wait_timeout_s=1, slots=2)
    with slot.hold(), slot.hold():
        assert slot.running == 2
        with pytest.raises(Busy, match="2 of 2 images running"):
            with slot.hold():
                pass


@pytest.mark.slow
def test_a_request_encodes_while_another_runs_its_network(service, monkeypatch):
    """A enters its encode, and waits there until B's network has run; B decodes only once A is encoding. If
    a request held the worker from decode to encode, B could not reach its network and A would wait in vain."""
    first, second = encode(photo(32, 32)), encode(photo(24, 20))
    first_encoding, second_network_ran = threading.Event(), threading.Event()
    real_decode, real_encode, real_run = images.decode_pixels, encoding.encode, pytorch.TorchRunner._hosted

    def gated_decode(data, header):
        if data is second:
            assert first_encoding.wait(EVENT_TIMEOUT_S), "the first request never reached its encode"
        return real_decode(data, header)

    def gated_encode(colour, *args, **kwargs):
        if colour.shape[:2] == (128, 128):
            first_encoding.set()
            assert second_network_ran.wait(EVENT_TIMEOUT_S), "the second request's network did not run meanwhile"
        return real_encode(colour, *args, **kwargs)

    def watched_run(runner, batch, finish):
        result = real_run(runner, batch, finish)
        if batch.shape[1:3] == (24, 20):
            second_network_ran.set()
        return result

    monkeypatch.setattr(images, "decode_pixels", gated_decode)
    monkeypatch.setattr(encoding, "encode", gated_encode)
    monkeypatch.setattr(pytorch.TorchRunner, "_hosted", watched_run)
    results: dict[str, object] = {}

    def upscale(name: str, data: bytes) -> None:
        results[name] = service.upscale(data, UpscaleOptions(model="anime"))

    threads = [threading.Thread(target=upscale, args=("first", first))]
    threads[0].start()
    threads.append(threading.Thread(target=upscale, args=("second", second)))
    threads[1].start()
    for thread in threads:
        thread.join(2 * EVENT_TIMEOUT_S)
    assert (results["first"].width, results["second"].width) == (128, 80)


class OutOfMemoryAbove:
    """A runner the GPU of which holds windows of at most ``limit`` pixels (an injected out-of-memory)."""

    def __init__(self, runner, limit: int) -> None:
        self.runner, self.limit, self.windows, self.refused = runner, limit, [], 0

    def __call__(self, batch):
        self._check(batch)
        return self.runner(batch)

    def levels(self, batch, max_value: int):
        self._check(batch)
        return self.runner.levels(batch, max_value)

    def _check(self, batch) -> None:
        self.windows.append(batch.shape[1:3])
        if batch.shape[1] * batch.shape[2] > self.limit:
            self.refused += 1
            raise OutOfDeviceMemory(f"the GPU has no memory for a window of {batch.shape[2]}x{batch.shape[1]}")

    def release_memory(self) -> None:
        self.runner.release_memory()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_the_runner_rounds_to_levels_as_the_host_rounds_the_floats(service, dtype):
    """On a GPU the output crosses to the host as 8- or 16-bit levels (a quarter or half of float32's bytes);
    they are exactly the levels the host would round the float output to."""
    network = service.registry.get("anime")
    rgb = photo(24, 20).astype(np.float32) / 255
    max_value = int(np.iinfo(dtype).max)
    levels = network.level_predictor(rgb, max_value)(rgb[None])
    floats = network.predictor(rgb)(rgb[None])
    assert levels.dtype == dtype and levels.shape == floats.shape == (1, 96, 80, 3)
    np.testing.assert_array_equal(levels, np.clip(np.rint(floats * np.float32(max_value)), 0, max_value))


def png16(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    height, width, _ = pixels.shape
    png.Writer(width, height, greyscale=False, bitdepth=16).write(out, pixels.reshape(height, -1))
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 16])
def test_a_tiled_request_takes_the_device_levels_and_answers_as_the_host_rounding_would(service, monkeypatch, bits):
    """The pipeline places the runner's levels where it would otherwise round the floats itself: across several
    tiles, in 8 and in 16 bits, the output's pixels are the same either way."""
    image = photo(72, 56)
    if bits == 8:
        data, read = encode(image), lambda answer: np.asarray(decode(answer))
    else:
        detail = np.random.default_rng(16).integers(0, 257, image.shape, dtype=np.uint16)
        data, read = png16(image.astype(np.uint16) * 257 + detail), lambda answer: read_png16(answer)[0]
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"tile_size": 32}))
    rounded_on_device = []
    real_levels = pytorch.TorchRunner.levels
    monkeypatch.setattr(pytorch.TorchRunner, "levels",
                        lambda runner, batch, max_value: rounded_on_device.append(max_value) or
                        real_levels(runner, batch, max_value))
    plan = service.prepare(data, UpscaleOptions(model="anime"))
    through_levels = read(service.run(plan).data)
    monkeypatch.setattr(Network, "level_predictor", lambda network, image, max_value, **window: None)
    through_floats = read(service.upscale(data, UpscaleOptions(model="anime")).data)
    assert plan.tile_count > 1 and set(rounded_on_device) == {2 ** bits - 1}
    assert through_levels.shape == (288, 224, 3) and through_levels.dtype == np.dtype(f"uint{bits}")
    np.testing.assert_array_equal(through_levels, through_floats)


@pytest.fixture()
def short_of_memory(service, monkeypatch):
    """The anime network with an injected limit on the windows it takes (set ``.limit``)."""
    networks = service.registry._networks["anime"]
    (key, network), = networks.items()
    failing = OutOfMemoryAbove(network.run, 0)
    monkeypatch.setitem(networks, key, dataclasses.replace(network, run=failing))
    return failing


@pytest.mark.slow
def test_an_out_of_memory_window_halves_the_tile_until_it_fits(service, short_of_memory, caplog):
    image = photo(160, 160)
    short_of_memory.limit = 10 ** 9
    whole = service.upscale(encode(image), UpscaleOptions(model="anime"))
    short_of_memory.limit = 110 * 110
    short_of_memory.windows.clear()
    reported = []
    with caplog.at_level("WARNING", logger="core.pipeline"):
        halved = service.upscale(encode(image), UpscaleOptions(model="anime"),
                                 lambda done, total: reported.append((done, total)))
    assert "running the pass again with tiles of 80 px" in caplog.text  # half the 160 px it ran
    # The total follows the pass run again, so the time limit, which acts while tiles remain, still acts.
    assert reported[-1] == (4, 4) and all(done <= total for done, total in reported)
    assert max(h * w for h, w in short_of_memory.windows[-4:]) <= 110 * 110
    assert psnr(np.asarray(decode(halved.data)), np.asarray(decode(whole.data))) >= 45


@pytest.mark.slow
def test_after_a_retry_in_smaller_tiles_the_shutdown_check_weighs_the_calls_run(service, short_of_memory,
                                                                              monkeypatch):
    """A shutdown that leaves time for a call of the retry's smaller tile, but not for one of the whole-image window
    that had no memory, lets the request finish: the check weighs the calls the pass runs now."""
    throughput = Throughput(per_call_s=0.0, per_pixel_s=1.0)  # a second a pixel, on the injected clock
    short_of_memory.limit = 110 * 110
    plan = service.prepare(encode(photo(160, 160)), UpscaleOptions(model="anime"))
    network = dataclasses.replace(plan.network, throughput=throughput)
    plan = dataclasses.replace(plan, network=network, seconds=cost.estimate_seconds(throughput, plan.passes, False, 1))
    planned, retried = (throughput.seconds(1, memory.run_pixels(*step.window_shape, network.border))
                        for step in (plan.passes[0], plan_pass(network, 160, 160, 80)))
    spare = (planned - retried) / 4
    # The call that had no memory took 2 x spare: then a planned call would end past the grace period, a retried
    # one within it.
    monkeypatch.setattr(shutdown, "_clock", lambda: 2 * spare * short_of_memory.refused)
    monkeypatch.setattr(shutdown, "_stop_at", planned + spare)
    result = service.run(plan)
    assert short_of_memory.refused == 1 and plan.tile_count == 1
    assert (result.width, result.height) == (640, 640)


def test_the_tile_count_grows_with_a_pass_run_again_in_smaller_tiles():
    reported = []
    count = pipeline.TileCount(lambda done, total: reported.append((done, total)), 3)  # passes of 1 and 2 tiles
    first = count.in_pass(1)
    first(0, 4)  # the first pass's one window had no room: four smaller tiles
    first(4, 4)
    second = count.in_pass(2)
    second(1, 2)
    second(2, 2)
    assert reported == [(0, 6), (4, 6), (5, 6), (6, 6)]


@pytest.mark.slow
def test_below_the_smallest_retry_tile_the_answer_is_503_and_the_worker_serves_on(gpu_like_app, short_of_memory):
    client = gpu_like_app.test_client()
    short_of_memory.limit = 1
    form = {"image": (io.BytesIO(encode(photo(160, 160))), "photo.png")}
    answer = client.post("/model/predict", data=form, content_type="multipart/form-data")
    assert answer.status_code == 503
    assert "even with tiles of" in answer.get_json()["message"]
    assert answer.headers["Retry-After"]
    short_of_memory.limit = 10 ** 9
    form = {"image": (io.BytesIO(encode(photo(40, 40))), "photo.png")}
    assert client.post("/model/predict", data=form, content_type="multipart/form-data").status_code == 200


def out_of_memory_count(client) -> float:
    metrics = client.get("/metrics").get_data(as_text=True).splitlines()
    return float(next(line for line in metrics if line.startswith("superres_device_out_of_memory_total")).split()[-1])


@pytest.mark.slow
def test_a_pinned_copy_without_memory_is_a_503_and_the_worker_serves_on(gpu_like_app, monkeypatch):
    """CUDA's "out of memory" for a pinned block (a torch.AcceleratorError, not torch.OutOfMemoryError) was a 500:
    it now takes the retries with smaller tiles like any out-of-memory error, and below them a 503. /metrics counts
    each call without memory (they were seen only as 503s among the busy and time-limit ones, or not at all)."""
    client = gpu_like_app.test_client()
    counted_before = out_of_memory_count(client)
    copies = []

    def pinned_block_fails(runner, tensor):
        copies.append(tensor.shape)
        raise torch.AcceleratorError("CUDA error: out of memory\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1")

    monkeypatch.setattr(pytorch.TorchRunner, "_to_host", pinned_block_fails)
    form = {"image": (io.BytesIO(encode(photo(160, 160))), "photo.png")}
    answer = client.post("/model/predict", data=form, content_type="multipart/form-data")
    assert answer.status_code == 503, answer.get_json()
    assert answer.get_json()["message"].endswith("even with tiles of 64 px, one window a call; retry later")
    assert answer.headers["Retry-After"] and len(copies) == 3  # tiles of 160, 80 and 64 px
    assert out_of_memory_count(client) == counted_before + 3
    monkeypatch.undo()
    form = {"image": (io.BytesIO(encode(photo(40, 40))), "photo.png")}
    assert client.post("/model/predict", data=form, content_type="multipart/form-data").status_code == 200


def stopped_on_device_failure(service, monkeypatch) -> list[bool]:
    """The service with a device that has not failed yet, and the calls of the worker's stop once it does (whether
    the device failed while the models loaded)."""
    stops = []
    monkeypatch.setitem(pytorch.DEVICE_LOCKS, "cpu", pytorch.DeviceLock())
    monkeypatch.setattr(service, "_stop", None)
    monkeypatch.setattr(service, "_stopped", False)
    monkeypatch.setattr(service, "_failed_loading", False)
    service.on_device_failure(stops.append)
    assert stops == [] and service.device_failure is None
    return stops


def test_a_gpu_that_fails_while_the_models_load_stops_the_worker_as_one_that_failed_to_boot(gpu_like_app, service,
                                                                                              monkeypatch):
    """A model's warm-up that meets the GPU's failure marks the model failed, and the worker stayed so for good
    (/health ok): the worker now stops once loading ends, told that the device failed while the models loaded
    (gunicorn.conf.py then stops the server), and a stop installed after that is called at once, told the same."""
    stops = stopped_on_device_failure(service, monkeypatch)
    failure = "the GPU failed (CUDA error: an illegal memory access was encountered) and ..."

    def warm_up_fails(on_loaded):
        pytorch.DEVICE_LOCKS["cpu"].failure = failure

    monkeypatch.setattr(service.registry, "load_all", warm_up_fails)
    service.load()
    assert stops == [True]
    assert gpu_like_app.test_client().get("/health").get_json() == {"status": "failed", "reason": failure}
    monkeypatch.setattr(service, "_stopped", False)
    service.on_device_failure(stops.append)
    assert stops == [True, True]


def predict_photo(client, side: int):
    form = {"image": (io.BytesIO(encode(photo(side, side))), "photo.png")}
    return client.post("/model/predict", data=form, content_type="multipart/form-data")


def test_a_gpu_that_failed_for_good_answers_503_fails_health_and_has_the_worker_replaced(gpu_like_app, service,
                                                                                         monkeypatch):
    """A CUDA error that leaves the context broken (an illegal address) was a 500 on that request and every later
    one while /health said ok, so nothing restarted the worker. Now: a 503 saying so, at once for the requests
    after it, /health and /ready 503, and the worker told once to stop (gunicorn.conf.py: a fresh one replaces it)."""
    client = gpu_like_app.test_client()
    stops = stopped_on_device_failure(service, monkeypatch)
    monkeypatch.setattr(pytorch, "device_works", lambda device: False)
    copy_back = pytorch.TorchRunner._to_host

    def illegal_address(runner, tensor):
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors ...")

    monkeypatch.setattr(pytorch.TorchRunner, "_to_host", illegal_address)
    answer = predict_photo(client, 40)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    message = answer.get_json()["message"]
    assert message.startswith("the GPU failed (CUDA error: an illegal memory access was encountered)")
    assert message.endswith("it restarts with a fresh GPU context; retry")
    monkeypatch.setattr(pytorch.TorchRunner, "_to_host", copy_back)
    again = predict_photo(client, 40)
    assert (again.status_code, again.get_json()["message"]) == (503, message)
    assert stops == [False]  # at a request, not while the models loaded: gunicorn.conf.py replaces the worker
    health = client.get("/health")
    assert (health.status_code, health.get_json()) == (503, {"status": "failed", "reason": message})
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.get_json()["ready"] is False
    assert ready.get_json()["device_failure"] == message


def test_the_whole_image_is_one_window_where_it_fits_the_gpu_budget():
    mib = memory.MEBIBYTE
    assert memory.tile_for_device_budget(2000 * mib, 100 * mib, 4300, 32, 500, 700) == 700


def test_a_window_too_large_for_the_gpu_budget_is_split_into_square_tiles():
    mib = memory.MEBIBYTE
    tile = memory.tile_for_device_budget(1100 * mib, 100 * mib, 4300, 32, 2000, 2000)
    window = tile + 2 * 32
    assert window * window * 4300 <= 1000 * mib < (window + 2 * 16) ** 2 * 4300


def test_no_tile_fits_a_tiny_gpu_budget():
    with pytest.raises(TooLarge, match="GPU_MEMORY_BUDGET_MB=101 leaves: 100 MiB are the loaded models"):
        memory.tile_for_device_budget(101 * memory.MEBIBYTE, 100 * memory.MEBIBYTE, 4300, 32, 500, 500)


@pytest.mark.parametrize("margin, border", [(8, None), (16, None), (20, None), (32, None)]  # the built-in margins
                         + [(20, border) for border in REALCUGAN_BORDERS.values()])  # Real-CUGAN's, with its borders
def test_a_gpu_budget_that_holds_the_smallest_window_sizes_a_tile(margin, border):
    """A model stays in service where the budget holds its smallest window (short_of_device_memory), so a tile must
    fit there: with Real-CUGAN's 20-px margin the check counted a 56-px window where the tiles' windows are
    multiples of 16 px, and a budget between the two kept the model while every image past one window was a 413."""
    mib, per_pixel = memory.MEBIBYTE, 5100
    smallest = memory.smallest_window_bytes(per_pixel, margin, border=border)
    assert memory.tile_for_device_budget(100 * mib + smallest, 100 * mib, per_pixel, margin, 2000, 2000,
                                         border=border) >= memory.MIN_TILE
    with pytest.raises(TooLarge, match=f"the smallest tile's window needs {memory.mib_up(smallest)} MiB"):
        memory.tile_for_device_budget(100 * mib + smallest - 1, 100 * mib, per_pixel, margin, 2000, 2000,
                                      border=border)


def test_a_padded_networks_gpu_windows_count_the_border_they_run_with():
    """Real-CUGAN's runner pads each window by 19 px a side at 4x: its 64² window runs at 102², 2.5x the memory
    the budget reserved for it, and an image was run whole where only its own pixels fit."""
    mib, per_pixel, border = memory.MEBIBYTE, 5100, REALCUGAN_BORDERS[4]
    assert memory.smallest_window_bytes(per_pixel, 20, border=border) == 102 * 102 * per_pixel
    room = 500 * 500 * per_pixel  # the image's own pixels fit, not the 538² it runs at
    tile = memory.tile_for_device_budget(100 * mib + room, 100 * mib, per_pixel, 20, 500, 500, border=border)
    window = tile + 2 * 20
    assert border.padded(window) ** 2 * per_pixel <= room < border.padded(window + 16) ** 2 * per_pixel
    with pytest.raises(TooLarge, match=f"needs {memory.mib_up(102 * 102 * per_pixel)} MiB"):
        memory.tile_for_device_budget(100 * mib + 64 * 64 * per_pixel, 100 * mib, per_pixel, 20, 2000, 2000,
                                      border=border)


def test_an_image_that_fits_the_gpu_whole_runs_as_one_window_whatever_the_batch():
    """The budget was divided by TILE_BATCH before the whole-image check: an image that fits as one window was
    tiled (its margins computed twice), though a single window runs one a call."""
    mib, room = memory.MEBIBYTE, 600 * 600 * 4300
    assert memory.tile_for_device_budget(100 * mib + room, 100 * mib, 4300, 32, 500, 500, batch=4) == 500
    assert memory.tile_for_device_budget(100 * mib + room, 100 * mib, 4300, 32, 700, 700, batch=4) < 700


def test_a_window_of_less_than_a_mib_is_not_said_to_need_0_mib():
    """anime's smallest window takes half a MiB: the 413 said it "needs 0 MiB", which left the reader no reason."""
    with pytest.raises(TooLarge, match="the smallest tile's window needs 1 MiB$"):
        memory.tile_for_device_budget(100 * memory.MEBIBYTE, 100 * memory.MEBIBYTE, 500, 8, 500, 500)
    with pytest.raises(TooLarge, match="the smallest tile's window needs 1 MiB$"):
        memory.tile_for_budget(400 * memory.MEBIBYTE, 400 * memory.MEBIBYTE, 0, 500, 8, 500, 500)


def test_the_gpu_budget_defaults_to_a_share_of_the_card(service, monkeypatch):
    module = service.registry.choice.module
    monkeypatch.setattr(module, "memory_total", lambda device: 10 * 2 ** 30)
    assert service.device_budget() == int(10 * 2 ** 30 * GPU_MEMORY_SHARE)
    monkeypatch.setattr(service, "settings", load_settings(workers=2))
    assert service.device_budget() == int(10 * 2 ** 30 * GPU_MEMORY_SHARE) // 2  # the workers share the card
    monkeypatch.setattr(service, "settings", load_settings(gpu_memory_budget_mb=4096))
    assert service.device_budget() == 4096 * memory.MEBIBYTE


def test_the_worker_budget_defaults_by_device():
    assert load_settings(memory_budget_mb=0).memory_budget_bytes("cpu") == CPU_WORKER_MEMORY_BUDGET_MB * memory.MEBIBYTE
    assert load_settings(memory_budget_mb=0).memory_budget_bytes("cuda") == GPU_WORKER_MEMORY_BUDGET_MB * memory.MEBIBYTE
    assert load_settings(memory_budget_mb=4096).memory_budget_bytes("cuda") == 4096 * memory.MEBIBYTE
    with pytest.raises(ValidationError, match="at least 256"):
        load_settings(memory_budget_mb=100)


def test_a_request_reserves_its_buffers_and_the_windows_host_share(service, monkeypatch):
    """On the CPU a window's working set is in the worker's memory; from a GPU only its result, as float32; the
    upload is held on either."""
    data = encode(photo(40, 48))
    plan = service.prepare(data, UpscaleOptions())
    height, width = plan.passes[0].tiles[0].window_shape
    per_pixel = service.registry.cards["anime"].window_bytes_per_pixel("f32", "cpu")
    own = (memory.pass_bytes(40, 48) + memory.result_bytes(160 * 192, 3, False, False, False)
           + len(data) * memory.UPLOAD_COPIES)
    assert plan.host_bytes == own + height * width * per_pixel
    monkeypatch.setattr(service.registry, "choice", dataclasses.replace(service.registry.choice, device="cuda"))
    monkeypatch.setattr(service.registry.choice.module, "memory_total", lambda device: 10 * 2 ** 30)
    monkeypatch.setattr(type(service.registry), "device_resident", property(lambda registry: 0))
    plan = service.prepare(data, UpscaleOptions())
    assert len(plan.passes[0].tiles) == 1  # the whole image, as one window
    assert plan.host_bytes == own + 40 * 48 * (memory.HOST_WINDOW_BYTES_PER_INPUT_PIXEL + 16 * (
        memory.HOST_COPY_BYTES_PER_OUTPUT_PIXEL + memory.HOST_LUMA_BYTES_PER_OUTPUT_PIXEL))


def test_on_a_gpu_the_room_sets_aside_the_cached_pinned_blocks(service, monkeypatch):
    on_cpu = worker_room(service.settings, service.registry)
    header_read = memory.header_read_bytes(service.settings.max_upload_bytes)
    assert on_cpu == service.settings.memory_budget_bytes("cpu") - service.registry.resident - header_read
    monkeypatch.setattr(service.registry, "choice", dataclasses.replace(service.registry.choice, device="cuda"))
    slots = service.settings.inference_slots_for("cuda")
    assert worker_room(service.settings, service.registry) == (
        service.settings.memory_budget_bytes("cuda") - service.registry.resident - header_read
        - 2 * slots * memory.PINNED_COPY_MAX_BYTES)


def test_an_image_that_would_not_fit_the_worker_budget_alone_is_413(gpu_like_app, service, monkeypatch):
    monkeypatch.setattr(service, "settings", load_settings(models="anime", default_model="anime", tile_size=64,
                                                           memory_budget_mb=256))
    form = {"image": (io.BytesIO(encode(photo(40, 48))), "photo.png")}
    answer = gpu_like_app.test_client().post("/model/predict", data=form, content_type="multipart/form-data")
    assert answer.status_code == 413
    message = answer.get_json()["message"]
    assert message.startswith("a 48x40 image needs ") and "MEMORY_BUDGET_MB=256 leaves 0 MiB beside" in message


@pytest.mark.slow
def test_a_request_waits_for_room_beside_the_images_running(service, monkeypatch):
    """Two slots, room for one request's bytes: a second image waits while another holds the room."""
    plan = service.prepare(encode(photo(24, 20)), UpscaleOptions())
    slot = InferenceSlot(queue_size=1, wait_timeout_s=EVENT_TIMEOUT_S, slots=2, room=lambda: plan.host_bytes)
    monkeypatch.setattr(service, "slot", slot)
    finished = threading.Event()
    answers = []
    with slot.hold(1):
        runner = threading.Thread(target=lambda: (answers.append(service.run(plan)), finished.set()))
        runner.start()
        wait_for(lambda: slot.waiting == 1, EVENT_TIMEOUT_S, interval_s=0.005)
        assert slot.running == 1 and not finished.is_set()
    runner.join(EVENT_TIMEOUT_S)
    assert finished.is_set() and (answers[0].width, answers[0].height) == (80, 96)


@pytest.mark.slow
def test_metadata_and_metrics_carry_the_device(gpu_like_app):
    client = gpu_like_app.test_client()
    form = {"image": (io.BytesIO(encode(photo(40, 40))), "photo.png")}
    assert client.post("/model/predict", data=form, content_type="multipart/form-data").status_code == 200
    metadata = client.get("/model/metadata").get_json()
    assert metadata["device"]["inference_slots"] == 2
    assert [entry["precision"] for entry in metadata["models"]] == ["f32"]
    metrics = client.get("/metrics").get_data(as_text=True)
    busy = [line for line in metrics.splitlines() if line.startswith("superres_device_busy_seconds_total")]
    assert busy and float(busy[0].split()[-1]) > 0
    assert "superres_device_memory_bytes 0.0" in metrics


@pytest.mark.slow
def test_a_client_that_leaves_before_its_first_window_spends_no_window(service, monkeypatch):
    """A whole image is one window on a GPU, and the hang-up check ran only before the decode and after that
    window: a client that left meanwhile (while the request decoded or waited for the device) still had its
    window run. The check now comes before the first window too."""
    left = threading.Event()
    windows = []
    real_decode, real_run = images.decode_pixels, pytorch.TorchRunner._hosted

    def decode_then_leave(data, header):
        decoded = real_decode(data, header)
        left.set()  # the client hangs up while its image decodes
        return decoded

    def check(done: int, total: int) -> None:
        if left.is_set():
            raise Cancelled(f"the client closed the connection after {done} of {total} tiles")

    monkeypatch.setattr(images, "decode_pixels", decode_then_leave)
    monkeypatch.setattr(pytorch.TorchRunner, "_hosted",
                        lambda runner, batch, finish: windows.append(batch.shape) or real_run(runner, batch, finish))
    with pytest.raises(Cancelled, match="after 0 of 1 tiles"):
        service.upscale(encode(photo(24, 20)), UpscaleOptions(model="anime"), check)
    assert left.is_set() and windows == []


def test_an_ensemble_reserves_the_float_sums_it_holds_beside_a_window(service, monkeypatch):
    """The ensemble averages a window's 8 orientations as floats on the host: numpy's sums alone (torch's results
    beside them are not traced) come to more than one window's float32 result, which was all it reserved."""
    monkeypatch.setattr(service.registry, "choice", dataclasses.replace(service.registry.choice, device="cuda"))
    monkeypatch.setattr(service.registry.choice.module, "memory_total", lambda device: 10 * 2 ** 30)
    monkeypatch.setattr(type(service.registry), "device_resident", property(lambda registry: 0))
    plan = service.prepare(encode(photo(40, 48)), UpscaleOptions(ensemble=True))
    reserved = plan.host_bytes - memory.pass_bytes(40, 48) - memory.result_bytes(160 * 192, 3, False, False, False)
    network, rgb = plan.network, photo(40, 48).astype(np.float32) / 255
    predict = self_ensemble(lambda k, flip: network.predictor(turned(rgb, k, flip)))
    tracemalloc.start()
    try:
        averaged = predict(rgb[None])
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert averaged.shape == (1, 160, 192, 3) and len(plan.passes[0].tiles) == 1
    assert traced_peak >= 2 * averaged.nbytes
    assert reserved >= traced_peak + averaged.nbytes  # and the untraced result of the orientation in hand


def test_a_grey_window_reserves_its_luma_beside_the_float_result(service, monkeypatch):
    """A grey image's window comes back as float32 RGB (the backend rounds only colour to levels), and its luma is
    made beside that result before both are rounded into the output: 16 bytes per output pixel, where 12 were
    reserved."""
    on_a_gpu(service, monkeypatch, 0)
    grey = photo(40, 48)[..., 0]
    plan = service.prepare(encode(grey), UpscaleOptions())
    reserved = plan.host_bytes - memory.pass_bytes(40, 48) - memory.result_bytes(160 * 192, 1, False, False, False)
    input_bytes = 40 * 48 * memory.HOST_WINDOW_BYTES_PER_INPUT_PIXEL
    assert len(plan.passes[0].tiles) == 1  # the whole image, as one window
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32) / 255  # as the pipeline gives it the network
    result = plan.network.predictor(rgb)(rgb[None])
    tracemalloc.start()
    try:
        luma = (result @ pipeline.LUMA)[..., None]
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert luma.shape == (1, 160, 192, 1) and traced_peak <= luma.nbytes + 4096  # the luma, and numpy's few objects
    assert result.dtype == np.float32 and reserved - input_bytes >= result.nbytes + luma.nbytes


@pytest.mark.slow
def test_the_gpu_script_runs_on_the_cpu_and_records_the_machine_with_each_row(tmp_path):
    """bench.gpu refused to run without a GPU, so a GPU session was the first to run its code; and only its first
    line named the machine, which rows of several calls appended together lost."""
    out = tmp_path / "rows.jsonl"
    assert gpu.main(["--device", "cpu", "--models", "anime", "--runs", "1", "--batches", "1,2", "--window", "32",
                     "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row.get("batch") for row in rows] == [1, 2, None]
    assert all(row["window_s"] > 0 for row in rows[:2]) and rows[2]["levels_result_s_500"] > 0
    assert all(row["machine"]["gpu"] is None and row["machine"]["cpus"] == os.cpu_count() and row["machine"]["cpu"]
               for row in rows)


def on_a_gpu(service, monkeypatch, resident_mib: int) -> None:
    """The service's worker as on a GPU of 10 GiB whose loaded models hold ``resident_mib``."""
    monkeypatch.setattr(service.registry, "choice", dataclasses.replace(service.registry.choice, device="cuda"))
    monkeypatch.setattr(service.registry.choice.module, "memory_total", lambda device: 10 * 2 ** 30)
    monkeypatch.setattr(type(service.registry), "device_resident",
                        property(lambda registry: resident_mib * memory.MEBIBYTE))


def test_a_model_whose_smallest_window_has_no_room_on_the_gpu_is_named(service, monkeypatch):
    on_a_gpu(service, monkeypatch, 100)
    assert service.short_of_device_memory() == {}  # 90 % of 10 GiB
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"gpu_memory_budget_mb": 100}))
    assert service.short_of_device_memory() == {"anime": "GPU_MEMORY_BUDGET_MB=100 leaves no room for its smallest "
                                                         "window (1 MiB) beside the 100 MiB the loaded models hold "
                                                         "on the GPU"}


def test_a_padded_model_whose_smallest_window_as_run_has_no_room_on_the_gpu_is_named(service, monkeypatch):
    """The start-up check counted Real-CUGAN's smallest window (64²) without the border its runner adds (102²)."""
    on_a_gpu(service, monkeypatch, 100)
    networks = service.registry._networks["anime"]
    (key, network), = networks.items()
    monkeypatch.setitem(networks, key, dataclasses.replace(network, margin=20, border=REALCUGAN_BORDERS[4]))
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"gpu_memory_budget_mb": 103}))
    per_pixel = service.registry.cards["anime"].window_bytes_per_pixel(network.precision, "cuda")
    assert 64 * 64 * per_pixel <= 3 * memory.MEBIBYTE < 102 * 102 * per_pixel
    assert service.short_of_device_memory() == {"anime": "GPU_MEMORY_BUDGET_MB=103 leaves no room for its smallest "
                                                         "window (7 MiB) beside the 100 MiB the loaded models hold "
                                                         "on the GPU"}


class Noted(list):
    """A list that the runner's copies of a module share (``copy.deepcopy`` keeps it as it is), with the most pixels
    of a window in f32 that the GPU has memory for."""

    limit = float("inf")

    def __deepcopy__(self, memo: dict) -> Noted:
        return self


class OverflowingIn16Bits(torch.nn.Module):
    """A real network whose every 16-bit output is not finite, as fp16 overflows (Real-ESRGAN's black images), and
    whose f32 output is its own: each window runs again in f32, the (height, width) of which are noted."""

    def __init__(self, module: torch.nn.Module, f32_windows: Noted) -> None:
        super().__init__()
        self.module, self.f32_windows = module, f32_windows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        if x.dtype == torch.float32:
            self.f32_windows.append(tuple(x.shape[2:]))
            if x.shape[2] * x.shape[3] > self.f32_windows.limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return out
        return out * torch.inf


@pytest.fixture()
def overflowing(service, monkeypatch):
    """anime as on a GPU in 16 bits (bf16, on the CPU here), every window of which runs again in f32: the runner,
    the windows its f32 reruns ran, and anime's own f32 runner."""
    networks = service.registry._networks["anime"]
    (key, network), = networks.items()
    f32_windows = Noted()
    runner = pytorch.TorchRunner(OverflowingIn16Bits(network.run.module, f32_windows), "cpu", "bf16", "anime")
    monkeypatch.setitem(networks, key, dataclasses.replace(network, run=runner, precision="bf16"))
    return runner, f32_windows, network.run


def rerun_need(f32, height: int, width: int) -> int:
    """The GPU memory of anime's f32 rerun of one window of this size: the f32 copy of its weights (those of its
    ``f32`` runner), the window in f32 and its bf16 output beside it (4x, RGB)."""
    copy = sum(tensor.numel() * 4 for tensor in f32.module.state_dict().values())
    per_pixel = SPECS["anime"].cuda_window_bytes_per_pixel["f32"]
    return memory.rerun_bytes(copy, per_pixel, height * width, 1, height * width * 16 * 3 * 2)


@pytest.mark.slow
def test_an_f32_rerun_is_held_to_the_gpu_budget_and_retried_in_smaller_tiles(service, overflowing, monkeypatch):
    """A 128² photo fits the budget's 10 MiB as one bf16 window (8 MiB), and its f32 rerun, with the f32 copy of
    the weights, took 15 MiB: past the budget by plan. The service now holds each rerun to the room the budget
    leaves; the one that would pass it is refused before it runs, and the pass runs again in tiles of 64 px, each
    window's rerun within the room, the answer the f32 network's."""
    runner, f32_windows, f32 = overflowing
    on_a_gpu(service, monkeypatch, 100)
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"gpu_memory_budget_mb": 110}))
    monkeypatch.setattr(service.registry, "load_all", lambda on_loaded: None)  # loaded already: the checks after it
    service.load()
    room = 10 * memory.MEBIBYTE
    assert rerun_need(f32, 128, 128) > room >= 128 * 128 * 500  # anime's bf16 bytes a pixel
    image = photo(128, 128)
    result = np.asarray(decode(service.upscale(encode(image), UpscaleOptions(model="anime")).data))
    assert f32_windows, "no window ran again in f32"
    assert [window for window in f32_windows if rerun_need(f32, *window) > room] == []
    assert f32_windows == [(80, 80)] * 4  # tiles of 64 px and their 8-px margins
    assert runner.f32_copy_bytes == rerun_need(f32, 0, 0)  # what the runner counts is the copy's size
    whole = np.clip(np.rint(f32(image[None].astype(np.float32) / 255)[0] * 255), 0, 255).astype(np.uint8)
    assert psnr(result, whole) >= 45


@pytest.mark.slow
def test_an_f32_rerun_the_gpu_has_no_memory_for_gets_the_halving_retry(service, overflowing):
    """Within the budget, the card may still have no memory for a rerun (another process on it): torch's error in
    the rerun runs the pass again in half the tile, as in the 16-bit window, and the answer is the f32 network's."""
    runner, f32_windows, f32 = overflowing
    f32_windows.limit = 100 * 100
    image = photo(128, 128)
    result = np.asarray(decode(service.upscale(encode(image), UpscaleOptions(model="anime")).data))
    assert f32_windows == [(128, 128)] + [(80, 80)] * 4  # tiles of 64 px and their 8-px margins
    whole = np.clip(np.rint(f32(image[None].astype(np.float32) / 255)[0] * 255), 0, 255).astype(np.uint8)
    assert psnr(result, whole) >= 45


def test_a_16_bit_model_whose_smallest_f32_rerun_has_no_room_on_the_gpu_is_named(service, overflowing,
                                                                                  monkeypatch):
    """The start-up check counted a 16-bit model's smallest window, not the f32 rerun of one that overflows: a budget
    with room for the first but not the second served the model, and every image with an overflowing window would
    have been a 503. The rerun of a window of the smallest retry tile (64 px and its margins) now counts."""
    _, _, f32 = overflowing
    on_a_gpu(service, monkeypatch, 100)
    need = memory.mib_up(rerun_need(f32, 80, 80))  # 64 px and anime's 8-px margins
    assert need > memory.mib_up(memory.smallest_window_bytes(500, 8, service.settings.tile_batch))
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"gpu_memory_budget_mb": 99 + need}))
    assert service.short_of_device_memory() == {
        "anime": f"GPU_MEMORY_BUDGET_MB={99 + need} leaves no room for its smallest window's f32 rerun (its 16-bit "
                 f"output not finite) ({need} MiB) beside the 100 MiB the loaded models hold on the GPU"}
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"gpu_memory_budget_mb": 100 + need}))
    assert service.short_of_device_memory() == {}


def test_a_padded_networks_windows_reserve_their_border_in_the_worker(service):
    """On the CPU a window's working set is the network's, run on the padded window: the plan's reservation counted
    the window's own pixels."""
    border = REALCUGAN_BORDERS[4]
    network = dataclasses.replace(service.registry.get("anime"), margin=20, border=border)
    step = plan_pass(network, 200, 200, 64)
    height, width = step.window_shape
    per_pixel = service.registry.cards["anime"].window_bytes_per_pixel(network.precision, "cpu")
    batch = min(service.settings.tile_batch, len(step.tiles))
    assert service.host_bytes(network, (step,)) == (memory.pass_bytes(200, 200)
                                                    + border.padded(height) * border.padded(width) * per_pixel * batch)


@pytest.mark.slow
def test_models_that_leave_the_gpu_budget_no_room_fail_at_start_not_on_every_image(monkeypatch):
    """Models holding more of the GPU than GPU_MEMORY_BUDGET_MB leaves for a window were ready, and every image was
    a 413 that blamed its size: now the start-up says so, /ready with it, and the model refuses with the reason."""
    settings = load_settings(models="anime", default_model="anime", backend="pytorch", device="cpu",
                             gpu_memory_budget_mb=100)
    registry = ModelRegistry(settings, backends.choose(settings))
    service = Service(settings, registry, InferenceSlot(0, 1))
    real_load = registry.load_all

    def load_then_find_a_gpu(on_loaded):
        real_load(on_loaded)  # loaded on the CPU; the budget is then checked as on a GPU
        on_a_gpu(service, monkeypatch, 100)

    monkeypatch.setattr(registry, "load_all", load_then_find_a_gpu)
    heard = []
    service.load(lambda name, seconds: heard.append(name))
    assert not registry.ready and heard == []
    assert registry.states()["anime"].startswith("failed: GPU_MEMORY_BUDGET_MB=100 leaves no room")
    with pytest.raises(NotReady, match="GPU_MEMORY_BUDGET_MB=100 leaves no room"):
        service.prepare(encode(photo(24, 20)), UpscaleOptions(model="anime"))


@pytest.mark.slow
def test_batches_of_windows_answer_as_one_window_at_a_time(service, monkeypatch):
    """TILE_BATCH=3 over tiles that leave a partial last batch, with windows shifted inwards at the image's edges
    and the levels rounded by the runner: the same pixels as one window at a time."""
    data = encode(photo(72, 40))  # 8 tiles of 16 px: batches of 3, 3 and 2
    answers, batches = {}, []
    real_levels = pytorch.TorchRunner.levels
    monkeypatch.setattr(pytorch.TorchRunner, "levels",
                        lambda runner, batch, max_value: batches.append(len(batch)) or
                        real_levels(runner, batch, max_value))
    for size in (1, 3):
        monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"tile_size": 16,
                                                                                     "tile_batch": size}))
        plan = service.prepare(data, UpscaleOptions(model="anime"))
        answers[size] = np.asarray(decode(service.run(plan).data))
    tiles = plan.tile_count
    assert tiles % 3 and batches == [1] * tiles + [3] * (tiles // 3) + [tiles % 3]
    np.testing.assert_array_equal(answers[3], answers[1])


def test_the_gpu_script_times_real_cugan_alone_through_its_runner():
    """--http's 'network alone' ran the module on a bare tensor, which Real-CUGAN refuses (it takes its image's
    averages too): a --http run of every model stopped there."""
    network = gpu._auto_network("realcugan", gpu.CPU)
    assert network.measure is not None and gpu.network_alone_seconds(network, 32, 1) > 0


def test_on_the_cpu_an_ensemble_tile_leaves_room_for_its_sums(service, monkeypatch):
    """The CPU sizes its tile to fill the budget: the ensemble's float sums must be part of a window's cost
    there, or the plan that counts them does not fit the budget it was sized by (a 413 for a 200² image with
    24 MiB beside the models and the header being read, which smaller tiles serve)."""
    budget_mb = (service.registry.resident + memory.header_read_bytes(service.settings.max_upload_bytes)
                 ) // memory.MEBIBYTE + 24
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"memory_budget_mb": budget_mb}))
    plan = service.prepare(encode(photo(200, 200)), UpscaleOptions(ensemble=True))
    assert plan.host_bytes <= worker_room(service.settings, service.registry)
    network = service.registry.get("anime")
    assert service.tile_size(network, 200, 200, 0, ensemble=True) < service.tile_size(network, 200, 200, 0)
