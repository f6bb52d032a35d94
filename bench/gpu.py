"""Every built-in network on an NVIDIA GPU through the PyTorch backend, and whole requests through the service.

    python -m bench.gpu [--models srgan,srresnet,realsr,realesrgan,span,anime,realcugan] [--runs 10]
                        [--out gpu-results.jsonl] [--http --slots 1,2,4,8 --clients 8 --seconds 15]
                        [--batches 1,2,4,8 --window 256]

For each network of each model, in f32 (TF32), fp16 and bf16: the output on the sample photos against the
CPU's f32 output of the same network (the reference the CPU tests hold to the Keras graphs), as PSNR on
8-bit levels, worst photo; the precision PRECISION=auto should run (the faster 16-bit one within
MIN_BF16_PSNR_DB, else f32); the median time of the network at 500² and 128² (the runner's, copies to and
from the GPU included) and the network alone on tensors already on the GPU; the peak GPU memory at 500².
Then, per model, whole requests: a 500² PNG through ``Service.upscale`` (decode, network, encode), median
of ``--runs``, with each stage's seconds. ``--http``: instead, gunicorn on loopback (no nginx) for each
INFERENCE_SLOTS in ``--slots``: one client's median time per 500² PNG, and ``--clients`` clients' images per
second against what the network alone does, with the workers' CPU cores, the device lock's share of the time
and each stage's median under that load. ``--batches``: per model, ``--window``² windows through the
runner in batches of each size (seconds per window: whether TILE_BATCH pays), and a 500² result copied
back as float32 against as 8-bit levels rounded on the GPU. One JSON line per measurement, each with the machine
it ran on (GPU, driver, CPU and its core count), so that rows of several calls appended together keep theirs;
the figures go to docs/gpu.md. ``--device cpu`` runs every row on the CPU in f32, to check the script where no
GPU is at hand. Needs torch, spandrel, h5py, numpy, Pillow, pydantic-settings and pypng, and
the weight packages (docs/gpu.md: carrying them to a machine without network).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from bench.stages import parse_server_timing
from config import load_settings
from core import metrics
from core.backends import Choice, cpu_name, pytorch
from core.models.precision import MIN_BF16_PSNR_DB
from core.models.specs import PACKAGED, SPECS, Variant
from core.models.runtime import Network
from core.options import UpscaleOptions
from core.timing import Stages
from harness.photos import photo_png

if TYPE_CHECKING:
    from harness.live_server import LiveServer

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "test_examples" / "low_resolution"
PRECISIONS = ("f32", "fp16", "bf16")
SIDES = (500, 128)
CUDA, CPU = Choice("pytorch", "cuda"), Choice("pytorch", "cpu")
REQUEST_BUDGET_MB = 32768


def machine(choice: Choice = CUDA) -> dict[str, object]:
    """What every row records of the machine: the GPU, its driver and CUDA (none on the CPU), the CPU and its
    cores (the host's work around the network runs there)."""
    host = {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__}
    if choice.device != "cuda":
        return {"gpu": None, "driver": None, **host}
    properties = torch.cuda.get_device_properties(0)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip()
    return {"gpu": properties.name, "gpu_memory_mib": properties.total_memory // 2**20, "driver": driver,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), **host}


def photos() -> list[np.ndarray]:
    return [np.asarray(Image.open(path).convert("RGB"), np.float32) / 255 for path in sorted(SAMPLES.glob("*.png"))]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two network outputs as 8-bit images would show them."""
    return metrics.psnr(*(np.rint(np.clip(image, 0, 1) * 255) for image in (a, b)))


def whole(network: Network, image: np.ndarray) -> np.ndarray:
    """The network's output for a whole image, its graph's averages taken over that image."""
    return network.predictor(image)(image[None])[0]


def median_seconds(call: Callable[[], object], runs: int) -> float:
    call()
    times = []
    for _ in range(runs):
        _synchronize()
        started = time.perf_counter()
        call()
        _synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _synchronize() -> None:
    # The batch and copy rows also run on the CPU (choice=CPU), to check the script before a GPU is lent.
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def network_rows(name: str, variant: Variant, runs: int, images: list[np.ndarray], choice: Choice = CUDA) -> list[dict]:
    spec = SPECS[name]
    reference_network = pytorch.network(spec, variant, load_settings(precision="f32"), CPU)
    references = [whole(reference_network, image) for image in images]
    rows = []
    for arithmetic in PRECISIONS if choice.device == "cuda" else ("f32",):
        network = pytorch.network(spec, variant, load_settings(precision=arithmetic), choice)
        row = {"model": name, "scale": variant.scale, "denoise": variant.denoise, "precision": arithmetic,
               "psnr_vs_cpu_f32_db": min(psnr(whole(network, image), reference)
                                         for image, reference in zip(images, references))}
        for side in SIDES:
            if choice.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            row[f"runner_s_{side}"] = runner_seconds(network, side, runs)
            if choice.device == "cuda":
                row[f"peak_gpu_mib_{side}"] = torch.cuda.max_memory_allocated() / 2**20
            if network.measure is None:
                row[f"network_s_{side}"] = module_seconds(network, side, runs)
        rows.append(row)
    chosen = choose(rows)
    for row in rows:
        row["chosen"] = row["precision"] == chosen
    return rows


def runner_seconds(network: Network, side: int, runs: int) -> float:
    """The network through its runner on a side² photo: copies to and from the GPU included."""
    batch = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB").resize((side, side)), np.float32)[None] / 255
    predict = network.predictor(batch[0])
    return median_seconds(lambda: predict(batch), runs)


def module_seconds(network: Network, side: int, runs: int) -> float:
    """The module alone on a tensor already on the GPU: what ../shared/gpu's reference figures time."""
    runner = network.run
    padded = side if network.border is None else network.border.extend(np.zeros((1, side, side, 3))).shape[1]
    tensor = torch.rand(1, 3, padded, padded, device=runner.device, dtype=pytorch.DTYPES[runner.precision])
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return median_seconds(lambda: runner.module(tensor), runs)


def network_alone_seconds(network: Network, side: int, runs: int) -> float:
    """The module alone, or where it takes its image's averages as inputs too (Real-CUGAN), the runner, which
    measures them: the module alone has nothing to run on."""
    return module_seconds(network, side, runs) if network.measure is None else runner_seconds(network, side, runs)


def choose(rows: list[dict]) -> str:
    """The faster 16-bit precision whose worst photo stays within MIN_BF16_PSNR_DB of the reference, else f32."""
    fit = [row for row in rows if row["precision"] != "f32" and row["psnr_vs_cpu_f32_db"] >= MIN_BF16_PSNR_DB]
    return min(fit, key=lambda row: row[f"runner_s_{SIDES[0]}"])["precision"] if fit else "f32"


def batch_rows(name: str, window: int, batches: list[int], runs: int, choice: Choice = CUDA) -> list[dict]:
    """The model's largest network on ``max(batches)`` windows of ``window``², in batches of each size:
    seconds per window through the runner, copies included (TILE_BATCH's trade on this device)."""
    network = _auto_network(name, choice)
    windows = np.random.default_rng(0).random((max(batches), window, window, 3), dtype=np.float32)
    predict = network.predictor(windows[0])
    rows = []
    for batch in batches:
        def run_all(batch: int = batch) -> None:
            for start in range(0, len(windows), batch):
                predict(windows[start:start + batch])
        rows.append({"model": name, "window": window, "batch": batch, "precision": network.precision,
                     "window_s": median_seconds(run_all, runs) / len(windows)})
    return rows


def copy_rows(name: str, runs: int, choice: Choice = CUDA) -> dict:
    """A 500² photo through the model's largest network, its result copied back as float32 and as 8-bit
    levels rounded where the network ran (what the pipeline takes for colour without ensemble)."""
    network = _auto_network(name, choice)
    image = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB").resize((500, 500)), np.float32) / 255
    floats, levels = network.predictor(image), network.level_predictor(image, 255)
    return {"model": name, "precision": network.precision,
            "float32_result_s_500": median_seconds(lambda: floats(image[None]), runs),
            "levels_result_s_500": median_seconds(lambda: levels(image[None]), runs)}


def _auto_network(name: str, choice: Choice) -> Network:
    """The model's largest network on ``choice``'s device in the precision PRECISION=auto gives it."""
    return pytorch.network(SPECS[name], SPECS[name].variants[-1], load_settings(), choice)


def request_rows(name: str, runs: int, choice: Choice = CUDA) -> dict:
    """A 500² PNG through the service on the GPU, in the precision PRECISION=auto gives the model."""
    from core.service import Service

    # This process also holds every network timed before: a budget beside them, for the request's own buffers.
    service = Service.create(load_settings(device=choice.device, backend=choice.backend, models=name,
                                           default_model=name, memory_budget_mb=REQUEST_BUDGET_MB))
    service.load()
    data, options = photo_png(500), UpscaleOptions(model=name)
    totals, stages_seen = [], []
    for _ in range(runs + 1):
        stages = Stages()
        started = time.perf_counter()
        service.upscale(data, options, stages=stages)
        totals.append(time.perf_counter() - started)
        stages_seen.append(stages.seconds)
    totals, stages_seen = totals[1:], stages_seen[1:]
    per_stage = {stage: statistics.median(seen.get(stage, 0.0) for seen in stages_seen) for stage in stages_seen[0]}
    return {"model": name, "request_s_500": statistics.median(totals), "stages_s": per_stage,
            "precision": service.registry.describe()[0]["precision"]}


def http_rows(name: str, slots: int, clients: int, seconds: float, runs: int, workers: int = 1,
              choice: Choice = CUDA) -> dict:
    """One model behind gunicorn (``workers`` processes sharing the GPU) with ``slots`` images in flight each:
    one client's latency, then ``clients``'."""
    import requests

    from harness.live_server import live_server

    data = photo_png(500)
    alone = 1 / network_alone_seconds(_auto_network(name, choice), 500, runs)
    environment = {"models": name, "default_model": name, "device": choice.device, "backend": choice.backend,
                   "inference_slots": slots, "workers": workers,
                   "threads": slots + clients + 2, "queue_size": clients}
    timings: list[dict[str, float]] = []
    with live_server(**environment) as server:
        def post(session: requests.Session) -> None:
            answer = session.post(f"{server.url}/model/predict", files={"image": ("photo.png", data)}, timeout=120)
            answer.raise_for_status()
            timings.append(parse_server_timing(answer.headers["Server-Timing"]))

        with requests.Session() as session:
            one = median_seconds(lambda: post(session), runs)
        timings.clear()
        before, started = load_counters(server), time.perf_counter()
        done = concurrent_requests(post, clients, seconds)
        elapsed, after = time.perf_counter() - started, load_counters(server)
    cpu_s, busy_s = (after[key] - before[key] for key in ("worker_cpu_s", "device_busy_s"))
    return {"model": name, "http": True, "workers": workers, "inference_slots": slots, "clients": clients,
            "request_s_500": one,
            # Over the time until the last answer came: the clients' requests begun before ``seconds`` were up
            # end after it, and counted over ``seconds`` alone they overstated the rate (by a request per client).
            "images_per_s": done / elapsed, "network_alone_images_per_s": alone,
            "share_of_network_alone": done / elapsed / alone,
            # Where the clients' rate stops: the workers' cores per second (about 1 each while a worker's
            # Python holds it back, up to the host's count while cores do), the device lock's share of the
            # time, and each stage's median seconds under load.
            "worker_cpu_cores": cpu_s / elapsed, "worker_cpu_s_per_image": cpu_s / max(done, 1),
            "device_busy_share": busy_s / elapsed if workers == 1 else None,
            "worker_peak_rss_mib": after["worker_peak_rss_mib"],
            "stages_s_under_load": {stage: statistics.median(seen.get(stage, 0.0) for seen in timings)
                                    for stage in timings[0]}}


def load_counters(server: LiveServer) -> dict[str, float]:
    """The CPU seconds the server's workers have used so far, the largest worker's peak RSS (the loaded models
    with CUDA's host pages, and the images in flight) and, from /metrics, the seconds the device lock was held
    (one worker's: /metrics adds a worker's busy time only when that worker answers)."""
    import requests

    from harness.process import gunicorn_workers, peak_rss_mb

    workers = gunicorn_workers(server.process.pid)
    ticks = sum(sum(int(field) for field in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
                for pid in workers)
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    busy = sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("superres_device_busy_seconds_total"))
    return {"worker_cpu_s": ticks / os.sysconf("SC_CLK_TCK"), "device_busy_s": busy,
            "worker_peak_rss_mib": max(peak_rss_mb(pid) for pid in workers)}


def concurrent_requests(post: Callable[[object], None], clients: int, seconds: float) -> int:
    """Requests answered by ``clients`` clients, each posting one after another, within ``seconds``."""
    import requests

    stop_at = time.perf_counter() + seconds
    counts = [0] * clients

    def client(index: int) -> None:
        with requests.Session() as session:
            while time.perf_counter() < stop_at:
                post(session)
                counts[index] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(PACKAGED))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("gpu-results.jsonl"))
    parser.add_argument("--no-requests", action="store_true", help="time the networks only")
    parser.add_argument("--no-networks", action="store_true", help="time whole requests only")
    parser.add_argument("--http", action="store_true", help="through gunicorn on loopback, one and several clients")
    parser.add_argument("--slots", default="1,2,4,8", help="INFERENCE_SLOTS values for --http")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", default="1", help="gunicorn worker counts for --http, e.g. 1,2")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--batches", help="batch sizes to time windows in, e.g. 1,2,4,8")
    parser.add_argument("--window", type=int, default=256, help="the window side for --batches")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: every row on the CPU in f32, to check the script without a GPU")
    args = parser.parse_args(argv)
    choice = CUDA if args.device == "cuda" else CPU
    if choice.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs a GPU that PyTorch sees (--device cpu checks the script on the CPU)")
    images = photos()
    facts = machine(choice)
    with args.out.open("w") as out:
        def emit(row: dict) -> None:
            line = json.dumps({**row, "machine": facts})
            out.write(line + "\n")
            out.flush()
            print(line, flush=True)
        if args.http:
            for name in args.models.split(","):
                for workers in (int(value) for value in args.workers.split(",")):
                    for slots in (int(value) for value in args.slots.split(",")):
                        emit(http_rows(name, slots, args.clients, args.seconds, args.runs, workers, choice))
            return 0
        if args.batches:
            for name in args.models.split(","):
                for row in batch_rows(name, args.window, [int(value) for value in args.batches.split(",")], args.runs,
                                      choice):
                    emit(row)
                emit(copy_rows(name, args.runs, choice))
            return 0
        for name in args.models.split(",") if not args.no_networks else ():
            for variant in SPECS[name].variants:
                for row in network_rows(name, variant, args.runs, images, choice):
                    emit(row)
        if not args.no_requests:
            for name in args.models.split(","):
                emit(request_rows(name, args.runs, choice))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
