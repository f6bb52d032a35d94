"""``sr-upscale``: upscale image files and folders on the same core and limits as the server.

    sr-upscale photo.jpg holiday/ -o upscaled/ --model srgan --format png
    sr-upscale holiday/ -o upscaled/ --server http://sr-a:5000 --server http://sr-b:5000

A file goes to ``OUTDIR/<name>``; a folder to ``OUTDIR/<folder name>/...`` with its
structure kept. Outputs that already exist are skipped unless ``--overwrite``.
Without ``--server`` the model runs in this process, with settings such as
``MAX_INPUT_PIXELS`` or ``BACKEND`` from the environment as for the server; with it,
each file is sent to a server's /model/predict (``remote.py``) and TensorFlow is never imported.
"""
from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import queue
import signal
import stat
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

    import remote
    from core.options import OptionContext, UpscaleOptions
    from core.service import Service

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's later log lines out of the progress bars

# One request runs on a CPU server's inference slot while the next waits in its queue, so the slot never idles
# between files. Fixed rather than read from the server: a Kubernetes Service URL answers from one pod at a time,
# and none of them knows how many pods share the URL (docs/web-and-cli.md, --jobs).
JOBS_PER_SERVER = 2
# The shell's exit status for a command stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130
# The exit status when the work cannot be done at all: the model does not load, or no server takes the files.
CANNOT_WORK = 2
# --format's own value, its default: each file keeps its format where the service writes it (as Real-ESRGAN's
# --ext auto does), so that a folder of JPEG photos does not become PNGs several times their size.
AUTO_FORMAT = "auto"
# How the summary counts macOS's AppleDouble files (._IMG_0001.jpg): metadata that a copy to a foreign disk leaves
# beside each file, named like images but none.
APPLE_DOUBLE = "._* (macOS metadata)"


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


