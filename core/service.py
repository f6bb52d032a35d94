"""What one worker process holds: settings, the loaded models and the inference slot."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from config import Settings
from core import cost, images
from core.admission import InferenceSlot
from core.models.registry import ModelRegistry
from core.models.runtime import configure_threads
from core.pipeline import Progress, Result, UpscaleOptions, upscale


@dataclass
class Service:
    settings: Settings
    registry: ModelRegistry
    slot: InferenceSlot
    _loader: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def create(cls, settings: Settings) -> "Service":
        """The service of this process; also sets the process-wide thread counts and Pillow's bomb guard."""
        images.guard_decompression_bombs(settings.max_input_pixels)
        configure_threads(settings.inference_threads or max(1, len(os.sched_getaffinity(0)) // settings.workers))
        return cls(settings, ModelRegistry(settings),
                   InferenceSlot(settings.queue_size, settings.queue_wait_s))

    def start_loading(self, on_loaded: Callable[[str, float], None] | None = None) -> None:
        """Load every model in the background, so that /health answers during start-up."""
        self._loader = threading.Thread(target=self.registry.load_all, args=(on_loaded,),
                                        name="model-loader", daemon=True)
        self._loader.start()

    def wait_until_loaded(self, timeout_s: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout_s)
        return self.registry.ready

    def upscale(self, data: bytes, options: UpscaleOptions, on_progress: Progress | None = None) -> Result:
        """Upscale in this worker's inference slot (503 at once when the queue is full)."""
        options.validate()
        self.refuse_costly(data, options)
        with self.slot.hold():
            return upscale(data, options, self.registry, self.settings, on_progress)

    def refuse_costly(self, data: bytes, options: UpscaleOptions) -> None:
        """413 at once for an ensemble over its pixel limit, or an image the time limit would stop anyway.

        The size comes from the header alone; a header that does not read is left to the decoder's message.
        """
        name = options.model or self.settings.default_model
        network = self.registry.get(name)
        size = images.header_size(data)
        if size is None:
            return
        width, height = size
        if options.ensemble:
            cost.check_ensemble_pixels(width, height, self.settings.max_ensemble_pixels)
        seconds = cost.estimate_seconds(self.registry.throughput(name), width, height, self.settings.tile_size,
                                        network.margin, options.ensemble)
        cost.check_fits(seconds, self.settings.request_time_limit_s, name, width, height, options.ensemble)
