"""What one worker process holds: settings, the loaded models and the inference slot."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from config import Settings
from core import backends, cost, encoding, images, memory, pipeline
from core.admission import InferenceSlot
from core.errors import DeviceFailed
from core.geometry import OutputPlan, enlargement, plan_output
from core.models.registry import ModelRegistry
from core.models.runtime import Network, f32_copy_bytes
from core.options import OptionContext, UpscaleOptions, runs_model
from core.pipeline import Progress, Result
from core.plan import Pass, Plan, check_sizes, network_reach, plan_pass
from core.timing import Stages
from core.upload import Upload, upload_bytes, upload_size

log = logging.getLogger(__name__)
# What GPU_MEMORY_BUDGET_MB=0 leaves to the networks: the rest is the CUDA context's and other processes'.
GPU_MEMORY_SHARE = 0.9


def worker_room(settings: Settings, registry: ModelRegistry) -> int:
    """What MEMORY_BUDGET_MB leaves to the images in flight: less the loaded models, the header being read (one at a
    time, before its request reserves) and, on a GPU, the pinned blocks torch keeps for the copies back."""
    device = registry.choice.device
    return (settings.memory_budget_bytes(device) - registry.resident
            - memory.header_read_bytes(settings.max_upload_bytes)
            - memory.pinned_cache_bytes(device, settings.inference_slots_for(device)))


def decoded_beside_cut(header: images.Header, output: OutputPlan) -> int:
    """The decoded image, held whole while the first pass runs on a part of it (fit=cover's cut): a pass over the
    whole image counts it among its own buffers (memory.pass_bytes), a pass over a part counts the part's."""
    return header.width * header.height * header.pixel_bytes if output.pass_inputs[0] != output.input else 0


@dataclass
class Service:
    settings: Settings
    registry: ModelRegistry
    slot: InferenceSlot
    _loader: threading.Thread | None = field(default=None, repr=False)
    # What stops this worker once its device failed for good (``on_device_failure``), whether it was called, and
    # whether the device failed while the models loaded.
    _stop: Callable[[bool], None] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)
    _failed_loading: bool = field(default=False, repr=False)
    _stopping: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reading_header: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, settings: Settings, only: str | None = None) -> "Service":
        """The service of this process on the backend and device that DEVICE and BACKEND choose
        (``backends.DeviceError`` where they cannot be had), offering every model or ``only`` that one; also sets
        the backend's thread counts, Pillow's bomb guard and the C heap's thresholds."""
        memory.pin_heap_thresholds()
        images.guard_decompression_bombs(settings.max_input_pixels)
        choice = backends.choose(settings)
        choice.module.start(settings, choice.device)
        registry = ModelRegistry(settings, choice, only)
        return cls(settings, registry, InferenceSlot(settings.queue_size, settings.queue_wait_s,
                                                     settings.inference_slots_for(choice.device),
                                                     room=lambda: worker_room(settings, registry)))

    def device(self) -> dict[str, object]:
        """The device and backend the networks run on, for /model/metadata and /ready."""
        choice = self.registry.choice
        return {**choice.module.device_facts(choice.device), "backend": choice.backend,
                "inference_slots": self.slot.slots}

    def device_usage(self) -> dict[str, float]:
        """A GPU's memory in use and the seconds its networks ran, for /metrics; empty on the CPU."""
        choice = self.registry.choice
        return choice.module.usage(choice.device)

    @property
    def device_failure(self) -> str | None:
        """Why the device can run nothing more in this process (/health and /ready then fail); None while it runs."""
        choice = self.registry.choice
        return choice.module.failure(choice.device)

    def on_device_failure(self, stop: Callable[[bool], None]) -> None:
        """Have ``stop`` called, once, when the device fails for good (at once where it has already), told whether
        it failed while the models loaded, before this worker served: such a device fails in a fresh process too,
        so under gunicorn the server stops; after that, at a request, the worker stops and the master starts a
        fresh one."""
        self._stop = stop
        self._stop_if_failed()

    def _stop_if_failed(self) -> None:
        with self._stopping:
            if self._stopped or self._stop is None or self.device_failure is None:
                return
            self._stopped = True
        when = "while the models loaded, before this worker served" if self._failed_loading else "at a request"
        log.critical("the device failed %s; this worker stops: %s", when, self.device_failure)
        self._stop(self._failed_loading)

    def start_loading(self, on_loaded: Callable[[str, float], None] | None = None) -> None:
        """Load every model in the background, so that /health answers during start-up."""
        self._loader = threading.Thread(target=self.load, args=(on_loaded,), name="model-loader", daemon=True)
        self._loader.start()

    def load(self, on_loaded: Callable[[str, float], None] | None = None) -> None:
        """Load every model, then take out of service those whose smallest window the GPU budget has no room for
        beside the loaded models, and hold the others' f32 reruns to it; ``on_loaded`` hears of the others, once
        that is known."""
        loaded: list[tuple[str, float]] = []
        self.registry.load_all(lambda name, seconds: loaded.append((name, seconds)))
        # A model's warm-up can meet the device's failure.
        self._failed_loading = self.device_failure is not None
        self._stop_if_failed()
        short = self.short_of_device_memory()
        for name, reason in short.items():
            log.error("model %s cannot serve: %s", name, reason)
            self.registry.fail(name, reason)
        self.plan_reruns()
        for name, seconds in loaded:
            if on_loaded is not None and name not in short:
                on_loaded(name, seconds)

    def short_of_device_memory(self) -> dict[str, str]:
        """Each ready model whose smallest tile's window, smallest window of a whole image's averages where it
        has them, or smallest f32 rerun where it runs in 16 bits (``smallest_rerun_bytes``), does not fit what
        GPU_MEMORY_BUDGET_MB leaves beside the loaded models, with the reason: it would refuse every image (or every
        image one of whose windows overflows 16 bits), so /ready says so from the start instead. None on the CPU,
        whose memory budget is checked per image."""
        if self.registry.choice.device != "cuda":
            return {}
        budget, resident = self.device_budget(), self.registry.device_resident
        short = {}
        for name, state in self.registry.states().items():
            if state != "ready":
                continue
            network = self.registry.get(name)
            bytes_per_pixel = self.registry.cards[name].window_bytes_per_pixel(network.precision, "cuda")
            window = memory.smallest_window_bytes(bytes_per_pixel, network.margin, self.settings.tile_batch,
                                                  network.border)
            if network.measure is not None:  # measured alone, before the tiles
                averages_per_pixel = self.registry.cards[name].averages_bytes_per_pixel(network.precision, "cuda",
                                                                                         network.scale)
                window = max(window, memory.smallest_averages_window_bytes(averages_per_pixel, network.border))
            rerun = self.smallest_rerun_bytes(network)
            if resident + max(window, rerun) > budget:
                what = "window" if window >= rerun else "window's f32 rerun (its 16-bit output not finite)"
                short[name] = (f"GPU_MEMORY_BUDGET_MB={budget // memory.MEBIBYTE} leaves no room for its smallest "
                               f"{what} ({memory.mib_up(max(window, rerun))} MiB) beside the "
                               f"{resident // memory.MEBIBYTE} MiB the loaded models hold on the GPU")
        return short

    def smallest_rerun_bytes(self, network: Network) -> int:
        """The GPU memory of the f32 rerun of one window of the smallest tile the retries go down to (MIN_RETRY_TILE;
        a tile planned smaller runs no larger windows), and of one smallest window of a whole image's averages:
        a rerun past the budget's room is retried in smaller windows down to those, then refused with a 503 (0 for
        a network that runs no rerun, in f32)."""
        f32 = self.registry.cards[network.name].window_bytes_per_pixel("f32", "cuda")
        tiles = averages = 0
        if copy := f32_copy_bytes(network.run):
            side = memory.tile_window_side(memory.MIN_RETRY_TILE, network.margin)
            tiles = memory.smallest_rerun_bytes(copy, f32, memory.run_pixels(side, side, network.border), network.scale)
        if copy := f32_copy_bytes(network.measure):  # its outputs, the averages, take a few bytes
            side = memory.MIN_RETRY_TILE
            averages = memory.rerun_bytes(copy, f32, memory.run_pixels(side, side, network.border), 1, 0)
        return max(tiles, averages)

    def plan_reruns(self) -> None:
        """On a GPU, hold each ready network's f32 reruns to what GPU_MEMORY_BUDGET_MB leaves beside the loaded
        models, as its tiles are (``Network.plan_rerun``)."""
        if self.registry.choice.device != "cuda":
            return
        room = self.device_budget() - self.registry.device_resident
        for name in self.registry.names:
            f32 = self.registry.cards[name].window_bytes_per_pixel("f32", "cuda")
            for network in self.registry.networks(name):
                network.plan_rerun(room, f32)

    @property
    def option_context(self) -> OptionContext:
        """What the options' allowed values depend on here: the models this server offers."""
        return OptionContext(self.registry.names, self.settings.default_model, self.registry.denoise_levels())

    def prepare(self, upload: Upload, options: UpscaleOptions, with_layers: bool = False,
                stages: Stages | None = None) -> Plan:
        """The plan of an upscale, from the image's header alone (read here, once), with every check that needs
        no pixels: the input's and every output's pixels, what the output format holds, the ensemble's limit,
        the memory, the time limit and room in the queue (400, 413 or 503 before any work). ``with_layers``: the
        web page's answer, with the layers strength mixes; ``stages``, the header read's seconds."""
        header = self.read_header(upload, stages)
        network, output = self.plan_sizes(*header.size, options)
        encoding.check_output_size(options.output_format, output.output)
        encoding.check_profile_fits(options.output_format, header.profile_bytes, header.profile_space)
        encoding.check_colour_fits(options.output_format, header.png.colour_chunks if header.png else (),
                                   header.profile_bytes)
        # strength 0 is the Lanczos enlargement alone (the page's layers still show the model's result): the
        # network's limits, time and memory are not its to meet
        runs_network = runs_model(options.strength, with_layers)
        self.check_pixels(output, options, with_layers)
        sent = memory.sent_bytes(upload_size(upload), header.stored_profile_bytes, header.profile_bytes,
                                 options.output_format, with_layers, header.image_format, header.metadata_bytes)
        held = self.result_bytes(header, output, options, with_layers) + sent
        room = worker_room(self.settings, self.registry)
        # First what it holds whatever its tiles: a refusal for a long ICC profile says so, not that no tile fits.
        memory.check_worker_room(self.memory_budget(), room, held, *header.size, sent, header.profile_bytes)
        if runs_network:
            held += decoded_beside_cut(header, output)
            passes = self.plan_passes(network, output, held, options.ensemble)
            host_bytes = held + self.host_bytes(network, passes, options.ensemble)
        else:
            passes, host_bytes = (), held + memory.pass_bytes(header.height, header.width)
        memory.check_worker_room(self.memory_budget(), room, host_bytes, *header.size, sent, header.profile_bytes)
        seconds = self.estimate_seconds(network, passes, options.ensemble)
        cost.check_fits(seconds, self.settings.request_time_limit_s, network.name, *header.size, options.ensemble)
        self.slot.check_room()
        return Plan(upload, options, header, network, output, passes, seconds, host_bytes, with_layers)

    def read_header(self, upload: Upload, stages: Stages | None = None) -> images.Header:
        """The header of ``upload``, read by one request at a time: meanwhile its bytes and its ICC profile's copies
        are held outside every reservation, and the worker's room sets aside what one such read holds
        (``memory.header_read_bytes``). ``stages`` receives its seconds, its wait for its turn included, as
        ``header``."""
        try:
            with (stages or Stages()).time("header"), self._reading_header:
                return images.read_header(upload_bytes(upload), self.settings.max_input_pixels)
        finally:
            # The serving path's one trim: each request's thread gives back what earlier runs freed in the arenas
            # (a few MiB each, which the pinned thresholds leave there: docs/gpu.md), before its share is held.
            # Outside the lock: the read's own copies left as they were freed (``memory.pin_heap_thresholds``).
            memory.trim_heap()

    def plan_sizes(self, width: int, height: int, options: UpscaleOptions) -> tuple[Network, OutputPlan]:
        """The network an image of ``width`` x ``height`` runs with ``options``, and every size the work makes (400
        for an enlargement outside 1 to 8 times)."""
        network = self.registry.get(self._model(options), enlargement(width, height, options), options.denoise)
        return network, plan_output(width, height, options, network.scale, network_reach(network))

    def denoise_levels(self, width: int, height: int, options: UpscaleOptions) -> tuple[str, ...]:
        """The denoise levels of the network ``plan_sizes`` chooses for an image of ``width`` x ``height``, whatever
        level ``options`` ask for: those the model offers at the native scale the enlargement runs."""
        return self.registry.levels_for(self._model(options), enlargement(width, height, options))

    def _model(self, options: UpscaleOptions) -> str:
        return options.model or self.settings.default_model

    def check_pixels(self, output: OutputPlan, options: UpscaleOptions, with_layers: bool) -> None:
        """413 for an image the work would make past MAX_OUTPUT_PIXELS, or for the ensemble's pixels past
        MAX_ENSEMBLE_PIXELS (the network's only where it runs)."""
        runs_network = runs_model(options.strength, with_layers)
        check_sizes(output, self.settings.max_output_pixels, runs_network)
        if options.ensemble and runs_network:
            cost.check_ensemble_pixels(output, self.settings.max_ensemble_pixels)

    def run(self, plan: Plan, on_progress: Progress | None = None, stages: Stages | None = None) -> Result:
        """Run a prepared upscale in this worker's inference slot (503 at once when the queue is full).

        ``on_progress`` is asked while the request waits in the queue too, as (0, 0), so that a client who left
        frees its place. ``stages`` receives the seconds of each stage, the wait for the slot as ``queue``.
        """
        stages = stages or Stages()
        queued = time.perf_counter()
        while_queued = None if on_progress is None else lambda: on_progress(0, 0)
        try:
            with self.slot.hold(plan.host_bytes, while_queued, plan.seconds) as expect_end:
                stages.add("queue", time.perf_counter() - queued)
                return pipeline.run(plan, self.settings, on_progress, stages, expect_end)
        except DeviceFailed:
            self._stop_if_failed()
            raise

    def upscale(self, data: Upload, options: UpscaleOptions, on_progress: Progress | None = None,
                stages: Stages | None = None) -> Result:
        """``prepare`` then ``run``, for callers that need nothing from the plan in between."""
        return self.run(self.prepare(data, options), on_progress, stages=stages)

    def plan_passes(self, network: Network, output: OutputPlan, held: int, ensemble: bool = False
                    ) -> tuple[Pass, ...]:
        """Each pass's tiles, at the tile size this worker's memory budget gives the pass's input beside the
        ``held`` bytes the request holds whatever the pass (its result's, its upload's and its ICC profile's)."""
        averages_window = self.averages_window(network)
        return tuple(plan_pass(network, width, height, self.tile_size(network, height, width, held, ensemble),
                               averages_window)
                     for width, height in output.pass_inputs)

    def averages_window(self, network: Network) -> int:
        """The side of the windows a whole image's averages are measured in: on a GPU the largest, up to
        STATISTICS_WINDOW, that GPU_MEMORY_BUDGET_MB leaves room for beside the loaded models, as the tiles are
        sized (the start-up check holds it to MIN_RETRY_TILE at least); on the CPU, STATISTICS_WINDOW."""
        device = self.registry.choice.device
        if device != "cuda" or network.measure is None:
            return memory.STATISTICS_WINDOW
        bytes_per_pixel = self.registry.cards[network.name].averages_bytes_per_pixel(network.precision, device,
                                                                                   network.scale)
        return memory.averages_window(self.device_budget() - self.registry.device_resident, bytes_per_pixel,
                                      network.border)

    def tile_size(self, network: Network, height: int, width: int, held: int, ensemble: bool = False) -> int:
        """The tile side for an image of this size on ``network``: TILE_SIZE when set, else the largest
        that MEMORY_BUDGET_MB leaves room for beside the loaded models, the header being read, the ``held`` bytes and
        the pass's buffers (413 when none does); on the CPU a window's cost includes the ``ensemble``'s float sums,
        which sit in the same memory."""
        if self.settings.tile_size is not None:
            return self.settings.tile_size
        device = self.registry.choice.device
        bytes_per_pixel = self.registry.cards[network.name].window_bytes_per_pixel(network.precision, device)
        if device == "cuda":
            return memory.tile_for_device_budget(self.device_budget(), self.registry.device_resident, bytes_per_pixel,
                                                 network.margin, height, width, self.settings.tile_batch,
                                                 network.border)
        if ensemble:
            bytes_per_pixel += memory.ensemble_bytes_per_window_pixel(network.scale)
        request = held + memory.pass_bytes(height, width)
        header_read = memory.header_read_bytes(self.settings.max_upload_bytes)
        tile = memory.tile_for_budget(self.memory_budget(), self.registry.resident, request, bytes_per_pixel,
                                      network.margin, height, width, self.settings.tile_batch, network.border,
                                      header_read)
        memory.check_averages_fit(self.memory_budget(), self.registry.resident, request,
                                  self.averages_host_bytes(network, height, width, self.averages_window(network)),
                                  height, width, header_read)
        return tile

    def result_bytes(self, header: images.Header, output: OutputPlan, options: UpscaleOptions,
                     with_layers: bool) -> int:
        """What the request's result holds in this worker's memory until its bytes are sent."""
        width, height = output.output
        lanczos = header.alpha or options.strength < 1 or with_layers or output.output != output.pass_outputs[-1]
        return memory.result_bytes(width * height, header.pixel_bytes, lanczos, 0 < options.strength < 1,
                                   with_layers)

    def host_bytes(self, network: Network, passes: tuple[Pass, ...], ensemble: bool = False) -> int:
        """What the request's passes hold in this worker's memory beside the loaded models and the result, at
        its largest pass: its input buffers and the larger of a batch of windows (with the ``ensemble``'s sums)
        and a window of its whole-image averages, which run before the tiles, each as the network runs it, with
        its border."""
        device = self.registry.choice.device
        bytes_per_pixel = self.registry.cards[network.name].window_bytes_per_pixel(network.precision, device)
        return max(memory.pass_bytes(step.height, step.width)
                   + max(memory.window_host_bytes(memory.run_pixels(*step.window_shape, network.border), device,
                                                  bytes_per_pixel, network.scale,
                                                  min(self.settings.tile_batch, len(step.tiles)), ensemble),
                         self.averages_host_bytes(network, step.height, step.width, step.averages_window))
                   for step in passes)

    def averages_host_bytes(self, network: Network, height: int, width: int, window: int) -> int:
        """What measuring the whole-image averages of a pass over ``height`` x ``width`` in windows of ``window``
        holds in this worker's memory, before its tiles: on the CPU one window of them as run; nothing for a network
        without them, nor on a GPU, whose windows of them the card holds (``averages_window``)."""
        device = self.registry.choice.device
        if network.measure is None or device == "cuda":
            return 0
        return memory.averages_host_bytes(height, width, window,
                                          self.registry.cards[network.name].averages_bytes_per_pixel(
                                              network.precision, device, network.scale), network.border)

    def memory_budget(self) -> int:
        """This worker's MEMORY_BUDGET_MB in bytes (its default for the device where unset)."""
        return self.settings.memory_budget_bytes(self.registry.choice.device)

    def device_budget(self) -> int:
        """GPU_MEMORY_BUDGET_MB in bytes, or by default this worker's part of that share of the card's memory."""
        if self.settings.gpu_memory_budget_mb:
            return self.settings.gpu_memory_budget_mb * memory.MEBIBYTE
        choice = self.registry.choice
        return int(choice.module.memory_total(choice.device) * GPU_MEMORY_SHARE) // self.settings.workers

    def estimate_seconds(self, network: Network, passes: tuple[Pass, ...], ensemble: bool) -> float:
        """The network's seconds over every pass's tiles on this machine (0 if unmeasured)."""
        if network.throughput is None:
            return 0.0
        return cost.estimate_seconds(network.throughput, passes, ensemble, self.settings.tile_batch,
                                     network.border)