@dataclass
class Summary:
    converted: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    # Files neither converted nor failed because the run stopped early, why ("interrupted" by Ctrl-C, or
    # every server down), and the exit status that says so.
    unfinished: int = 0
    stopped: str = ""
    stop_status: int = 0
    # Lines after the totals: in remote mode, what each server did and how many files were retried.
    notes: list[str] = field(default_factory=list)
    not_images: Counter[str] = field(default_factory=Counter)
    linked_folders: list[Path] = field(default_factory=list)
    not_files: list[tuple[Path, str]] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; light on purpose: --help and remote mode import no TensorFlow.

    ``args.options`` holds the upscale's options by output format (``read_options``), checked as the server
    checks them.
    """
    from config import ANSWER_MARGIN_S, load_settings
    from core.errors import InvalidInput
    from core.models.levels import DENOISE_LEVELS, all_levels
    from core.models.specs import SPECS
    from core.options import CliValue, OptionContext, add_cli_flags

    parser = argparse.ArgumentParser(
        prog="sr-upscale", description="Upscale images (4x by default, any scale from 1 to 8, or to a size) "
                                       "with the service's models, here or on running servers (--server).",
        epilog="Locally, limits and other settings come from the environment, as for the server "
               "(MAX_INPUT_PIXELS, MAX_OUTPUT_PIXELS, BACKEND, TILE_BATCH, REQUEST_TIME_LIMIT_S, ...), and "
               "--model also takes the models of MODELS_DIR.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files and folders")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder")
    context = OptionContext(tuple(SPECS), load_settings().default_model,
                            {name: all_levels(spec.keys) for name, spec in SPECS.items()})
    add_cli_flags(parser, context, {"format": CliValue(AUTO_FORMAT, f"each file's own format where it is one of "
                                                                    f"these, else {fallback_format()}")})
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--tile", type=int, metavar="PX",
                        help="local mode: tile size in input pixels (default: TILE_SIZE, or the largest MEMORY_BUDGET_MB allows)")
    remote = parser.add_argument_group("remote mode", "send each file to a running server's /model/predict")
    remote.add_argument("--server", action="append", metavar="URL",
                        help="a server, e.g. http://host:5000 or a Kubernetes Service URL; repeat for several")
    remote.add_argument("--jobs", type=int, metavar="N",
                        help=f"requests in flight (default {JOBS_PER_SERVER} per server); a Kubernetes Service URL is "
                             f"one server: give about {JOBS_PER_SERVER} per pod behind it")
    remote.add_argument("--retries", type=int, default=3, metavar="N",
                        help="tries of a file on another server after a connection error, a timeout or a 5xx (default 3)")
    timeout_s = default_timeout_s()
    remote.add_argument("--timeout", type=float, default=timeout_s, metavar="S",
                        help=f"seconds to wait for one answer (default {timeout_s:g}: a request may wait "
                             f"QUEUE_WAIT_S in a server's queue, then run up to its REQUEST_TIME_LIMIT_S, at their "
                             f"defaults, and {ANSWER_MARGIN_S} s more)")
    remote.add_argument("--max-wait", type=float, default=600, metavar="S",
                        help="seconds a file may spend waiting for busy servers (503 Retry-After) (default 600)")
    args = parser.parse_args(argv)
    if args.server:
        # A server may offer its own models (MODELS_DIR) and default model, and its models their own denoise
        # levels: what depends on the model is checked against each server's metadata (run_remote).
        models = (*context.models, args.model) if args.model else context.models
        context = replace(context, models=models, denoise_levels=dict.fromkeys(models, DENOISE_LEVELS))
    else:
        try:
            context = local_context(context)
        except ValueError as error:  # MODELS_DIR or DEFAULT_MODEL, which the server would not start with
            parser.error(str(error))
    try:
        args.options = read_options(args, context)
    except InvalidInput as error:
        parser.error(error.message)
    for problem in _option_problems(args):
        parser.error(problem)
    return args


def local_context(context: OptionContext) -> OptionContext:
    """``context`` with MODELS_DIR's models too, as the local service offers them (ValueError, the server's
    reason, where it would not start): an operator's model dropped there is accepted, or fails to load with why."""
    from config import load_settings
    from core.models.levels import all_levels

    settings = load_settings()
    cards = {}
    if settings.models_dir is not None:  # the registry's imports (numpy, Pillow) only where there is a folder to read
        from core.models.registry import models_dir_cards

        cards = models_dir_cards(settings)
    models = (*context.models, *cards)
    if context.default_model not in models:
        raise ValueError(f"DEFAULT_MODEL {context.default_model!r} is not among the models offered {models}")
    return replace(context, models=models, denoise_levels={
        **context.denoise_levels, **{name: all_levels(card.keys) for name, card in cards.items()}})


def read_options(args: argparse.Namespace, context: OptionContext) -> dict[str, UpscaleOptions]:
    """The options of each output format the run writes, as the server reads them; InvalidInput where it would
    refuse them. With --format auto, every format a file may keep, with --quality for jpeg and webp only."""
    from core.formats import OUTPUT_FORMATS
    from core.options import QUALITY_FORMATS, cli_values, parse_options

    values = cli_values(args)
    if not keeps_formats(args):
        options = parse_options(values, context)
        return {options.output_format: options}
    by_format = {}
    for output_format in sorted(OUTPUT_FORMATS, key=lambda name: name not in QUALITY_FORMATS):  # quality's problems first
        sent = {**values, "format": output_format}
        if output_format not in QUALITY_FORMATS:
            sent["quality"] = None  # lossless: quality does not apply
        by_format[output_format] = parse_options(sent, context)
    return by_format


def keeps_formats(args: argparse.Namespace) -> bool:
    """Whether each file keeps its own format (--format auto, the default)."""
    return (args.format or AUTO_FORMAT).strip().lower() == AUTO_FORMAT


def fallback_format() -> str:
    """What --format auto writes a file whose format the service does not write (gif, bmp, tiff) in: the
    service's default format."""
    from core.options import BY_NAME

    return str(BY_NAME["format"].default)


def default_timeout_s() -> float:
    """The longest a server at its default settings takes to answer: a client's --timeout."""
    from config import Settings

    return Settings.model_construct().longest_answer_s  # the defaults, not this machine's environment


