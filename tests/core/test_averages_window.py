"""The windows a whole image's averages (Real-CUGAN's) are measured in: sized from the GPU budget as the tiles are,
counted in the time estimates at the side actually run (proven on the CPU with a fake device), and on the CPU
counted in the memory a request reserves."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from core import cost, memory
from core.admission import InferenceSlot
from core.errors import Busy, OverMemoryBudget, Reason
from core.models.specs import SPECS
from core.models.speed import Throughput
from core.models.weights import REALCUGAN_BORDERS
from core.options import UpscaleOptions
from tests.core.test_ensemble import AveragesOutOfMemoryAbove, _left_to_right, _nearest
from tests.core.test_gpu_serving import on_a_gpu
from tests.core.test_images import pattern, save

BORDER = REALCUGAN_BORDERS[4]  # a 256-px window runs at 294 px
RESIDENT_MIB = 100
SIDE = 300  # 2 x 2 windows of the averages at 256 px


def padded_network(service, measure):
    """A 4x network that crops the border its runner adds, as Real-CUGAN's graphs do, with whole-image
    averages taken by ``measure``: nearest-neighbour, brightened by the image's left-to-right step."""
    def run(inputs):
        batch, step = inputs
        return _nearest(batch[:, BORDER.pad:, BORDER.pad:]) * 0.5 + 0.25 + 4 * step
    return replace(service.registry.get("srgan"), run=run, measure=measure, border=BORDER)


def served(service, monkeypatch, network, **settings):
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: network)
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update=settings))
    plan = service.prepare(save(Image.fromarray(pattern(SIDE, SIDE))), UpscaleOptions(model="srgan"))
    with Image.open(io.BytesIO(service.run(plan).data)) as image:
        return plan, np.asarray(image)


def test_a_gpu_budget_that_holds_the_tiles_but_not_256_px_averages_windows_plans_smaller_ones(service, monkeypatch,
                                                                                            caplog):
    """The averages' 256-px windows (294 px as run) were not counted in GPU_MEMORY_BUDGET_MB: under a budget that held
    the tiles they ran out of memory and were retried in halves. Now they are planned at the side the budget holds,
    as the tiles are, and the fake device, which holds what the budget says, refuses none."""
    on_a_gpu(service, monkeypatch, RESIDENT_MIB)
    per_pixel = service.registry.cards["srgan"].window_bytes_per_pixel(service.registry.get("srgan").precision,
                                                                        "cuda")
    budget_mb = RESIDENT_MIB + memory.mib_up(200 * 200 * per_pixel)  # room for a window run at 200 px
    device_pixels = (budget_mb - RESIDENT_MIB) * memory.MEBIBYTE // per_pixel
    assert BORDER.padded(memory.STATISTICS_WINDOW) ** 2 > device_pixels
    short = AveragesOutOfMemoryAbove(_left_to_right, device_pixels)
    with caplog.at_level("WARNING", logger="core.pipeline"):
        plan, pixels = served(service, monkeypatch, padded_network(service, short), gpu_memory_budget_mb=budget_mb,
                              tile_batch=1)
    assert plan.passes[0].averages_window == 160  # runs at 198 px
    assert "again" not in caplog.text
    assert short.windows[0] == (198, 198) and all(h * w <= device_pixels for h, w in short.windows)
    assert pixels.shape == (4 * SIDE, 4 * SIDE, 3)


def test_the_default_gpu_budget_measures_the_averages_in_256_px_windows_as_before(service, monkeypatch):
    """A budget with room (90 % of a 10 GiB card) keeps the 256-px windows, so the same pixels as the CPU's."""
    _, on_the_cpu = served(service, monkeypatch, padded_network(service, _left_to_right))
    on_a_gpu(service, monkeypatch, RESIDENT_MIB)
    roomy = AveragesOutOfMemoryAbove(_left_to_right, 10 ** 9)
    plan, on_the_gpu = served(service, monkeypatch, padded_network(service, roomy))
    assert plan.passes[0].averages_window == memory.STATISTICS_WINDOW
    assert roomy.windows == [(294, 294), (294, 82), (82, 294), (82, 82)]  # 256 and 44 px, each with the border
    np.testing.assert_array_equal(on_the_gpu, on_the_cpu)


