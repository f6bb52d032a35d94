"""A GPU's out-of-memory error on a call of the network: fewer windows a call, then the pass planned again in
smaller tiles (injected here on the CPU)."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from core import cost, shutdown
from core.admission import InferenceSlot
from core.errors import Busy, OutOfDeviceMemory
from core.models.speed import Throughput
from core.options import UpscaleOptions
from tests.core.test_images import pattern, save


class Device:
    """A device with room for calls of at most ``limit`` window pixels (the windows of a call together)."""

    def __init__(self, run) -> None:
        self.run, self.limit, self.calls, self.refused = run, 0, [], 0

    def __call__(self, batch):
        self.calls.append(batch.shape[:3])
        if batch.shape[0] * batch.shape[1] * batch.shape[2] > self.limit:
            self.refused += 1
            raise OutOfDeviceMemory(f"no memory for {batch.shape[0]} windows of {batch.shape[2]}x{batch.shape[1]}")
        return self.run(batch)


@pytest.fixture()
def device(service, monkeypatch):
    """srgan on a ``Device``; ``configure(**settings)`` sets TILE_SIZE and TILE_BATCH."""
    srgan = service.registry.get("srgan")
    short = Device(srgan.run)
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: replace(srgan, run=short))

    def configure(**settings) -> Device:
        monkeypatch.setattr(service, "settings", service.settings.model_copy(update=settings))
        return short
    return configure


def test_each_retry_runs_smaller_windows_than_the_try_before(service, device):
    """Tiles of 1024 px cut a 120 x 100 image into one window; so do 512, 256 and 128: a retry at those runs
    the very window that had no room. Each retry must run smaller windows."""
    short = device(tile_size=1024)
    short.limit = 80 * 80
    result = service.upscale(save(Image.fromarray(pattern(100, 120))), UpscaleOptions(model="srgan"))
    failed = [shape for shape in short.calls if shape[1] * shape[2] > 80 * 80]
    assert failed == [(1, 100, 120)], f"windows tried without room: {failed}"
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (480, 400) and np.asarray(image).std() > 0


def test_a_call_without_room_runs_fewer_windows_a_call_before_it_makes_the_tiles_smaller(service, device):
    """TILE_BATCH=4 with room for two windows a call: the tile was halved (to 64 px, six times the calls with
    their margins) where half the windows a call fit; now the tiles stay, two a call, the answer the same as one
    window a call without an error."""
    data = save(Image.fromarray(pattern(100, 120)))
    short = device(tile_size=32, tile_batch=1)
    short.limit = 10 ** 9
    one_a_call = service.upscale(data, UpscaleOptions(model="srgan"))
    short = device(tile_size=32, tile_batch=4)
    short.limit, short.calls = 2 * 64 * 64, []
    reported = []
    result = service.upscale(data, UpscaleOptions(model="srgan"), lambda done, total: reported.append((done, total)))
    assert short.calls == [(4, 64, 64)] + [(2, 64, 64)] * 4 + [(1, 64, 64)]  # 9 tiles: 4 failed, then 2, 2, 2, 2, 1
    assert reported[-1] == (9, 9) and all(total == 9 for _, total in reported[1:])
    assert [done for done, _ in reported] == sorted(done for done, _ in reported)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(result.data))),
                                  np.asarray(Image.open(io.BytesIO(one_a_call.data))))


def test_after_a_retry_with_fewer_windows_the_shutdown_check_weighs_the_calls_run(service, device, monkeypatch):
    """A shutdown that leaves time for a call of two windows, but not for one of the four that had no memory, lets
    the request finish: the check weighs the calls the pass runs now."""
    short = device(tile_size=32, tile_batch=4)
    short.limit = 2 * 64 * 64
    throughput = Throughput(per_call_s=0.0, per_pixel_s=1.0)  # a second a pixel, on the injected clock
    plan = service.prepare(save(Image.fromarray(pattern(100, 120))), UpscaleOptions(model="srgan"))
    plan = replace(plan, network=replace(plan.network, throughput=throughput),
                   seconds=cost.estimate_seconds(throughput, plan.passes, False, 4))
    planned, retried = 4 * 64 * 64, 2 * 64 * 64
    spare = (planned - retried) / 4
    # The call that had no memory took 2 x spare: then a call of four windows would end past the grace period, one
    # of two within it.
    monkeypatch.setattr(shutdown, "_clock", lambda: 2 * spare * short.refused)
    monkeypatch.setattr(shutdown, "_stop_at", planned + spare)
    result = service.run(plan)
    assert short.refused == 1 and short.calls[:2] == [(4, 64, 64), (2, 64, 64)]
    assert (result.width, result.height) == (480, 400)


def test_the_tile_is_halved_once_one_window_a_call_has_no_room(service, device):
    short = device(tile_size=128, tile_batch=4)
    short.limit = 96 * 96
    result = service.upscale(save(Image.fromarray(pattern(200, 240))), UpscaleOptions(model="srgan"))
    assert short.calls == [(4, 128, 144), (2, 128, 144), (1, 128, 144)] + [(1, 96, 96)] * 12  # tiles of 64 px
    assert (result.width, result.height) == (960, 800)


def test_below_the_smallest_retry_tile_one_window_a_call_the_answer_is_out_of_device_memory(service, device):
    short = device(tile_size=64, tile_batch=4)
    short.limit = 1
    with pytest.raises(OutOfDeviceMemory, match="even with tiles of 64 px, one window a call; retry later"):
        service.upscale(save(Image.fromarray(pattern(100, 120))), UpscaleOptions(model="srgan"))
    assert [windows for windows, _, _ in short.calls] == [4, 2, 1]


def test_a_busy_workers_retry_after_follows_the_calls_left_after_a_retry(service, device, monkeypatch):
    """The slot expected the request's end where its plan put it (one call of four windows) after the pass was
    planned again in twelve smaller tiles, one a call: a request refused meanwhile was told to come back before it
    could have a place. Now the expected end follows the calls left, on the slot's clock."""
    short = device(tile_size=128, tile_batch=4)
    short.limit = 96 * 96
    throughput = Throughput(per_call_s=1.0, per_pixel_s=0.0)  # a second a call
    plan = service.prepare(save(Image.fromarray(pattern(200, 240))), UpscaleOptions(model="srgan"))
    plan = replace(plan, network=replace(plan.network, throughput=throughput),
                   seconds=cost.estimate_seconds(throughput, plan.passes, False, 4))
    monkeypatch.setattr(service, "slot", InferenceSlot(queue_size=0, wait_timeout_s=1, clock=lambda: 0.0))
    told = []

    def retry_after(done: int, total: int) -> None:
        with pytest.raises(Busy) as busy:
            service.slot.check_room()
        told.append((done, total, busy.value.retry_after_s))

    service.run(plan, retry_after)
    assert plan.seconds == 1 and short.calls[:3] == [(4, 128, 144), (2, 128, 144), (1, 128, 144)]
    # The tries before each call: four windows, two, one; then the pass again in 12 tiles, one a call.
    assert told[:5] == [(0, 0, 1.0), (0, 4, 1.0), (0, 4, 2.0), (0, 4, 4.0), (0, 12, 12.0)]
    assert told[5:] == [(done, 12, 12.0 - done) for done in range(1, 13)]