def _option_problems(args: argparse.Namespace) -> Iterator[str]:
    if args.output.exists() and not args.output.is_dir():
        # Each file would fail alike, after its upscale, when its folder cannot be made.
        yield f"the output folder {args.output} is a file"
    if args.tile is not None and args.tile < 16:
        yield f"--tile must be at least 16 pixels, not {args.tile}"
    if args.server and args.tile is not None:
        yield "--tile applies to local mode only: with --server, each server's TILE_SIZE decides"
    if args.jobs is not None and args.jobs < 1:
        yield f"--jobs must be at least 1, not {args.jobs}"
    if args.retries < 0:
        yield f"--retries must be 0 or more, not {args.retries}"
    if args.timeout <= 0 or args.max_wait < 0:
        yield "--timeout must be positive and --max-wait 0 or more"
    yield from _shared_output_folders(args.inputs, args.output)


def _shared_output_folders(inputs: Iterable[Path], output: Path) -> Iterator[str]:
    """Input folders that would write into one output folder: each would mix its files with the other's, and
    take the other's outputs for its own done. A refusal, rather than a made-up name for the second folder, keeps
    each folder's output where the docs say, whatever else the command line holds."""
    first: dict[Path, Path] = {}
    for folder in filter(Path.is_dir, inputs):
        root = folder_output(folder, output)
        if root not in first:
            first[root] = folder
        elif first[root].resolve() == folder.resolve():
            yield f"{first[root]} and {folder} are the same folder: give it once"
        else:
            yield f"the input folders {first[root]} and {folder} would both be written to {root}: give them " \
                  f"separate runs, each with its own -o"


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    # The inputs that cannot be used, with why.
    problems: list[tuple[Path, str]] = field(default_factory=list)
    # Files in the input folders left out by their names, counted by suffix (or as APPLE_DOUBLE): a folder of
    # photos may hold HEIC or raw files that the user should hear were not converted.
    not_images: Counter[str] = field(default_factory=Counter)
    # Links to folders inside the input folders, not followed: one may lead back up (a loop) or to files
    # converted already through another path.
    linked_folders: list[Path] = field(default_factory=list)
    # Entries of the input folders that are neither files nor folders, with what each is (``not_a_file``).
    not_files: list[tuple[Path, str]] = field(default_factory=list)


def plan_jobs(inputs: Iterable[Path], output: Path, output_format: str) -> Plan:
    """Every file to convert with its target, the inputs that cannot be used, and the files left out.

    ``output_format`` is the format of every output, or AUTO_FORMAT for each file its own (``target_name``)."""
    plan = Plan()
    for item in inputs:
        if item.is_dir() and item.resolve() == output.resolve():
            plan.problems.append((item, "is the output folder too: the outputs would be mixed with the inputs; "
                                        "choose another output folder"))
        elif item.is_dir():
            root = folder_output(item, output)
            plan.jobs += [Job(path, target_name(root / path.relative_to(item), output_format))
                          for path in _images_in(item, output, plan)]
        elif item.is_file():
            plan.jobs.append(Job(item, target_name(output / item.name, output_format)))
        elif item.is_symlink() or item.exists():
            kind = not_a_file(item)
            plan.problems.append((item, f"is a {kind}" if kind == BROKEN_LINK else f"is a {kind}, not a file"))
        else:
            plan.problems.append((item, "no such file or folder"))
    plan.jobs = _without_clashes(_not_onto_inputs(plan.jobs, plan.problems), plan.problems)
    return plan


def folder_output(folder: Path, output: Path) -> Path:
    """Where an input folder's outputs go: a folder of its own name in the output folder."""
    return output / folder.resolve().name


def target_name(path: Path, output_format: str) -> Path:
    """The output file of the input at ``path`` (moved to the output folder): with AUTO_FORMAT, the same name
    where the service writes the format its name says (IMG_1.JPG stays IMG_1.JPG), else a .png."""
    if output_format == AUTO_FORMAT:
        return path if written_format(path) else path.with_suffix(output_suffix(fallback_format()))
    return path.with_suffix(output_suffix(output_format))