def test_averages_windows_sized_by_the_budget_stay_between_the_retry_floor_and_256_px():
    per_pixel = 5100  # Real-CUGAN's fp16 figure
    assert memory.averages_window(10 * 2 ** 30, per_pixel, BORDER) == memory.STATISTICS_WINDOW
    assert memory.averages_window(BORDER.padded(160) ** 2 * per_pixel, per_pixel, BORDER) == 160
    assert memory.averages_window(0, per_pixel, BORDER) == memory.MIN_RETRY_TILE


def test_after_an_averages_retry_the_expected_end_counts_the_windows_run(service, monkeypatch):
    """After the averages' 256-px windows had no memory they run in 128-px ones, 9 calls for this image instead of
    4: the estimate of the work left (the busy worker's Retry-After, the shutdown check) counted 256-px windows."""
    network = padded_network(service, AveragesOutOfMemoryAbove(_left_to_right, 170 * 170))
    throughput = Throughput(0.0, 0.0, statistics=Throughput(per_call_s=1.0, per_pixel_s=0.0))  # a second a window
    network = replace(network, throughput=throughput)
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: network)
    plan = service.prepare(save(Image.fromarray(pattern(SIDE, SIDE))), UpscaleOptions(model="srgan"))
    monkeypatch.setattr(service, "slot", InferenceSlot(queue_size=0, wait_timeout_s=1, clock=lambda: 0.0))
    told = []

    def retry_after(done: int, total: int) -> None:
        with pytest.raises(Busy) as busy:
            service.slot.check_room()
        told.append(busy.value.retry_after_s)

    service.run(plan, retry_after)
    assert plan.seconds == cost.estimate_seconds(throughput, plan.passes, False, 1) == 4
    assert told[:3] == [4.0, 4.0, 9.0] and told[-1] == 0.0


def test_a_model_whose_smallest_averages_window_has_no_room_on_the_gpu_is_named(service, monkeypatch):
    """The start-up check counted the smallest tile's window alone (86 px as run, for a margin of 16): a budget
    below the smallest averages window (64 px, 102 as run) left the model ready to fail every image with a 503."""
    on_a_gpu(service, monkeypatch, RESIDENT_MIB)
    network = padded_network(service, _left_to_right)
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: network)
    per_pixel = service.registry.cards["srgan"].window_bytes_per_pixel(network.precision, "cuda")
    tile_window = memory.smallest_window_bytes(per_pixel, network.margin, 1, BORDER)
    budget_mb = RESIDENT_MIB + memory.mib_up(tile_window)
    assert tile_window < budget_mb * memory.MEBIBYTE - RESIDENT_MIB * memory.MEBIBYTE < 102 * 102 * per_pixel
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"gpu_memory_budget_mb": budget_mb,
                                                                                 "tile_batch": 1}))
    assert service.short_of_device_memory()["srgan"] == (
        f"GPU_MEMORY_BUDGET_MB={budget_mb} leaves no room for its smallest window "
        f"({memory.mib_up(102 * 102 * per_pixel)} MiB) beside the {RESIDENT_MIB} MiB the loaded models hold on the GPU")


def planned_on_the_cpu(service, monkeypatch, **settings):
    """The plan of the SIDE² pattern on the CPU with the padded network, and the network's averages' bytes per pixel
    (a card without a figure of its own for them: its windows')."""
    network = padded_network(service, _left_to_right)
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: network)
    # srgan's speed prices the fake network's 16-px tiles past the default time limit
    monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"request_time_limit_s": 3600.0,
                                                                                 **settings}))
    per_pixel = service.registry.cards["srgan"].averages_bytes_per_pixel(network.precision, "cpu", network.scale)
    return service.prepare(save(Image.fromarray(pattern(SIDE, SIDE))), UpscaleOptions(model="srgan")), per_pixel


def test_a_cpu_pass_reserves_the_larger_of_its_tiles_windows_and_its_averages_window(service, monkeypatch):
    """On the CPU the averages are measured in 256-px windows (294 px as run) whatever the tile, before the tiles:
    with 16-px tiles (a 48-px window, 86 px as run) the reservation counted the tiles' windows alone, a twelfth of
    what the averages hold. They do not run at once, so a pass counts the larger of the two, not both."""
    small, per_pixel = planned_on_the_cpu(service, monkeypatch, tile_size=16)
    averages = BORDER.padded(memory.STATISTICS_WINDOW) ** 2 * per_pixel
    assert service.host_bytes(small.network, small.passes) == memory.pass_bytes(SIDE, SIDE) + averages
    whole, _ = planned_on_the_cpu(service, monkeypatch, tile_size=SIDE)  # one window of 300 px, 338 as run
    assert service.host_bytes(whole.network, whole.passes) == memory.pass_bytes(SIDE, SIDE) + 338 ** 2 * per_pixel


