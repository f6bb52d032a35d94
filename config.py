"""Every setting and limit of the service, read once from the environment.

Each field is overridable by the environment variable of the same name in
upper case (``TILE_SIZE=96``, ``MODELS=srgan,realsr``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MEBIBYTE = 1024 * 1024
# Images a GPU worker upscales at once by default (INFERENCE_SLOTS=0 on a GPU).
GPU_INFERENCE_SLOTS = 4
# A worker's memory budget by default (MEMORY_BUDGET_MB=0). A GPU worker's holds CUDA's host pages beside the
# models and the host buffers of its GPU_INFERENCE_SLOTS images in flight (docs/gpu.md, "Serving on a GPU", "Host memory").
CPU_WORKER_MEMORY_BUDGET_MB = 3072
GPU_WORKER_MEMORY_BUDGET_MB = 6144
MIN_MEMORY_BUDGET_MB = 256
DEFAULT_QUEUE_SIZE = 2
# Disk for the uploads and answers in flight by default (SPOOL_MB): the manifests' /tmp emptyDir is 1 GiB, and
# Keras' home, torch's caches and serve.py's own files take the rest.
DEFAULT_SPOOL_MB = 768
# Beyond a request's queue wait and time limit, what its answer may still take: the upload, the stop at the
# next tile, the encoding. nginx waits that long for gunicorn, and sr-upscale for a server.
ANSWER_MARGIN_S = 30
# A caller's own X-Request-ID is kept (so that it can follow a request through proxies) only if it is short and
# plain; else the service makes one. nginx (serve.py) and the app (api/observability.py) both apply it.
REQUEST_ID_PATTERN = r"[A-Za-z0-9._:-]{1,128}"
# Python's level names: another is no level, and logging would refuse it only when a worker starts.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, frozen=True)

    # Serving
    port: int = Field(5000, ge=1, le=65535, description="TCP port the service listens on (nginx in front of gunicorn, see serve.py).")
    host: str = Field("0.0.0.0", description="Address the service listens on.")
    workers: int = Field(1, ge=1, description="gunicorn worker processes; each holds every model once.")
    threads: int = Field(0, ge=0, description=f"HTTP threads per worker; 0: one for each inference slot and queue place and one more, so that health and metrics answer while every slot is busy and the queue is full ({1 + DEFAULT_QUEUE_SIZE + 1} on the CPU, {GPU_INFERENCE_SLOTS + DEFAULT_QUEUE_SIZE + 1} on a GPU; serve.py sizes it for the device it finds, and gunicorn started without it, with DEVICE=auto, takes the GPU's count).")
    timeout_s: int = Field(600, ge=10, description="gunicorn worker timeout in seconds.")
    log_level: str = Field("INFO", description=f"Log level of every process: {', '.join(LOG_LEVELS)} (any case).")
    cors_enable: bool = Field(False, description="Send CORS headers, as the original's CORS_ENABLE did; to the origins in CORS_ORIGINS, or to any origin (*) when that is empty.")
    cors_origins: str = Field("", description="Comma-separated origins allowed to call the service from a browser (e.g. https://a.example,https://b.example); setting it turns CORS on.")
    prometheus_multiproc_dir: Path | None = Field(None, description="Folder where gunicorn's workers share their Prometheus metrics, and serve.py its count of nginx's refusals (emptied at start); unset: a new temporary folder.")

    # Models
    models: str = Field("srgan,srresnet,realsr,realesrgan,span,anime", description="Comma-separated models each worker loads at start-up (realcugan, max-srgan: name them to load them).")
    default_model: str = Field("srgan", description="Model used when a request names none.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the networks run: cuda (an NVIDIA GPU through PyTorch; start fails when none is visible), cpu, or auto (cuda when PyTorch sees a GPU, else the CPU).")
    backend: Literal["auto", "openvino", "tensorflow", "xla", "pytorch"] = Field("auto", description="Inference runtime: auto (pytorch on a GPU; on the CPU openvino where it is installed, as by make run, else pytorch), openvino (the CPU's fastest), tensorflow (the reference), xla, or pytorch (core/backends).")
    inference_threads: int = Field(0, ge=0, description="Threads the inference backend uses per worker; 0 means cores divided by workers.")
    max_srgan_checkpoint: Path | None = Field(None, description="Prefix of the original MAX TensorFlow-1 checkpoint; when set, model max-srgan is offered too.")
    models_dir: Path | None = Field(None, description="Folder of the operator's own models: NAME.param + NAME.bin (ncnn) or NAME.onnx, each with a sidecar NAME.json, or NAME.safetensors or NAME.pth (PyTorch, any architecture spandrel knows; sidecar optional); each is offered as model NAME (docs/deployment.md).")
    models_dir_pickles: bool = Field(True, description="Load MODELS_DIR's NAME.pth files (pickles) through spandrel's restricted unpickler; false: only NAME.safetensors, and a .pth fails with this reason.")

    # Tiling
    tile_size: int | None = Field(None, ge=16, description="Side of each tile's useful centre, in input pixels; unset: the largest that MEMORY_BUDGET_MB allows for each model and image (docs/speed.md).")
    tile_batch: int = Field(1, ge=1, description="Tiles run through the network at once (more costs memory, gains little with openvino).")

    # Precision and memory
    memory_budget_mb: int = Field(0, ge=0, description=f"Peak resident memory of one worker, in MiB: the loaded models, the buffers of the images in flight and the tiles' windows, and what reading one upload's header may hold, which it sets aside (docs/deployment.md, Sizing); each model's tile size follows from it, and images run together only while their buffers fit it (docs/speed.md). 0: {CPU_WORKER_MEMORY_BUDGET_MB} on the CPU, {GPU_WORKER_MEMORY_BUDGET_MB} on a GPU (CUDA's host memory and the images in flight together).")
    gpu_memory_budget_mb: int = Field(0, ge=0, description="GPU memory a worker's networks may use, in MiB: the loaded models and one window, or a 16-bit window's f32 rerun with its f32 copy of the weights; on a GPU each model's tile follows from it (whole images run as one window where they fit). 0: 90 % of the card's memory at start, shared among the WORKERS (each holds its own models on the card).")
    precision: Literal["auto", "f32", "bf16", "fp16"] = Field("auto", description="Arithmetic of the networks: auto runs bf16 on the CPU only where the CPU has it natively and the model was measured to allow it, and on a GPU each model's measured precision (docs/speed.md, docs/gpu.md); f32, bf16 or fp16 (GPU only) force one for every model.")

    png_compression_level: int = Field(1, ge=0, le=9, description="Deflate level of PNG results: 1 to 3 run ISA-L's deflate, 0 (stored) and 4 to 9 zlib's; 1 encodes several times faster than 6 for somewhat larger files (measured trade: docs/speed.md).")

    # Limits
    max_upload_bytes: int = Field(32 * MEBIBYTE, ge=1, description="Largest accepted upload (413 above).")
    spool_mb: int = Field(DEFAULT_SPOOL_MB, ge=1, description="Disk in MiB (under /tmp) that the image requests in flight may take: their uploads, held by nginx and by the worker that reads them, and what of their answers nginx holds for slow clients. serve.py derives from it how many image requests nginx takes at once (503 beyond) and refuses to start where it cannot hold the workers' request slots at MAX_UPLOAD_BYTES (docs/deployment.md, \"Disk\"); the default leaves 256 MiB of the manifests' 1 GiB /tmp to other files.")
    max_input_pixels: int = Field(2000 * 2000, ge=1, description="Largest accepted input, width x height (413 above).")
    max_output_pixels: int = Field(8000 * 8000, ge=1, description="Largest produced output, width x height (413 above).")
    inference_slots: int = Field(0, ge=0, description="Images a worker upscales at once; 0: one on the CPU (the network takes every core), GPU_INFERENCE_SLOTS on a GPU (one request's decode and encode overlap another's network; the GPU runs one window at a time).")
    queue_size: int = Field(DEFAULT_QUEUE_SIZE, ge=0, description="Requests that may wait for a worker's inference slots; more get 503 at once.")
    request_time_limit_s: float = Field(600.0, gt=0, allow_inf_nan=False, description="A request still running after this many seconds stops at its next tile (503).")
    retry_after_s: int = Field(5, ge=1, description="Retry-After of a 503, in seconds: the least a busy worker sends (it sends the seconds until its first running image should end where that is longer, up to QUEUE_WAIT_S), and what every other 503 sends (a model loading, shutting down, nginx's own refusals).")
    queue_wait_s: float = Field(60.0, gt=0, allow_inf_nan=False, description="Longest wait of a queued request for the inference slot (then 503); the time limit starts once it runs.")
    max_ensemble_pixels: int = Field(500 * 500, ge=1, description="Largest input, width x height, for ensemble=true (8 passes of the network; 413 above).")

    # Clients and shutdown
    client_timeout_s: float = Field(20.0, ge=0.001, allow_inf_nan=False, description="A client whose headers do not arrive within this time, or that sends its body or reads the answer with a pause this long, is disconnected (nginx, see serve.py).")
    shutdown_grace_s: int = Field(50, ge=1, description="After SIGTERM, requests in flight get this long to finish; one whose next tile would end later stops with a 503 before it.")

    # Evaluation data for tests and benchmarks (never copied into the repository)
    datasets_dir: Path = Field(Path(__file__).resolve().parent.parent / "shared" / "datasets",
                               description="Folder holding Set5, Set14, BSD100 and RealSRSet.")

    @field_validator("models")
    @classmethod
    def _models_not_empty(cls, value: str) -> str:
        if not [name for name in value.split(",") if name.strip()]:
            raise ValueError("MODELS must name at least one model")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
        return value

    @field_validator("memory_budget_mb")
    @classmethod
    def _budget_floor(cls, value: int) -> int:
        if 0 < value < MIN_MEMORY_BUDGET_MB:
            raise ValueError(f"MEMORY_BUDGET_MB must be 0 (the device's default) or at least {MIN_MEMORY_BUDGET_MB}")
        return value

    def inference_slots_for(self, device: str) -> int:
        """INFERENCE_SLOTS, or its default for ``device`` ("cpu" or "cuda")."""
        return self.inference_slots or (GPU_INFERENCE_SLOTS if device == "cuda" else 1)

    def threads_for(self, device: str) -> int:
        """THREADS, or its default for ``device``: the inference slots, the queue places and one for the probes."""
        return self.threads or self.inference_slots_for(device) + self.queue_size + 1

    def memory_budget_bytes(self, device: str) -> int:
        """MEMORY_BUDGET_MB in bytes, or its default for ``device`` ("cpu" or "cuda")."""
        default = GPU_WORKER_MEMORY_BUDGET_MB if device == "cuda" else CPU_WORKER_MEMORY_BUDGET_MB
        return (self.memory_budget_mb or default) * MEBIBYTE

    @property
    def longest_answer_s(self) -> float:
        """The longest an image's answer takes: its wait in the queue, its time limit and the margin."""
        return self.queue_wait_s + self.request_time_limit_s + ANSWER_MARGIN_S

    @property
    def worker_cores(self) -> int:
        """Threads a worker runs its network and its PNG compression on."""
        return self.inference_threads or max(1, len(os.sched_getaffinity(0)) // self.workers)

    @property
    def model_names(self) -> tuple[str, ...]:
        names = [name.strip() for name in self.models.split(",") if name.strip()]
        if self.max_srgan_checkpoint is not None and "max-srgan" not in names:
            names.append("max-srgan")
        return tuple(dict.fromkeys(names))


def invalid_settings(error: ValidationError) -> str:
    """Each setting the environment gives a value it cannot take, by its variable's name, with the value: what a
    process that reads the settings at start says before it exits."""
    lines = [f"{'.'.join(map(str, problem['loc'])).upper() or 'SETTINGS'}={problem['input']!r}: {problem['msg']}"
             for problem in error.errors(include_url=False)]
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides winning (tests, CLI)."""
    return Settings(**overrides)