def written_format(path: Path) -> str | None:
    """The output format a file of this name holds (.jpg, .JPEG, .jfif: jpeg), None for one the service does not
    write (.gif, .tif, .bmp): an output's name says its format, as a folder's file names say which are images."""
    from PIL import Image

    from core.formats import OUTPUT_FORMATS

    pillow_format = Image.registered_extensions().get(path.suffix.lower())
    return next((name for name, (pillow_name, _) in OUTPUT_FORMATS.items() if pillow_name == pillow_format), None)


def _images_in(folder: Path, output: Path, plan: Plan) -> Iterator[Path]:
    """The folder's images, counting the other files in ``plan.not_images`` and listing the links to folders,
    which are not followed, in ``plan.linked_folders``, the entries that are not files in ``plan.not_files``
    and the folders that cannot be read in ``plan.problems``.

    With the output folder inside this one (``-o photos/big``), the files under it are left out: the next
    run of ``sr-upscale photos`` would take the last run's outputs for inputs and upscale them again. An
    output folder above this one holds none of its files' outputs but at their own paths (refused later).
    """
    suffixes = image_suffixes()
    resolved, outputs = folder.resolve(), output.resolve()
    holds_outputs = outputs.is_relative_to(resolved)
    for path in _entries(folder, plan.problems):
        if holds_outputs and (resolved / path.relative_to(folder)).is_relative_to(outputs):
            continue
        if path.is_symlink() and path.is_dir():
            plan.linked_folders.append(path)
        elif path.is_dir():
            continue
        elif not path.is_file():
            plan.not_files.append((path, not_a_file(path)))
        elif path.name.startswith("._"):
            plan.not_images[APPLE_DOUBLE] += 1
        elif path.suffix.lower() in suffixes:
            yield path
        else:
            plan.not_images[path.suffix.lower() or "(no suffix)"] += 1


def _entries(folder: Path, problems: list[tuple[Path, str]]) -> list[Path]:
    """Every entry under ``folder``, sorted, without going into links to folders; a folder that cannot be read
    goes to ``problems``, where pathlib's rglob passed over it unsaid."""
    found: list[Path] = []

    def unreadable(error: OSError) -> None:
        problems.append((Path(error.filename), f"is a folder that cannot be read ({error.strerror}): none of its "
                                               f"files is converted"))

    for top, folders, files in os.walk(folder, onerror=unreadable):
        found += [Path(top, name) for name in (*folders, *files)]
    return sorted(found)


BROKEN_LINK = "broken link"
SPECIAL_FILES = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                 (stat.S_ISBLK, "block device"))


def not_a_file(path: Path) -> str:
    """What ``path``, neither a file nor a folder, is (a FIFO, a broken link...), from its stat alone: opening a
    FIFO would wait for a writer that never comes."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        return BROKEN_LINK if error.errno == errno.ENOENT else f"link that cannot be followed ({error.strerror})"
    return next((kind for is_kind, kind in SPECIAL_FILES if is_kind(mode)), "special file")


def image_suffixes() -> set[str]:
    """The file name suffixes of the accepted formats, as Pillow registers them (.jpg, .jpeg, .jfif, ... for JPEG).

    A suffix only picks the files of a folder: the server decides a file's format from its first bytes."""
    from PIL import Image

    from core.containers import ACCEPTED_FORMATS

    return {suffix for suffix, image_format in Image.registered_extensions().items() if image_format in ACCEPTED_FORMATS}


def output_suffix(output_format: str) -> str:
    """The output file's suffix: the format's name, but for JPEG's usual .jpg."""
    return ".jpg" if output_format == "jpeg" else f".{output_format}"


def _without_clashes(jobs: list[Job], problems: list[tuple[Path, str]]) -> list[Job]:
    """``a.jpg`` and ``a.png`` would both become ``a.png``: the first wins, the others go to ``problems``."""
    first: dict[Path, Path] = {}
    kept = []
    for job in jobs:
        if job.target in first:
            problems.append((job.source, f"same output {job.target} as {first[job.target]}"))
        else:
            first[job.target] = job.source
            kept.append(job)
    return kept