def test_a_cpu_pass_reserves_the_averages_figure_of_its_own_native_scale(service, monkeypatch):
    """Real-CUGAN's averages take a different share of memory at each native scale, each scale's network its own
    graph (`python -m bench.memory averages`, f32 as run at 256 px: 2x 3,400, 3x 6,937, 4x 4,485 B/px): its one figure,
    its 3x networks', reserved twice a 4x request's averages window. A 4x network now reserves the 4x figure."""
    figures = SPECS["realcugan"].averages_bytes_per_pixel
    card = replace(service.registry.cards["srgan"], averages_bytes=figures)
    monkeypatch.setitem(service.registry.cards, "srgan", card)
    small, per_pixel = planned_on_the_cpu(service, monkeypatch, tile_size=16)
    assert small.network.scale == 4 and per_pixel == figures[4][small.network.precision] < figures[3]["f32"]
    averages = BORDER.padded(memory.STATISTICS_WINDOW) ** 2 * per_pixel
    assert service.host_bytes(small.network, small.passes) == memory.pass_bytes(SIDE, SIDE) + averages


def test_every_native_scale_of_a_model_with_averages_has_their_figure_in_every_precision():
    for spec in SPECS.values():
        if spec.averages_bytes_per_pixel is not None:
            assert set(spec.averages_bytes_per_pixel) == set(spec.scales)
            assert all(set(figures) == {"f32", "bf16"} for figures in spec.averages_bytes_per_pixel.values())


def test_a_cpu_budget_that_holds_the_tiles_but_not_the_averages_window_is_a_413_naming_it(service, monkeypatch):
    """A budget 1 MiB short of the averages' 294-px window still held tiles of more than 128 px: the request ran past
    it.
    The averages' window stays 256 px on the CPU (a smaller one would change the output), so it is a 413."""
    roomy, per_pixel = planned_on_the_cpu(service, monkeypatch)
    request = roomy.host_bytes - service.host_bytes(roomy.network, roomy.passes) + memory.pass_bytes(SIDE, SIDE)
    averages = BORDER.padded(memory.STATISTICS_WINDOW) ** 2 * per_pixel
    header_read = memory.header_read_bytes(service.settings.max_upload_bytes)
    budget_mb = (service.registry.resident + header_read + request + averages) // memory.MEBIBYTE - 1
    per_window_pixel = service.registry.cards["srgan"].window_bytes_per_pixel(roomy.network.precision, "cpu")
    assert memory.tile_for_budget(budget_mb * memory.MEBIBYTE, service.registry.resident, request, per_window_pixel,
                                  roomy.network.margin, SIDE, SIDE, border=BORDER, header_read=header_read) > 128
    with pytest.raises(OverMemoryBudget) as refused:
        planned_on_the_cpu(service, monkeypatch, memory_budget_mb=budget_mb)
    assert refused.value.status == 413 and refused.value.reason is Reason.MEMORY_BUDGET
    assert f"MEMORY_BUDGET_MB={budget_mb}" in refused.value.message
    assert f"the windows its whole-image averages are measured in need {memory.mib_up(averages)} MiB" in (
        refused.value.message)
    assert planned_on_the_cpu(service, monkeypatch, memory_budget_mb=budget_mb + 2)[0].host_bytes <= (
        (budget_mb + 2) * memory.MEBIBYTE - service.registry.resident - header_read)


class Recorded:
    """A backend's function that records its calls and the return of its buffers in ``events``."""

    def __init__(self, name: str, function, events: list[str]) -> None:
        self.name, self.function, self.events = name, function, events

    def __call__(self, inputs):
        self.events.append(self.name)
        return self.function(inputs)

    def release_memory(self) -> None:
        self.events.append(f"{self.name} released")


def test_a_later_passs_averages_run_after_the_earlier_tiles_buffers_are_given_back(service):
    """A second pass measured its averages while OpenVINO still held the first pass's tiles' buffers (kept until
    told): the reservation counts the larger of the two windows, so each is given back before the other runs."""
    events: list[str] = []
    network = padded_network(service, Recorded("averages", _left_to_right, events))
    network = replace(network, run=Recorded("tiles", network.run, events))
    image = np.zeros((64, 64, 3), np.float32)
    network.predictor(image)(image[None])  # the first pass
    del events[:]
    network.predictor(image)  # the second pass's averages
    assert events == ["tiles released", "averages", "averages released"]
