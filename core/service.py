"""What one worker process holds: settings, the loaded models and the inference slot."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from config import GPU_INFERENCE_SLOTS, Settings
from core import backends, cost, images, memory
from core.admission import InferenceSlot
from core.geometry import enlargement, plan_output
from core.models.registry import ModelRegistry, window_bytes_per_pixel
from core.models.runtime import Network
from core.options import DEFAULT_SCALE, OptionContext, UpscaleOptions
from core.pipeline import Progress, Result, upscale
from core.timing import Stages


# What GPU_MEMORY_BUDGET_MB=0 leaves to the networks: the rest is the CUDA context's and other processes'.
GPU_MEMORY_SHARE = 0.9


def inference_slots(settings: Settings, device: str) -> int:
    """INFERENCE_SLOTS, or its default for the device."""
    return settings.inference_slots or (GPU_INFERENCE_SLOTS if device == "cuda" else 1)


@dataclass
class Service:
    settings: Settings
    registry: ModelRegistry
    slot: InferenceSlot
    _loader: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def create(cls, settings: Settings) -> "Service":
        """The service of this process on the backend and device that DEVICE and BACKEND choose
        (``backends.DeviceError`` where they cannot be had); also sets the backend's thread counts and
        Pillow's bomb guard."""
        images.guard_decompression_bombs(settings.max_input_pixels)
        choice = backends.choose(settings)
        choice.module.start(settings, choice.device)
        return cls(settings, ModelRegistry(settings, choice),
                   InferenceSlot(settings.queue_size, settings.queue_wait_s, inference_slots(settings, choice.device)))

    def device(self) -> dict[str, object]:
        """The device and backend the networks run on, for /model/metadata and /ready."""
        choice = self.registry.choice
        return {**choice.module.device_facts(choice.device), "backend": choice.backend,
                "inference_slots": self.slot.slots}

    def device_usage(self) -> dict[str, float]:
        """A GPU's memory in use and the seconds its networks ran, for /metrics; empty on the CPU."""
        choice = self.registry.choice
        return choice.module.usage(choice.device)

    def start_loading(self, on_loaded: Callable[[str, float], None] | None = None) -> None:
        """Load every model in the background, so that /health answers during start-up."""
        self._loader = threading.Thread(target=self.registry.load_all, args=(on_loaded,),
                                        name="model-loader", daemon=True)
        self._loader.start()

    @property
    def option_context(self) -> OptionContext:
        """What the options' allowed values depend on here: the models this server offers."""
        return self.registry.option_context()

    def network_for(self, options: UpscaleOptions, data: bytes) -> Network:
        """The network the options ask for, at the model's smallest native scale that reaches the asked size
        (for a width or height, that of the image's header); 400 if not offered, 503 while loading."""
        size = images.oriented_size(data) if options.target else None
        factor = enlargement(*size, options) if size else options.scale or DEFAULT_SCALE
        return self.registry.get(options.model or self.settings.default_model, factor, options.denoise)

    def upscale(self, data: bytes, options: UpscaleOptions, on_progress: Progress | None = None,
                network: Network | None = None, with_layers: bool = False, stages: Stages | None = None) -> Result:
        """Upscale in this worker's inference slot (503 at once when the queue is full).

        ``options`` come from ``parse_options``; a caller that has looked the network up already passes it.
        ``stages`` receives the seconds of each stage, the wait for the slot as ``queue``.
        """
        network = network or self.network_for(options, data)
        self.refuse_costly(data, options, network)
        stages = stages or Stages()
        queued = time.perf_counter()
        with self.slot.hold():
            stages.add("queue", time.perf_counter() - queued)
            return upscale(data, options, network, self.settings, self.tile_size, on_progress, with_layers, stages)

    def tile_size(self, network: Network, height: int, width: int) -> int:
        """The tile side for an image of this size on ``network``: TILE_SIZE when set, else the largest
        that MEMORY_BUDGET_MB leaves room for beside the loaded models (413 when none does)."""
        if self.settings.tile_size is not None:
            return self.settings.tile_size
        device = self.registry.choice.device
        bytes_per_pixel = window_bytes_per_pixel(network.name, network.precision, device)
        if device == "cuda":
            return memory.tile_for_device_budget(self.device_budget(), self.registry.device_resident, bytes_per_pixel,
                                                 network.margin, height, width, self.settings.tile_batch)
        return memory.tile_for_budget(self.settings.memory_budget_mb * memory.MEBIBYTE, self.registry.resident,
                                      bytes_per_pixel, network.margin, height, width, network.scale,
                                      self.settings.tile_batch)

    def device_budget(self) -> int:
        """GPU_MEMORY_BUDGET_MB in bytes, or by default that share of the card's memory."""
        if self.settings.gpu_memory_budget_mb:
            return self.settings.gpu_memory_budget_mb * memory.MEBIBYTE
        choice = self.registry.choice
        return int(choice.module.memory_total(choice.device) * GPU_MEMORY_SHARE)

    def refuse_costly(self, data: bytes, options: UpscaleOptions, network: Network) -> None:
        """413 at once for an ensemble over its pixel limit, or an image the time limit would stop anyway.

        The sizes come from the header alone; a header that does not read is left to the decoder's message.
        """
        size = images.oriented_size(data)
        if size is None:
            return
        images.check_pixels(size, self.settings.max_input_pixels)  # before planning the tiles of a huge header
        width, height = size
        if options.ensemble:
            cost.check_ensemble_pixels(width, height, self.settings.max_ensemble_pixels)
        seconds = self.estimate_seconds(width, height, options, network)
        cost.check_fits(seconds, self.settings.request_time_limit_s, network.name, width, height, options.ensemble)

    def estimate_seconds(self, width: int, height: int, options: UpscaleOptions, network: Network) -> float:
        """The network's seconds for a ``width`` x ``height`` input, every pass with its tiles (0 if unmeasured)."""
        if network.throughput is None:
            return 0.0
        plan = plan_output(width, height, options, network.scale)
        return sum(cost.estimate_seconds(network.throughput, pass_width, pass_height,
                                         self.tile_size(network, pass_height, pass_width),
                                         network.margin, options.ensemble)
                   for pass_width, pass_height in plan.pass_inputs)