def load_service(model: str, tile: int | None) -> Service:
    """The server's service with only the chosen model loaded, built-in or MODELS_DIR's."""
    from config import load_settings
    from core import backends
    from core.service import Service

    from core.models.specs import SPECS

    # A MODELS_DIR model is offered beside MODELS, which stays the environment's.
    overrides: dict[str, object] = {"default_model": model, **({"models": model} if model in SPECS else {})}
    if tile is not None:
        overrides["tile_size"] = tile
    settings = load_settings(**overrides)
    if backends.choose(settings).backend in backends.KERAS_BACKENDS:
        _import_tensorflow_quietly()
    service = Service.create(settings, only=model)
    service.load()  # as the server loads: a model the GPU budget leaves no room for fails here, with the reason
    return service


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 captured, shown only if the import fails.

    Its C++ start-up lines (absl's "All log messages before absl::InitializeLog()", oneDNN's
    notice) are written before TF_CPP_MIN_LOG_LEVEL is read and would land in the progress bars.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def read_image(path: Path, max_upload_bytes: int) -> bytes:
    """The file's bytes, or the server's 413 for a file over MAX_UPLOAD_BYTES, of which no more than
    the limit is read: a stray 4 GB file in a folder must not be held in memory, or sent, to be refused."""
    with path.open("rb") as file:
        data = file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            from core.errors import UploadTooLarge

            raise UploadTooLarge(f"the file is too large: the limit is {max_upload_bytes} bytes (MAX_UPLOAD_BYTES) "
                                 f"and the file is {os.fstat(file.fileno()).st_size} bytes")
    return data


class Outputs:
    """Writes each output beside its target first and renames it, so a half-written file never counts as done;
    ``abandon`` removes the files being written when the run stops. The threads writing them are daemons, which
    end with the process wherever they are: without it, Ctrl-C during an answer left its partial file behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writing: set[Path] = set()
        self._abandoned = False

    def write(self, target: Path, pieces: Iterable[bytes]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            with self._lock:
                self._check_going_on()
                file = partial.open("wb")
                self._writing.add(partial)
            with file:
                for piece in pieces:
                    file.write(piece)
            with self._lock:  # renamed, or removed by abandon, never both
                self._check_going_on()
                partial.replace(target)
        except BaseException as error:  # a full disk, a broken answer or Ctrl-C: no half file left behind
            partial.unlink(missing_ok=True)
            if isinstance(error, OSError) and error.errno in OUTPUT_GONE:
                raise CannotWrite(f"cannot write {target}: {error.strerror}") from error
            raise
        finally:
            with self._lock:
                self._writing.discard(partial)

    def abandon(self) -> None:
        """Remove the files being written, and write no more."""
        with self._lock:
            self._abandoned = True
            for partial in self._writing:
                partial.unlink(missing_ok=True)

    def _check_going_on(self) -> None:
        if self._abandoned:
            raise RunStopped("the run stopped")


class RunStopped(Exception):
    """An output written after its run stopped."""


class CannotWrite(Exception):
    """The output folder takes no more files (full, over quota, read-only): every file left would be
    upscaled for nothing, locally or on the servers, so the run stops."""


OUTPUT_GONE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class TileBar:
    """The per-tile progress bar, shown only for images with more than one batch of tiles."""

    def __init__(self, name: str, batch: int) -> None:
        self._name = name
        self._batch = batch
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None and total > self._batch:
            self._bar = tqdm(total=total, desc=f"  {self._name}", unit="tile", leave=False, position=1)
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run(args: argparse.Namespace) -> int:
    chosen = AUTO_FORMAT if keeps_formats(args) else next(iter(args.options))
    plan = plan_jobs(args.inputs, args.output, chosen)
    todo, done = split_done(plan.jobs, args.overwrite)
    summary = Summary(skipped=[job.source for job in done], failed=plan.problems,
                      not_images=plan.not_images, linked_folders=plan.linked_folders, not_files=plan.not_files)
    if args.quality and todo:
        _note_lossless(todo)
    if todo:
        status = run_remote(args, todo, summary) if args.server else run_local(args, todo, summary)
        if status:
            return status
    report(summary, args.output)
    if summary.unfinished:
        return summary.stop_status
    return 1 if summary.failed else 0


def _note_lossless(todo: list[Job]) -> None:
    """With --format auto, --quality applies to the files written as jpeg or webp: say so of the others."""
    from core.options import QUALITY_FORMATS

    written = Counter(written_format(job.target) for job in todo)
    lossless = [f"{count} as {output_format}" for output_format, count in written.most_common()
                if output_format not in QUALITY_FORMATS]
    if lossless:
        kinds = ", ".join(lossless)
        print(f"sr-upscale: --quality applies to the files written as {' or '.join(QUALITY_FORMATS)}; not to the "
              f"lossless ones ({kinds})", file=sys.stderr)


def options_of(job: Job, options: dict[str, UpscaleOptions]) -> UpscaleOptions:
    """The options ``job`` is upscaled with: those of the format its output's name says."""
    return options[written_format(job.target)]


