"""One plan per request: the header is read once and each pass's tiles are planned once, whichever route asks,
and every check that needs no pixels answers before any decoding."""
from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import core.plan
from config import MEBIBYTE
from core import images, memory, pipeline, tiling
from core.errors import Busy, TooLarge
from core.models.weights import REALCUGAN_BORDERS
from core.models.speed import Throughput
from core.options import UpscaleOptions
from core.geometry import Reach, plan_output
from core.plan import check_sizes, network_reach, plan_pass
from tests.core.test_averages_window import Recorded
from tests.core.test_images import pattern, save

# 33 x 7 at scale 5: two passes of the 4x network (the second on the first's result resized to 42 x 9).
TWO_PASSES = {"scale": "5"}


@pytest.fixture()
def counts(monkeypatch) -> Counter:
    """Calls of the header reader, the tile planner (where the plan calls it, and anywhere else) and the
    pixel decoder."""
    counted: Counter = Counter()
    for module, name in ((images, "read_header"), (core.plan, "plan_tiles"), (tiling, "plan_tiles"),
                         (images, "decode_pixels")):
        real = getattr(module, name)

        def wrapper(*args, real=real, key=f"{module.__name__}.{name}", **kwargs):
            counted[key] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)
    return counted


def upload(route: str, client, **fields):
    data = save(Image.fromarray(pattern(7, 33)))
    return client.post(route, data=dict(fields, image=(io.BytesIO(data), "upload.png")),
                       content_type="multipart/form-data")


@pytest.mark.parametrize("route", ["/model/predict", "/app/upscale"])
def test_a_request_reads_its_header_once_and_plans_each_pass_once(client, counts, route):
    response = upload(route, client, **TWO_PASSES)
    assert response.status_code == 200
    if route == "/app/upscale":
        events = [json.loads(line) for line in response.data.splitlines()]
        totals = {event["total"] for event in events if event["event"] in ("start", "progress")}
        assert events[-1]["event"] == "result" and len(totals) == 1
    assert counts == {"core.images.read_header": 1, "core.plan.plan_tiles": 2, "core.images.decode_pixels": 1}


def test_the_time_estimate_counts_the_aligned_tiles_that_run(service):
    """Real-CUGAN's windows start at multiples of its alignment: the estimate reads the tiles that run."""
    network = replace(service.registry.get("srgan"), border=REALCUGAN_BORDERS[3], throughput=Throughput(1.0, 0.0))
    step = plan_pass(network, 130, 90, 32)
    assert step.tiles == tuple(tiling.plan_tiles(90, 130, 32, network.margin, align=4))
    assert step.tiles != tuple(tiling.plan_tiles(90, 130, 32, network.margin))
    assert service.estimate_seconds(network, (step,), ensemble=False) == len(step.tiles)  # one second a window


def test_limits_known_from_the_header_answer_before_any_decoding(service, counts, monkeypatch):
    settings = service.settings.model_copy(update={"max_output_pixels": 1000})
    monkeypatch.setattr(service, "settings", settings)
    with pytest.raises(TooLarge, match="MAX_OUTPUT_PIXELS"):
        service.prepare(save(Image.fromarray(pattern(7, 33))), UpscaleOptions(model="srgan"))
    assert counts["core.images.decode_pixels"] == 0


def test_a_full_queue_is_a_503_before_any_work(service, counts, monkeypatch):
    monkeypatch.setattr(service.slot, "_queue_size", 0)
    with service.slot.hold():
        with pytest.raises(Busy, match="queue size 0"):
            service.prepare(save(Image.fromarray(pattern(7, 33))), UpscaleOptions(model="srgan"))
    assert counts["core.images.decode_pixels"] == 0


def test_a_larger_memory_budget_never_refuses_an_image_a_smaller_one_takes(service, monkeypatch):
    """Real-CUGAN's windows start at multiples of its alignment; sized from the budget, they must still fit the
    window the budget left room for, or a budget's worth more memory answers 413 where less took the image."""
    bordered = replace(service.registry.get("srgan"), border=REALCUGAN_BORDERS[3])
    monkeypatch.setattr(service.registry, "get", lambda *args, **kwargs: bordered)
    data = save(Image.fromarray(pattern(601, 601)))
    resident_mb = service.registry.resident // MEBIBYTE
    taken = []
    for budget_mb in range(resident_mb + 100, resident_mb + 1200, 10):  # memory-bound tiles, 176 to 344 px
        monkeypatch.setattr(service, "settings", service.settings.model_copy(update={"memory_budget_mb": budget_mb}))
        try:
            service.prepare(data, UpscaleOptions(model="srgan", scale=2))
            taken.append(budget_mb)
        except TooLarge as error:
            assert not taken, f"{budget_mb} MiB refused the image {taken[0]} MiB took: {error}"
    assert taken


