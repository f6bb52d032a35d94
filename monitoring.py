"""Prometheus metrics of one worker, added up across gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set.

gunicorn.conf.py sets that directory before any worker imports this module: prometheus-client decides
at import time whether values live in this process or in files every worker shares.
"""
from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The *_created series double the output and the multiprocess mode has none: the same text either way.
disable_created_metrics()

# From a health probe (milliseconds) up: below 10 s these, then doubling from 10 s (latency_buckets).
SHORT_LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUESTS = Counter("superres_http_requests", "HTTP requests answered, by route, model and status.",
                   ("route", "method", "model", "status"))
# Beside REQUESTS, so that its series and the queries on them stay as they were: the reason is known for refusals only.
REFUSALS = Counter("superres_refusals", "Requests refused with 413 or 503 (by nginx, also 408 and 504), by route, status "
                   "and reason (fixed sets: core/errors.Reason, and serve.py's for nginx's own).", ("route", "status", "reason"))
LATENCY_NAME = "superres_http_request_duration_seconds"
LATENCY_HELP = "Time to answer an HTTP request, by route and model."
# Its buckets follow the settings, so that configure makes it: (its buckets, the histogram).
_latency: tuple[tuple[float, ...], Histogram] | None = None
IN_FLIGHT = Gauge("superres_http_requests_in_flight", "HTTP requests being answered now, by route.",
                  ("route",), multiprocess_mode="livesum")
INFERENCE_RUNNING = Gauge("superres_inference_running", "Images being upscaled now (at most INFERENCE_SLOTS per worker).",
                          multiprocess_mode="livesum")
INFERENCE_QUEUED = Gauge("superres_inference_queued", "Requests waiting for a worker's inference slot.",
                         multiprocess_mode="livesum")
PIXEL_SIDES = ("input", "output")
PIXELS = Counter("superres_pixels", "Pixels of successfully upscaled images, by model and side (input or output).",
                 ("model", "side"))
MODEL_LOAD = Gauge("superres_model_load_seconds", "Seconds to build, load and warm up each model (slowest live worker).",
                   ("model",), multiprocess_mode="livemax")
MODEL_READY = Gauge("superres_model_ready_workers", "Live workers that have loaded and warmed up each model.",
                    ("model",), multiprocess_mode="livesum")

DEVICE_MEMORY = Gauge("superres_device_memory_bytes", "GPU memory the networks of each worker hold now (0 on the CPU, "
                      "where the process's own memory counts).", multiprocess_mode="livesum")
DEVICE_BUSY = Counter("superres_device_busy_seconds", "Seconds the device ran networks: a GPU's busy time "
                      "(its rate over a window of time is the GPU's utilisation by the service).")
DEVICE_OUT_OF_MEMORY = Counter("superres_device_out_of_memory", "Calls of the network the GPU had no memory for, or "
                               "whose f32 rerun the GPU memory budget had no room for: each ran again with fewer "
                               "windows a call or smaller tiles, or ended its request with a 503.")
# The worker's totals (Service.device_usage) as of the last /metrics: each counter grows by what was added since.
_seen = {"busy_seconds": 0.0, "out_of_memory": 0.0}
_seen_lock = threading.Lock()


def render() -> bytes:
    """The exposition text: this process's registry, or the sum over all workers' files under gunicorn."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def latency_buckets(longest_answer_s: float) -> tuple[float, ...]:
    """The histogram's bounds: SHORT_LATENCY_BUCKETS, then 10 s doubling while below ``longest_answer_s``, then
    ``longest_answer_s`` itself (Settings.longest_answer_s: the queue's wait, the time limit and the margin), so
    that every answer the settings allow falls in a finite bucket and +Inf holds only those past every limit."""
    doubling = itertools.takewhile(lambda bound: bound < longest_answer_s, (10 * 2 ** k for k in itertools.count()))
    return (*(bound for bound in SHORT_LATENCY_BUCKETS if bound < longest_answer_s), *doubling, longest_answer_s)


def configure(longest_answer_s: float, refusals: Iterable[tuple[str, int, str]], models: Iterable[str]) -> None:
    """Make the latency histogram for ``longest_answer_s``, and give every series known in advance its 0: each
    (route, status, reason) a refusal can take, each model's pixels and ready workers, so that ``rate()``,
    ``increase()`` and alerts on them see the first refusal, and a model that never loads, rather than no series."""
    global _latency
    buckets = latency_buckets(longest_answer_s)
    if _latency is None or _latency[0] != buckets:
        if _latency is not None:  # another app in this process (tests) with other limits: its bounds now
            REGISTRY.unregister(_latency[1])
        _latency = (buckets, Histogram(LATENCY_NAME, LATENCY_HELP, ("route", "model"), buckets=buckets))
    for route, status, reason in refusals:
        REFUSALS.labels(route, str(status), reason)
    for model in models:
        MODEL_READY.labels(model).set(0)
        for side in PIXEL_SIDES:
            PIXELS.labels(model, side)


def observe_request(route: str, method: str, model: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method, model, str(status)).inc()
    _latency[1].labels(route, model).observe(seconds)


def observe_refusal(route: str, status: int, reason: str) -> None:
    REFUSALS.labels(route, str(status), reason).inc()


def observe_pixels(model: str, input_pixels: int, output_pixels: int) -> None:
    for side, pixels in zip(PIXEL_SIDES, (input_pixels, output_pixels), strict=True):
        PIXELS.labels(model, side).inc(pixels)


def observe_model_load(model: str, seconds: float) -> None:
    MODEL_LOAD.labels(model).set(seconds)
    MODEL_READY.labels(model).set(1)


def observe_slot(waiting: int, running: int) -> None:
    INFERENCE_QUEUED.set(waiting)
    INFERENCE_RUNNING.set(running)


def observe_device(usage: dict[str, float]) -> None:
    """A worker's GPU memory now, and its busy seconds and calls without memory so far (``Service.device_usage``),
    read when /metrics is asked (the worker that answers brings its figures up to date); nothing on the CPU."""
    if not usage:
        return
    DEVICE_MEMORY.set(usage["memory_bytes"])
    with _seen_lock:
        for counter, name in ((DEVICE_BUSY, "busy_seconds"), (DEVICE_OUT_OF_MEMORY, "out_of_memory")):
            counter.inc(max(0.0, usage[name] - _seen[name]))
            _seen[name] = max(_seen[name], usage[name])