def split_done(jobs: list[Job], overwrite: bool) -> tuple[list[Job], list[Job]]:
    """The jobs to do and those whose output exists (none with ``overwrite``), in one pass over the jobs."""
    todo: list[Job] = []
    done: list[Job] = []
    for job in jobs:
        (todo if overwrite or not job.target.exists() else done).append(job)
    return todo, done


def _not_onto_inputs(jobs: list[Job], problems: list[tuple[Path, str]]) -> list[Job]:
    """The jobs but those whose output would be an input file (``sr-upscale photo.png -o .``), which go to
    ``problems``: such an output is neither done already nor to be overwritten with --overwrite."""
    targets = [_file_id(job.target) for job in jobs]
    inputs = {_file_id(job.source) for job in jobs} if any(targets) else set()
    kept = []
    for job, target in zip(jobs, targets):
        if target is not None and target in inputs:
            problems.append((job.source, f"its output {job.target} is an input file: choose an output folder "
                                         f"that holds no input"))
        else:
            kept.append(job)
    return kept


def _file_id(path: Path) -> tuple[int, int] | None:
    """The file's device and inode, which a link or another spelling of its path shares; None if it is not there."""
    try:
        found = path.stat()
    except OSError:  # not there yet (or not reachable: writing it says why)
        return None
    return found.st_dev, found.st_ino


def run_local(args: argparse.Namespace, todo: list[Job], summary: Summary) -> int:
    """Upscale in this process; CANNOT_WORK when the model cannot be loaded."""
    _show_warnings_without_tracebacks()
    options = next(iter(args.options.values()))  # the model and size, the same in every format's
    model = options.model
    service = load_service(model, args.tile)
    state = service.registry.states()[model]
    if state != "ready":
        why = service.registry.failure(model) or state
        print(f"sr-upscale: model {model} could not be loaded: {why}", file=sys.stderr)
        return CANNOT_WORK

    outputs = Outputs()

    def convert(job: Job) -> None:
        tiles = TileBar(job.source.name, service.settings.tile_batch)
        try:
            data = read_image(job.source, service.settings.max_upload_bytes)
            plan = service.prepare(data, options_of(job, args.options))
            outputs.write(job.target, [service.run(plan, tiles).data])
        finally:
            tiles.close()

    convert_all(todo, convert, f"{model} {size_label(options)}", summary, jobs=1, outputs=outputs,
                stop_on=CannotWrite)
    return 0