def test_cover_is_held_to_the_output_limit_by_what_it_makes_not_by_the_whole_enlargement():
    """cover of 2000 x 1000 into 8000 x 8000 enlarges it to 16000 x 8000 = 128 MP and keeps the centre: cut first,
    the two passes make 4208 x 4000 and 8128 x 8000 (the box and the margins), the limit that holds the larger is
    enough; below it, that result is refused, named as the result of the part the box needs, not as the output."""
    output = plan_output(2000, 1000, UpscaleOptions(width=8000, height=8000, fit="cover"), 4, Reach(16))
    assert output.scaled == (16000, 8000) and output.pass_outputs == ((4208, 4000), (8128, 8000))
    check_sizes(output, 8128 * 8000)
    with pytest.raises(TooLarge) as raised:
        check_sizes(output, 8128 * 8000 - 1)
    message = raised.value.message
    assert message.startswith("the model's 4x result of the 2032x2000 part of its input that the 8000x8000 box needs "
                              "would be 8128x8000 = 65024000 pixels; the limit is 65023999 output pixels")
    check_sizes(output, 64_000_000, runs_network=False)  # strength 0: the 8000 x 8000 output alone


@settings(max_examples=500, deadline=None)
@given(width=st.integers(1, 300), height=st.integers(1, 300), hundredths=st.integers(100, 800),
       native=st.sampled_from([2, 3, 4]), limit=st.integers(1, 3_000_000), runs_network=st.booleans())
def test_sizes_past_max_output_pixels_are_a_413_naming_the_limit_and_the_rest_pass(width, height, hundredths, native,
                                                                                  limit, runs_network):
    output = plan_output(width, height, UpscaleOptions(scale=hundredths / 100), native)
    made = [output.output, *(output.pass_outputs if runs_network else ())]
    if all(made_width * made_height <= limit for made_width, made_height in made):
        check_sizes(output, limit, runs_network)
        return
    with pytest.raises(TooLarge) as raised:
        check_sizes(output, limit, runs_network)
    assert f"the limit is {limit} output pixels (MAX_OUTPUT_PIXELS; input {width}x{height})" in raised.value.message


def test_a_network_whose_averages_are_the_whole_images_runs_on_the_whole(service):
    """Real-CUGAN's squeeze-excitation averages the whole image: a cut would change them, and so every pixel."""
    network = service.registry.get("srgan")
    assert network_reach(network) == Reach(network.margin, network.alignment)
    assert network_reach(replace(network, measure=lambda batch: batch)) is None


def test_a_cut_plan_reserves_the_decoded_image_whole_beside_its_parts_buffers(service):
    """cover runs the first pass on 52 x 20 of a 200 x 20 strip, but the decoded strip stays in memory whole."""
    strip = save(Image.fromarray(pattern(20, 200)))
    plan = service.prepare(strip, UpscaleOptions(model="srgan", width=80, height=80, fit="cover"))
    assert plan.output.pass_inputs == ((52, 20),)
    result = service.result_bytes(plan.header, plan.output, plan.options, False)
    decoded = 200 * 20 * plan.header.pixel_bytes
    sent = memory.sent_bytes(len(strip), 0, 0, "png", False, "PNG", 0)
    assert plan.host_bytes == result + sent + decoded + service.host_bytes(plan.network, plan.passes)
    whole = service.prepare(strip, UpscaleOptions(model="srgan", height=80))
    assert whole.host_bytes == (service.result_bytes(whole.header, whole.output, whole.options, False) + sent
                                + service.host_bytes(whole.network, whole.passes))


def test_each_pass_gives_its_windows_buffers_back_before_the_next_pass_runs(service):
    """OpenVINO keeps the buffers of the largest window it ran until told: a second pass, on a larger input whose
    tiles may be smaller, ran beside the first pass's buffers, where the plan reserves its largest pass alone."""
    events: list[str] = []
    plan = service.prepare(save(Image.fromarray(pattern(7, 33))), UpscaleOptions(model="srgan", scale=5.0))
    recorded = replace(plan.network, run=Recorded("window", plan.network.run, events))
    first, second = plan.passes
    pipeline.run(replace(plan, network=recorded), service.settings)
    assert events == (["window"] * len(first.tiles) + ["window released"]
                      + ["window"] * len(second.tiles) + ["window released"])

