"""What a request will do, known from its image's header before any work: ``Service.prepare`` makes it once,
every check that needs no pixels runs on it, and the pipeline runs it (core/pipeline.py).

The plan holds the header (read once), the network, the output's sizes, and each pass's tiles with the
network's alignment: the time estimate, the page's tile count and the tiled run all read these same tiles.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import OutputTooLarge
from core.geometry import OutputPlan, Reach
from core.images import Header
from core.memory import STATISTICS_WINDOW
from core.models.runtime import Network
from core.options import UpscaleOptions
from core.tiling import Tile, plan_tiles
from core.upload import Upload


@dataclass(frozen=True)
class Pass:
    """One run of the network over the part of the picture the output needs (for cover, less than the whole): its
    input size, the tiles it is cut into and, for a network with whole-image averages, the side of the windows
    they are measured in (core/memory.averages_window)."""

    width: int
    height: int
    tile: int
    tiles: tuple[Tile, ...]
    averages_window: int = STATISTICS_WINDOW

    @property
    def window_shape(self) -> tuple[int, int]:
        """(height, width) of each of the pass's windows (the tiler gives them all one shape)."""
        return self.tiles[0].window_shape

    @property
    def window_pixels(self) -> int:
        """Pixels of each of the pass's windows."""
        height, width = self.window_shape
        return height * width


def network_reach(network: Network) -> Reach | None:
    """What a pass needs around the part of the image it makes: the network's margin, cut where its tiles may
    start; None for a network whose averages are the whole image's (Real-CUGAN's), which a cut would change."""
    if network.measure is not None:
        return None
    return Reach(network.margin, network.alignment)


def plan_pass(network: Network, width: int, height: int, tile: int, averages_window: int = STATISTICS_WINDOW) -> Pass:
    """The tiles of a ``width`` x ``height`` input to ``network``, each window aligned as the network needs, and
    the side of its averages' windows."""
    return Pass(width, height, tile, tuple(plan_tiles(height, width, tile, network.margin, network.alignment)),
                averages_window)


@dataclass(frozen=True)
class Plan:
    # Read whole only once the request runs, inside its reservation: in the queue it waits in its spool file.
    upload: Upload = field(repr=False)
    options: UpscaleOptions
    header: Header
    network: Network
    output: OutputPlan
    passes: tuple[Pass, ...]
    # The network's seconds on this machine for every pass (0 where its speed is not measured).
    seconds: float
    # What the request holds in the worker's memory beside the loaded models, at its largest pass: its buffers
    # and a batch of windows. Its inference slot reserves it (core/admission.py).
    host_bytes: int
    # The web page's answer: the model's output and the Lanczos enlargement too, each as PNG bytes.
    with_layers: bool = False

    @property
    def tile_count(self) -> int:
        """Tiles of every pass together: the total the progress counts to (none where strength 0 runs no
        network)."""
        return sum(len(step.tiles) for step in self.passes)


def check_sizes(output: OutputPlan, max_output_pixels: int, runs_network: bool = True) -> None:
    """Every image the work makes (each pass's result where the network runs, and the output) must fit
    MAX_OUTPUT_PIXELS. For cover, a pass's result is that of the part of its input the box needs: the whole
    enlargement is never made."""
    made = [(_pass_result(output, size), made) for size, made in zip(output.pass_inputs, output.pass_outputs)
            if runs_network]
    made.append(("the output", output.output))
    for what, (width, height) in made:
        if width * height > max_output_pixels:
            raise OutputTooLarge(f"{what} would be {width}x{height} = {width * height} pixels; the limit is "
                                 f"{max_output_pixels} output pixels (MAX_OUTPUT_PIXELS; "
                                 f"input {output.input[0]}x{output.input[1]})")


def _pass_result(output: OutputPlan, size: tuple[int, int]) -> str:
    if not output.is_cut:
        return f"the model's {output.native_scale}x result"
    return (f"the model's {output.native_scale}x result of the {size[0]}x{size[1]} part of its input that the "
            "{}x{} box needs".format(*output.output))