def run_remote(args: argparse.Namespace, todo: list[Job], summary: Summary) -> int:
    """Send every file to the servers; CANNOT_WORK when none of them can take the work."""
    import remote
    from core.options import form_fields

    urls = list(dict.fromkeys(remote.server_url(text) for text in args.server))
    # Without --model, each server's own default model (probe asks it which).
    model = next(iter(args.options.values())).model if args.model else None
    skipped, upload_limits = {}, {}
    for url in urls:
        offer, remark = remote.probe(url, model)  # why not, or a note on the offer
        taken, problem = (None, remark) if offer is None else server_options(args, offer)
        if taken is None:
            skipped[url] = problem
            print(f"sr-upscale: skipping server {url}: {problem}", file=sys.stderr)
            continue
        if remark:
            print(f"sr-upscale: server {url}: {remark}", file=sys.stderr)
        options, model = taken, offer.model  # the same on every server: each one after the first is asked for it
        upload_limits[url] = offer.max_upload_bytes
    if not upload_limits:
        print("sr-upscale: no server can take the work", file=sys.stderr)
        return CANNOT_WORK
    jobs = args.jobs or JOBS_PER_SERVER * len(upload_limits)
    cluster = remote.Cluster(list(upload_limits), jobs, args.retries, args.timeout, args.max_wait, upload_limits)
    # A file some server takes is sent, to one that takes it; one that every server would refuse is not read.
    max_upload_bytes = max(upload_limits.values())
    outputs = Outputs()

    def convert(job: Job) -> None:
        data = read_image(job.source, max_upload_bytes)
        cluster.upscale(data, job.source.name, form_fields(options_of(job, options)),
                        lambda answer: outputs.write(job.target, answer))

    convert_all(todo, convert, f"{model} {size_label(next(iter(options.values())))}", summary, jobs, outputs,
                stop_on=(remote.ServersDown, CannotWrite))
    summary.notes = cluster.report() + [f"  {url}: skipped at start: {problem}" for url, problem in skipped.items()]
    return 0


def server_options(args: argparse.Namespace,
                   offer: remote.Offer) -> tuple[dict[str, UpscaleOptions] | None, str | None]:
    """The options of the command line by output format as the server of ``offer`` reads them (its default
    model, its models' denoise levels), or None and the server's message for a value it refuses."""
    from core.errors import InvalidInput
    from core.options import OptionContext

    context = OptionContext(offer.models, offer.model, offer.denoise_levels)
    try:
        return read_options(args, context), None
    except InvalidInput as error:
        return None, error.message


def convert_all(todo: list[Job], convert: Callable[[Job], None], title: str, summary: Summary, jobs: int,
                outputs: Outputs, stop_on: type[Exception] | tuple[type[Exception], ...] = ()) -> None:
    """Run ``convert`` on every job, ``jobs`` at a time, under the files' progress bar; failures are recorded.

    Ctrl-C, or a ``stop_on`` error from any job, stops at once, with the files not finished counted in
    ``summary.unfinished`` and those being written (to ``outputs``) removed: what is done is kept, and
    running the same command again does the rest.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    with tqdm(total=len(todo), desc=title, unit="file", position=0) as files:
        try:
            for job, error in _outcomes(todo, convert, jobs):
                if isinstance(error, stop_on):
                    outputs.abandon()
                    summary.unfinished = len(todo) - files.n
                    summary.stopped, summary.stop_status = f"stopped: {error}", CANNOT_WORK
                    break
                if error is None:
                    summary.converted.append(job.source)
                else:
                    summary.failed.append((job.source, _reason(error)))
                    files.write(f"failed: {job.source}: {summary.failed[-1][1]}")
                files.update()
        except KeyboardInterrupt:
            outputs.abandon()
            summary.unfinished = len(todo) - files.n
            summary.stopped, summary.stop_status = "interrupted", INTERRUPTED
    summary.seconds = time.perf_counter() - started


def _outcomes(todo: list[Job], convert: Callable[[Job], None], jobs: int) -> Iterator[tuple[Job, Exception | None]]:
    """Each job with the exception it ended with (None when done), in the order they finish.

    The threads are daemons: after Ctrl-C the process ends without waiting for the answers in flight
    (up to --timeout each, and their retries); their files are not written, and are done on the next run.
    """
    if jobs == 1:  # in this thread: the local model and its tile bar need no threads
        for job in todo:
            yield job, _attempt(convert, job)
        return
    waiting: queue.SimpleQueue[Job] = queue.SimpleQueue()
    finished: queue.SimpleQueue[tuple[Job, Exception | None]] = queue.SimpleQueue()
    stopping = threading.Event()
    for job in todo:
        waiting.put(job)

    def work() -> None:
        while not stopping.is_set():
            try:
                job = waiting.get_nowait()
            except queue.Empty:
                return
            finished.put((job, _attempt(convert, job)))

    for _ in range(min(jobs, len(todo))):
        threading.Thread(target=work, name="upload", daemon=True).start()
    try:
        for _ in todo:
            yield finished.get()
    finally:
        stopping.set()  # no thread takes another file


def _attempt(convert: Callable[[Job], None], job: Job) -> Exception | None:
    try:
        convert(job)
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the others
        return error
    return None


def size_label(options: UpscaleOptions) -> str:
    """The asked size for the progress bar: x4, x1.5, 1920 wide, 1920x1080 cover."""
    from core.options import DEFAULT_SCALE

    if options.width is not None and options.height is not None:
        return f"{options.width}x{options.height} {options.fit}"
    if options.width is not None:
        return f"{options.width} wide"
    if options.height is not None:
        return f"{options.height} high"
    return f"x{DEFAULT_SCALE if options.scale is None else options.scale:g}"


def _reason(error: Exception) -> str:
    from core.errors import ServiceError
    from remote import FileFailed

    if isinstance(error, ServiceError):
        return error.message
    if isinstance(error, FileFailed):  # already worded for the user
        return str(error)
    return f"{type(error).__name__}: {error}"


class _MessageOnly(logging.Formatter):
    """A log record's message without its traceback: the user gets the reason, not the call stack."""

    def formatException(self, ei: tuple[type[BaseException], BaseException, TracebackType | None]) -> str:  # noqa: N802 - logging's name
        return ""


def _show_warnings_without_tracebacks() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_MessageOnly("sr-upscale: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def report(summary: Summary, output: Path) -> None:
    if summary.unfinished:
        print(f"{summary.stopped}: {summary.unfinished} files not done; the same command does them", file=sys.stderr)
    print(f"converted {len(summary.converted)} in {summary.seconds:.1f} s, skipped {len(summary.skipped)} already done"
          f"{' (use --overwrite to redo)' if summary.skipped else ''}, failed {len(summary.failed)}; output in {output}")
    if summary.not_images:
        kinds = ", ".join(f"{suffix} {count}" for suffix, count in summary.not_images.most_common())
        print(f"left out {summary.not_images.total()} files of the folders not named as an accepted image: {kinds}")
    if summary.linked_folders:
        print(f"left out {len(summary.linked_folders)} linked folders, not followed (one given as an input is "
              f"converted): {', '.join(map(str, summary.linked_folders))}")
    if summary.not_files:
        entries = ", ".join(f"{path} ({kind})" for path, kind in summary.not_files)
        print(f"left out {len(summary.not_files)} entries of the folders that are not files: {entries}")
    for line in summary.notes:
        print(line)
    for source, reason in summary.failed:
        print(f"FAILED {source}: {reason}", file=sys.stderr)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """A stop (``timeout``, a job's end, ``kill``) ends the run as Ctrl-C does: partial files removed and a summary,
    where SIGTERM's default action ended the process where it was."""
    signal.signal(signal.SIGTERM, _interrupt)


def _default_sigterm_in_child() -> None:
    """A process a library forks gets SIGTERM's default back, so that its ``terminate()`` ends the child: OpenVINO's
    telemetry (now kept from loading, core/backends) forked at each model conversion, from its threads, and a child
    stuck on a lock another thread held at the fork ran only our handler, which sets a flag for Python code the
    child never reached, and outlived the run."""
    if signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            # A file name that is not UTF-8 on disk is printed escaped: with a strict terminal encoding, its
            # failure line ended the run with a traceback and no summary.
            stream.reconfigure(errors="backslashreplace")
    stop_on_sigterm()
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:  # before the files' loop, which reports what it did: nothing is done yet
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
