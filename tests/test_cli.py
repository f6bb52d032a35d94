"""``sr-upscale`` on a small folder, as a user runs it: a subprocess with the real srgan model."""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli import (AUTO_FORMAT, CANNOT_WORK, CannotWrite, Job, Outputs, Summary, convert_all, image_suffixes, main,
                 output_suffix, parse_args, plan_jobs, report, split_done, stop_on_sigterm, written_format)
from config import MEBIBYTE, Settings
from core.formats import OUTPUT_FORMATS
from harness.run_cli import sr_upscale
from tests.conftest import ROOT, SAMPLES


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    """photos/ with a sub-folder, a corrupt image and a text file; camera.png beside it."""
    photos = tmp_path / "in" / "photos"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(SAMPLES / "chelsea.png", photos / "chelsea.png")
    shutil.copy(SAMPLES / "rocket.png", photos / "sub" / "rocket.png")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (photos / "notes.txt").write_text("not an image, ignored")
    shutil.copy(SAMPLES / "camera.png", tmp_path / "in" / "camera.png")
    return tmp_path / "in"


@pytest.mark.slow
def test_folder_keeps_structure_reports_failures_and_skips_what_is_done(inputs, tmp_path):
    out = tmp_path / "out"
    first = sr_upscale(inputs / "photos", inputs / "camera.png", inputs / "missing.png", "-o", out, "--tile", 64)

    assert first.returncode == 1, first.stderr
    assert size_of(out / "photos" / "chelsea.png") == (112 * 4, 75 * 4)
    assert size_of(out / "photos" / "sub" / "rocket.png") == (80 * 4, 120 * 4)
    assert size_of(out / "camera.png") == (96 * 4, 96 * 4)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "camera.png", "photos/chelsea.png", "photos/sub/rocket.png"]
    assert "converted 3" in first.stdout and "failed 2" in first.stdout
    failures = dict(line.removeprefix("FAILED ").split(": ", 1) for line in first.stderr.splitlines()
                    if line.startswith("FAILED "))
    assert "image" in failures[str(inputs / "photos" / "broken.png")]  # the decoder's reason, e.g. truncated
    assert failures[str(inputs / "missing.png")] == "no such file or folder"

    done_at = (out / "camera.png").stat().st_mtime_ns
    skipped = sr_upscale(inputs / "camera.png", "-o", out)
    assert skipped.returncode == 0, skipped.stderr
    assert "converted 0" in skipped.stdout and "skipped 1 already done" in skipped.stdout
    assert (out / "camera.png").stat().st_mtime_ns == done_at

    redone = sr_upscale(inputs / "camera.png", "-o", out, "--overwrite", "--scale", 2)
    assert redone.returncode == 0, redone.stderr
    assert size_of(out / "camera.png") == (96 * 2, 96 * 2)


@pytest.mark.slow
def test_format_quality_and_model_options(inputs, tmp_path):
    result = sr_upscale(inputs / "camera.png", "-o", tmp_path / "out", "--model", "srresnet",
                        "--format", "jpeg", "--quality", 80)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "out" / "camera.jpg") as image:
        assert image.format == "JPEG" and image.size == (384, 384)
    assert "srresnet x4" in result.stderr  # the progress bar names the model


@pytest.mark.slow
def test_a_model_that_cannot_load_gives_one_clean_message_without_tensorflow_noise(inputs, tmp_path):
    result = sr_upscale(inputs / "camera.png", "-o", tmp_path / "out", "--model", "max-srgan",
                        MAX_SRGAN_CHECKPOINT=str(tmp_path / "no-such-checkpoint"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"sr-upscale: model max-srgan could not be loaded: no readable TensorFlow checkpoint at {tmp_path}" in result.stderr
    # TensorFlow was imported (the checkpoint reader is TensorFlow's): its C++ start-up lines stay out
    assert "absl::InitializeLog" not in result.stderr and "oneDNN" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_model_the_gpu_budget_leaves_no_room_for_fails_to_load_as_on_the_server(inputs, tmp_path, monkeypatch,
                                                                                   capsys):
    """The local mode loaded the models without the server's check of the GPU budget: each file then failed with a
    413 blaming its size. Now the model fails to load with the reason, as the server's /ready says it."""
    from core.models.registry import ModelRegistry
    from core.service import Service

    real_load = ModelRegistry.load_all

    def load_then_find_a_gpu(registry, on_loaded=None):
        real_load(registry, on_loaded)  # on the CPU; the budget is then checked as on a GPU whose models hold 100 MiB
        monkeypatch.setattr(registry, "choice", dataclasses.replace(registry.choice, device="cuda"))
        monkeypatch.setattr(registry, "_device_resident", 100 * MEBIBYTE)

    monkeypatch.setattr(ModelRegistry, "load_all", load_then_find_a_gpu)
    monkeypatch.setattr(Service, "run", lambda *args, **kwargs: pytest.fail("the model ran"))
    monkeypatch.setenv("BACKEND", "pytorch")
    monkeypatch.setenv("GPU_MEMORY_BUDGET_MB", "100")
    assert main([str(inputs / "camera.png"), "-o", str(tmp_path / "out"), "--model", "anime"]) == 2
    assert "sr-upscale: model anime could not be loaded: GPU_MEMORY_BUDGET_MB=100 leaves no room for its smallest " \
           "window" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_file_over_max_upload_bytes_is_refused_as_the_server_refuses_it(inputs, tmp_path):
    """Locally too, MAX_UPLOAD_BYTES bounds what is read of a file: the server's limits, not a laxer copy."""
    rocket = inputs / "photos" / "sub" / "rocket.png"
    limit = rocket.stat().st_size - 1
    assert (inputs / "camera.png").stat().st_size <= limit
    result = sr_upscale(inputs / "camera.png", rocket, "-o", tmp_path / "out", MAX_UPLOAD_BYTES=str(limit))
    assert result.returncode == 1, result.stderr
    assert f"FAILED {rocket}: the file is too large: the limit is {limit} bytes (MAX_UPLOAD_BYTES) and the file " \
           f"is {limit + 1} bytes" in result.stderr.splitlines()
    assert "converted 1" in result.stdout and not (tmp_path / "out" / "rocket.png").exists()


def test_help_imports_no_tensorflow():
    probe = ("import sys, cli\n"
             "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(name for name in sys.modules if name.split('.')[0] in ('tensorflow', 'keras', 'openvino')))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--server URL" in result.stdout and "OUTDIR" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "sr-upscale"
    assert script.exists(), "run `make setup` (pip install -e .) to install the sr-upscale command"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OUTDIR" in result.stdout


def test_plan_keeps_folder_structure_and_reports_clashing_names(tmp_path):
    folder = tmp_path / "shots"
    (folder / "day1").mkdir(parents=True)
    for name in ("day1/a.jpg", "day1/a.png", "b.webp", "readme.md"):
        (folder / name).write_bytes(b"x")
    plan = plan_jobs([folder], tmp_path / "out", "png")
    assert [(j.source.relative_to(folder).as_posix(), j.target.relative_to(tmp_path).as_posix()) for j in plan.jobs] == [
        ("b.webp", "out/shots/b.png"), ("day1/a.jpg", "out/shots/day1/a.png")]
    assert plan.problems == [(folder / "day1" / "a.png",
                              f"same output {tmp_path / 'out/shots/day1/a.png'} as {folder / 'day1/a.jpg'}")]
    assert plan.not_images == {".md": 1}


def test_outputs_inside_an_input_folder_are_never_taken_for_inputs(tmp_path):
    """``sr-upscale photos -o photos/big`` run again (to resume) must not upscale the last run's outputs."""
    photos = tmp_path / "photos"
    (photos / "big" / "photos").mkdir(parents=True)
    for name in ("a.png", "big/photos/a.png", "big/other.png"):
        (photos / name).write_bytes(b"x")
    for output in (photos / "big", tmp_path / "photos" / ".." / "photos" / "big"):
        plan = plan_jobs([photos], output, "png")
        assert [job.source for job in plan.jobs] == [photos / "a.png"] and plan.problems == []
    # An output folder beside the inputs, whose name merely starts like one of the folder's, takes nothing away.
    (photos / "bigger").mkdir()
    (photos / "bigger" / "b.png").write_bytes(b"x")
    assert [job.source for job in plan_jobs([photos / "bigger"], photos / "big", "png").jobs] == [photos / "bigger" / "b.png"]


def test_an_output_folder_above_an_input_folder_takes_none_of_its_files_away(tmp_path):
    """``sr-upscale ~/pics/holiday -o ~`` found nothing to do: every input was under the output folder,
    so all were taken for earlier outputs, and the run said "converted 0, failed 0"."""
    holiday = tmp_path / "pics" / "holiday"
    holiday.mkdir(parents=True)
    (holiday / "a.png").write_bytes(b"x")
    plan = plan_jobs([holiday], tmp_path, "png")
    assert plan.jobs == [Job(holiday / "a.png", tmp_path / "holiday" / "a.png")] and plan.problems == []


def test_an_output_that_is_an_input_file_is_refused_not_skipped_or_overwritten(tmp_path):
    """``sr-upscale photo.png -o .`` counted the input as its own output "already done", and with
    --overwrite replaced the photo by its upscale; an output folder that is an input folder mixed them."""
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("a.png", "b.jpg", "b.png"):
        (pics / name).write_bytes(b"x")
    plan = plan_jobs([pics / "a.png", pics / "b.jpg", pics / "b.png", pics], pics, "png")
    assert plan.jobs == []
    assert plan.problems == [
        (pics, "is the output folder too: the outputs would be mixed with the inputs; choose another output folder"),
        *[(pics / name, f"its output {pics / output} is an input file: choose an output folder that holds no input")
          for name, output in (("a.png", "a.png"), ("b.jpg", "b.png"), ("b.png", "b.png"))]]
    # The whole folder given from its parent, with the parent as output: each file's output is the file itself.
    plan = plan_jobs([pics], tmp_path, "png")
    assert plan.jobs == [] and [source.name for source, _ in plan.problems] == ["a.png", "b.jpg", "b.png"]


def test_done_outputs_are_found_without_comparing_jobs(tmp_path, monkeypatch):
    """Each job was looked up in the list of those to do: 51 s for 10 000 files before the first was sent."""
    jobs = [Job(tmp_path / f"{index}.jpg", tmp_path / "out" / f"{index}.png") for index in range(3)]
    (tmp_path / "out").mkdir()
    jobs[1].target.write_bytes(b"done before")

    def compared(self, other):
        raise AssertionError("a job compared with another: a search through a list")

    monkeypatch.setattr(Job, "__eq__", compared)
    assert split_done(jobs, overwrite=False) == ([jobs[0], jobs[2]], [jobs[1]])
    assert split_done(jobs, overwrite=True) == (jobs, [])


def test_a_folder_gives_every_file_named_like_an_accepted_format():
    from core.containers import ACCEPTED_FORMATS

    suffixes = image_suffixes()
    assert {f".{image_format.lower()}" for image_format in ACCEPTED_FORMATS} <= suffixes
    assert {".jpg", ".jfif", ".tif", ".apng"} <= suffixes and not {".txt", ".md", ".svg", ".heic"} & suffixes
    assert [output_suffix(name) for name in OUTPUT_FORMATS] == [".png", ".jpg", ".webp"]


@pytest.mark.slow
@pytest.mark.parametrize("flags, fields", [
    (["--scale", "1.5", "--strength", "0.5"], {"scale": "1.5", "strength": "0.5"}),
    (["--width", "200", "--height", "100", "--fit", "cover", "--format", "JPG"],
     {"width": "200", "height": "100", "fit": "cover", "format": "jpg"}),
    (["--height", "150"], {"height": "150"}),
])
def test_size_and_strength_flags_give_what_the_api_answers(client, tmp_path, flags, fields):
    """The CLI's flags come from the same schema as the form: the same values give the same image."""
    result = sr_upscale(SAMPLES / "chelsea.png", "-o", tmp_path, *flags)
    assert result.returncode == 0, result.stderr
    written = next(tmp_path.iterdir())
    answer = client.post("/model/predict", data=dict(fields, image=((SAMPLES / "chelsea.png").open("rb"), "c.png")),
                         content_type="multipart/form-data")
    assert answer.status_code == 200, answer.json
    assert written.read_bytes() == answer.data


@pytest.mark.parametrize("flags, message", [
    (["--scale", "9"], "scale must be a number from 1 to 8, not '9'"),
    (["--strength", "2"], "strength must be a number from 0 to 1, not '2'"),
    (["--scale", "2", "--width", "30"], "scale cannot be combined with width or height"),
    (["--fit", "cover", "--width", "30"], "fit applies only when both width and height are sent"),
    (["--quality", "0"], "quality must be a whole number from 1 to 100, not '0'"),
    (["--model", "nope"], "model must be one of srgan, srresnet"),
    (["--strength", "0", "--ensemble"], "ensemble='true' changes only the model's output, and with strength='0' no "
                                        "model runs"),
])
def test_bad_option_values_are_usage_errors_with_the_servers_message(tmp_path, flags, message):
    result = sr_upscale(tmp_path, "-o", tmp_path / "out", *flags)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_an_output_folder_that_is_a_file_is_a_usage_error(tmp_path):
    """Every file was upscaled, then failed alike when its output folder could not be made."""
    (tmp_path / "out").write_text("a file")
    result = sr_upscale(SAMPLES / "camera.png", "-o", tmp_path / "out")
    assert result.returncode == 2 and f"sr-upscale: error: the output folder {tmp_path / 'out'} is a file" in result.stderr


def test_help_lists_every_option_of_the_schema():
    from core.options import OPTIONS

    result = sr_upscale("--help")
    assert result.returncode == 0
    assert all(option.flag in result.stdout for option in OPTIONS)
    assert "a number from 1 to 8 (default: 4)" in " ".join(result.stdout.split())


def test_the_timeout_outlasts_a_default_servers_queue_wait_and_time_limit():
    """A request may wait QUEUE_WAIT_S for a slot and then run REQUEST_TIME_LIMIT_S: a client that gives up
    sooner would retry work the server is still doing."""
    defaults = Settings.model_fields
    longest_s = defaults["queue_wait_s"].default + defaults["request_time_limit_s"].default
    timeout_s = parse_args(["photo.png", "-o", "out", "--server", "http://sr-a:5000"]).timeout
    assert longest_s < timeout_s < longest_s + 60
    assert f"[--timeout {timeout_s:g}]" in (ROOT / "docs" / "web-and-cli.md").read_text()


def test_the_docs_quote_a_failure_as_it_is_printed(tmp_path):
    holiday = tmp_path / "holiday"
    holiday.mkdir()
    (holiday / "broken.png").write_text("a text file named like an image")
    for name in ("IMG_1.HEIC", "IMG_2.heic", "notes.txt"):
        (holiday / name).write_text("not named as an accepted image")
    quoted = next(line for line in (ROOT / "docs" / "web-and-cli.md").read_text().splitlines()
                  if line.startswith("FAILED holiday/broken.png: "))
    result = sr_upscale(holiday, "-o", tmp_path / "out")
    assert result.returncode == 1
    assert f"{holiday / 'broken.png'}: {quoted.split(': ', 1)[1]}" in result.stderr, result.stderr
    # The files left out are counted, not silently passed over: a folder of photos may hold HEIC or raw files.
    assert "left out 3 files of the folders not named as an accepted image: .heic 2, .txt 1" in result.stdout.splitlines()


def test_a_run_whose_servers_are_all_down_stops_and_counts_the_files_not_done(capsys):
    """Every file left failed on its own, each after --retries + 1 tries: the run ends at once instead."""
    from remote import ServersDown

    jobs = [Job(Path(f"{index}.png"), Path(f"out/{index}.png")) for index in range(4)]
    why = "every server left 4 requests in a row unanswered (last: connection refused)"

    def convert(job: Job) -> None:
        if job.source.name != "0.png":
            raise ServersDown(why)

    summary = Summary()
    convert_all(jobs, convert, "srgan x4", summary, jobs=1, outputs=Outputs(), stop_on=ServersDown)
    assert (summary.converted, summary.failed, summary.unfinished) == ([Path("0.png")], [], 3)
    assert summary.stop_status == CANNOT_WORK
    report(summary, Path("out"))
    assert f"stopped: {why}: 3 files not done; the same command does them" in capsys.readouterr().err.splitlines()


def test_a_full_output_disk_stops_the_run(tmp_path, capsys):
    """Each file was upscaled (on the servers, for minutes) and then failed to be written, one after another."""
    jobs = [Job(Path(f"{index}.png"), tmp_path / "out" / f"{index}.png") for index in range(3)]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".1.png.partial").symlink_to("/dev/full")  # a real ENOSPC for the second file
    upscaled = []

    def convert(job: Job) -> None:
        upscaled.append(job.source.name)
        outputs.write(job.target, [b"upscaled"])

    outputs, summary = Outputs(), Summary()
    convert_all(jobs, convert, "srgan x4", summary, jobs=1, outputs=outputs, stop_on=CannotWrite)
    assert upscaled == ["0.png", "1.png"] and (summary.converted, summary.failed, summary.unfinished) == ([Path("0.png")], [], 2)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["0.png"]
    assert summary.stop_status == CANNOT_WORK
    report(summary, tmp_path / "out")
    assert f"stopped: cannot write {jobs[1].target}: No space left on device: 2 files not done; the same command " \
           f"does them" in capsys.readouterr().err.splitlines()


# --- --format auto: each file keeps its format where the service writes it --------------------------------


def relative_targets(plan, folder: Path, out: Path) -> list[tuple[str, str]]:
    return [(job.source.relative_to(folder).as_posix(), job.target.relative_to(out).as_posix()) for job in plan.jobs]


def test_auto_keeps_each_files_name_where_its_format_is_written_and_else_gives_a_png(tmp_path):
    """A folder of JPEG photos became PNGs several times their size: --format png was the only way."""
    folder, out = tmp_path / "shots", tmp_path / "out"
    folder.mkdir()
    for name in ("a.jpg", "a.png", "b.JPEG", "c.webp", "d.gif", "e.tif", "f.bmp", "g.gif", "g.png", "h.jfif"):
        (folder / name).write_bytes(b"x")
    plan = plan_jobs([folder, folder / "c.webp"], out, AUTO_FORMAT)
    assert relative_targets(plan, folder, out) == [
        ("a.jpg", "shots/a.jpg"), ("a.png", "shots/a.png"), ("b.JPEG", "shots/b.JPEG"), ("c.webp", "shots/c.webp"),
        ("d.gif", "shots/d.png"), ("e.tif", "shots/e.png"), ("f.bmp", "shots/f.png"), ("g.gif", "shots/g.png"),
        ("h.jfif", "shots/h.jfif"), ("c.webp", "c.webp")]
    # a.jpg and a.png have outputs of their own; g.gif and g.png would both be g.png
    assert plan.problems == [(folder / "g.png", f"same output {out / 'shots/g.png'} as {folder / 'g.gif'}")]
    assert [written_format(job.target) for job in plan.jobs] == [
        "jpeg", "png", "jpeg", "webp", "png", "png", "png", "png", "jpeg", "webp"]
    # A fixed format still names every output after it.
    assert [job.target.name for job in plan_jobs([folder / "a.jpg", folder / "e.tif"], out, "webp").jobs] == [
        "a.webp", "e.webp"]


def test_auto_finds_its_own_outputs_done_and_never_takes_an_input_for_its_output(tmp_path):
    """With auto a JPEG's output has its very name: in its own folder, it would be the input itself."""
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("a.jpg", "b.gif"):
        (pics / name).write_bytes(b"x")
    plan = plan_jobs([pics / "a.jpg", pics / "b.gif"], pics, AUTO_FORMAT)
    assert plan.jobs == [Job(pics / "b.gif", pics / "b.png")]
    assert plan.problems == [(pics / "a.jpg", f"its output {pics / 'a.jpg'} is an input file: choose an output folder "
                                              f"that holds no input")]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.jpg").write_bytes(b"done before")
    todo, done = split_done(plan_jobs([pics], tmp_path / "out", AUTO_FORMAT).jobs, overwrite=False)
    assert [job.target.name for job in todo] == ["a.jpg", "b.png"] and done == []  # a.jpg's is out/pics/a.jpg
    todo, done = split_done(plan_jobs([pics / "a.jpg"], tmp_path / "out", AUTO_FORMAT).jobs, overwrite=False)
    assert (todo, [job.target for job in done]) == ([], [tmp_path / "out" / "a.jpg"])


def test_auto_is_the_default_and_its_options_are_checked_for_every_format_a_file_may_keep():
    args = parse_args(["a.jpg", "-o", "out", "--quality", "80"])
    assert sorted(args.options) == ["jpeg", "png", "webp"]
    assert (args.options["jpeg"].quality, args.options["webp"].quality, args.options["png"].quality) == (80, 80, 90)
    assert {options.output_format for options in args.options.values()} == {"jpeg", "png", "webp"}
    assert sorted(parse_args(["a.jpg", "-o", "out", "--format", "AUTO"]).options) == ["jpeg", "png", "webp"]
    assert list(parse_args(["a.jpg", "-o", "out", "--format", "JPG"]).options) == ["jpeg"]


@pytest.mark.parametrize("flags, message", [
    (["--quality", "0"], "quality must be a whole number from 1 to 100, not '0'"),
    (["--format", "png", "--quality", "80"], "quality applies only to format jpeg or webp"),
    (["--format", "gif"], "format must be one of png, jpeg, webp (jpg for jpeg), not 'gif'"),
])
def test_a_bad_format_or_quality_is_a_usage_error_with_the_servers_message(tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args([str(tmp_path), "-o", str(tmp_path / "out"), *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_help_offers_auto_as_the_formats_default():
    result = sr_upscale("--help")
    assert result.returncode == 0
    assert ("one of png, jpeg, webp (jpg for jpeg), or auto: each file's own format where it is one of these, else "
            "png (default: auto)") in " ".join(result.stdout.split())


@pytest.mark.slow
def test_auto_writes_a_jpeg_as_jpeg_a_transparent_webp_as_webp_and_a_gif_as_png(tmp_path):
    """A JPEG (no alpha) is written as JPEG, a WebP keeps its transparency, a GIF (not written) becomes a PNG;
    --quality applies to the JPEG and the WebP, and the run says it does not to the PNG."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    with Image.open(SAMPLES / "chelsea.png") as photo:
        small = photo.convert("RGB").crop((40, 20, 56, 36))
    small.save(folder / "photo.JPG", quality=95)
    clear = small.convert("RGBA")
    clear.putalpha(Image.linear_gradient("L").resize(small.size))  # from transparent to opaque, top to bottom
    clear.save(folder / "sticker.webp", lossless=True)
    small.convert("P").save(folder / "anim.gif")
    result = sr_upscale(folder, "-o", tmp_path / "out", "--model", "span", "--quality", "80")
    assert result.returncode == 0, result.stderr
    assert "converted 3" in result.stdout
    assert "sr-upscale: --quality applies to the files written as jpeg or webp; not to the lossless ones (1 as png)" \
           in result.stderr.splitlines()
    written = tmp_path / "out" / "mixed"
    assert sorted(path.name for path in written.iterdir()) == ["anim.png", "photo.JPG", "sticker.webp"]
    for name, image_format, mode in (("photo.JPG", "JPEG", "RGB"), ("sticker.webp", "WEBP", "RGBA"),
                                     ("anim.png", "PNG", "RGB")):
        with Image.open(written / name) as image:
            assert (image.format, image.mode, image.size) == (image_format, mode, (64, 64)), name
            if name == "sticker.webp":
                alpha = image.getchannel("A")
                assert alpha.getpixel((32, 0)) < 16 and alpha.getpixel((32, 63)) > 240  # the transparency kept


# --- Local mode offers MODELS_DIR's models, as the local service does -----------------------------------------


@pytest.fixture()
def models_dir(tmp_path, monkeypatch) -> Path:
    """MODELS_DIR with two small ONNX models (4x and 2x) and one without its sidecar."""
    from tests.onnx_nets import SubpixelNet

    folder = tmp_path / "models"
    folder.mkdir()
    for name, scale in (("espcn4", 4), ("espcn2", 2)):
        SubpixelNet.random(scale, seed=scale).save(folder / f"{name}.onnx")
        (folder / f"{name}.json").write_text(json.dumps({"title": f"ESPCN-like {scale}x", "scale": scale,
                                                         "license": "CC0-1.0", "margin": 4}))
    SubpixelNet.random(4).save(folder / "nosidecar.onnx")
    monkeypatch.setenv("MODELS_DIR", str(folder))
    return folder


@pytest.fixture()
def loaded_models(monkeypatch) -> list[tuple[str, ...]]:
    """The models each registry of this process offers when it loads them."""
    from core.models.registry import ModelRegistry

    offered = []
    real_load = ModelRegistry.load_all

    def load_all(registry, on_loaded=None):
        offered.append(registry.names)
        real_load(registry, on_loaded)

    monkeypatch.setattr(ModelRegistry, "load_all", load_all)
    return offered


def test_local_mode_runs_a_model_of_models_dir_alone(models_dir, loaded_models, tmp_path):
    """A model the operator dropped in MODELS_DIR was refused (``model must be one of srgan, ...``), though the
    server offers it."""
    out = tmp_path / "out"
    assert main([str(SAMPLES / "camera.png"), "-o", str(out), "--model", "espcn4"]) == 0
    assert size_of(out / "camera.png") == (96 * 4, 96 * 4)
    assert loaded_models == [("espcn4",)]


def test_local_mode_fails_a_broken_models_dir_model_with_the_servers_reason(models_dir, loaded_models, tmp_path,
                                                                            capsys):
    assert main([str(SAMPLES / "camera.png"), "-o", str(tmp_path / "out"), "--model", "nosidecar"]) == CANNOT_WORK
    assert "sr-upscale: model nosidecar could not be loaded: no sidecar nosidecar.json (title, scale and license " \
           "are required)" in capsys.readouterr().err
    assert loaded_models == [("nosidecar",)] and not (tmp_path / "out").exists()


def test_local_mode_with_a_built_in_model_loads_none_of_models_dir(models_dir, tmp_path, monkeypatch):
    """Every MODELS_DIR model was loaded (and measured) beside the one chosen."""
    from core.models.registry import ModelRegistry

    offered = []
    monkeypatch.setattr(ModelRegistry, "load_all", lambda registry, on_loaded=None: offered.append(registry.names))
    assert main([str(SAMPLES / "camera.png"), "-o", str(tmp_path / "out"), "--model", "srgan"]) == CANNOT_WORK
    assert offered == [("srgan",)]  # left unloaded here: the run stops with "could not be loaded: pending"


@pytest.mark.parametrize("flags, env, message", [
    (["--model", "nope"], {}, ", espcn2, espcn4, nosidecar, not 'nope'"),
    (["--model", "espcn4", "--denoise", "1"], {}, "denoise must be one of none with model espcn4, not '1'"),
    ([], {"DEFAULT_MODEL": "nope"}, "DEFAULT_MODEL 'nope' is not among the models offered ('srgan', "),
    ([], {"MODELS_DIR": "/no/such/folder"}, "MODELS_DIR /no/such/folder is not a folder"),
])
def test_local_mode_checks_models_dir_models_as_the_server_does(models_dir, monkeypatch, capsys, flags, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stop:
        parse_args(["a.png", "-o", "out", *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_local_mode_runs_a_models_dir_model_named_by_default_model(models_dir, loaded_models, tmp_path, monkeypatch):
    """As the server's default: the run ended with a traceback (MODELS names unknown models ['espcn2'])."""
    monkeypatch.setenv("DEFAULT_MODEL", "espcn2")
    assert main([str(SAMPLES / "camera.png"), "-o", str(tmp_path / "out")]) == 0
    assert size_of(tmp_path / "out" / "camera.png") == (96 * 4, 96 * 4) and loaded_models == [("espcn2",)]


# --- What a folder holds besides images ----------------------------------------------------------------------


@pytest.fixture()
def mac_copy(tmp_path) -> Path:
    """photos/ as a Mac leaves it on a foreign disk (an AppleDouble ._ file beside each file), with a link to a
    folder elsewhere and a link back up to itself."""
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (photos / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    for name in ("IMG_0001.jpg", "sub/IMG_0002.png"):
        (photos / name).write_bytes(b"x")
        (photos / name).with_name(f"._{Path(name).name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    (elsewhere / "far.png").write_bytes(b"x")
    (photos / "nas").symlink_to(elsewhere)
    (photos / "sub" / "loop").symlink_to(photos)
    return photos


def test_apple_double_files_are_left_out_and_counted_and_linked_folders_listed_not_walked(mac_copy, tmp_path):
    """Each ._IMG_0001.jpg was sent and failed with a 400 (not an image); a linked folder was passed over unsaid."""
    plan = plan_jobs([mac_copy], tmp_path / "out", AUTO_FORMAT)
    assert [job.source for job in plan.jobs] == [mac_copy / "IMG_0001.jpg", mac_copy / "sub" / "IMG_0002.png"]
    assert plan.not_images == {"._* (macOS metadata)": 2} and plan.problems == []
    assert plan.linked_folders == [mac_copy / "nas", mac_copy / "sub" / "loop"]
    # Given as an input, a linked folder is converted.
    assert [job.target for job in plan_jobs([mac_copy / "nas"], tmp_path / "out", AUTO_FORMAT).jobs] == [
        tmp_path / "out" / "elsewhere" / "far.png"]


def test_the_summary_counts_apple_double_files_and_names_the_linked_folders(mac_copy, tmp_path, capsys):
    for name in ("IMG_0001.jpg", "sub/IMG_0002.png"):
        (mac_copy / name).unlink()  # nothing to upscale: no model loads
    assert main([str(mac_copy), "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "left out 2 files of the folders not named as an accepted image: ._* (macOS metadata) 2" in printed
    assert f"left out 2 linked folders, not followed (one given as an input is converted): {mac_copy / 'nas'}, " \
           f"{mac_copy / 'sub' / 'loop'}" in printed


def test_an_apple_double_file_named_on_the_command_line_is_sent_and_fails_as_a_bad_image(models_dir, mac_copy,
                                                                                       tmp_path, capsys):
    """Named by the user, a ._ file is meant: it is upscaled if it is an image, and else fails with the service's
    reason and is counted, where a folder's ._ files are left out as macOS metadata."""
    metadata = mac_copy / "._IMG_0001.jpg"
    shutil.copy(SAMPLES / "camera.png", mac_copy / "sub" / "._camera.png")  # an image, whatever its name
    out = tmp_path / "out"
    assert main([str(metadata), str(mac_copy / "sub" / "._camera.png"), "-o", str(out), "--model", "espcn4"]) == 1
    printed = capsys.readouterr()
    assert f"FAILED {metadata}: the upload is not an image in an accepted format" in printed.err
    summary = next(line for line in printed.out.splitlines() if line.startswith("converted "))
    assert summary.startswith("converted 1 in ") and ", failed 1;" in summary
    assert "left out" not in printed.out and size_of(out / "._camera.png") == (96 * 4, 96 * 4)


# --- Two inputs for one output folder ------------------------------------------------------------------------


def test_two_input_folders_of_the_same_name_are_a_usage_error_before_any_work(tmp_path, capsys):
    """``sr-upscale a/photos b/photos -o out`` wrote both into out/photos: a file of one counted as done for the
    file of the same name in the other, and the two folders' files were mixed."""
    for name in ("a/photos", "b/photos", "c/other"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "x.png").write_bytes(b"x")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "a/photos"), str(tmp_path / "c/other"), str(tmp_path / "b/photos"), "-o", str(out)])
    assert stop.value.code == 2 and not out.exists()
    assert f"the input folders {tmp_path / 'a/photos'} and {tmp_path / 'b/photos'} would both be written to " \
           f"{out / 'photos'}: give them separate runs, each with its own -o" in capsys.readouterr().err
    # The same folder twice, however spelled, is named as such.
    with pytest.raises(SystemExit) as stop:
        parse_args([str(tmp_path / "a/photos"), str(tmp_path / "a/../a/photos/"), "-o", str(out)])
    assert stop.value.code == 2
    assert f"{tmp_path / 'a/photos'} and {tmp_path / 'a/../a/photos'} are the same folder: give it once" \
           in capsys.readouterr().err


# --- What a folder holds besides files -----------------------------------------------------------------------


@pytest.fixture()
def odd_entries(tmp_path) -> Path:
    """photos/ with an image, a broken link named like an image and a FIFO (which blocks whoever opens it)."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.png").write_bytes(b"x")
    (photos / "old.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(photos / "sub" / "pipe.png")
    return photos


def test_broken_links_and_fifos_in_a_folder_are_left_out_and_named_never_opened(odd_entries, tmp_path, capsys):
    """A folder's broken links and FIFOs were passed over unsaid, where its other files left out are counted."""
    plan = plan_jobs([odd_entries], tmp_path / "out", AUTO_FORMAT)
    assert [job.source for job in plan.jobs] == [odd_entries / "a.png"] and plan.problems == []
    assert plan.not_files == [(odd_entries / "old.jpg", "broken link"), (odd_entries / "sub" / "pipe.png", "FIFO")]
    (odd_entries / "a.png").unlink()  # nothing to upscale: no model loads
    assert main([str(odd_entries), "-o", str(tmp_path / "out")]) == 0  # the FIFO, opened, would block here
    assert f"left out 2 entries of the folders that are not files: {odd_entries / 'old.jpg'} (broken link), " \
           f"{odd_entries / 'sub' / 'pipe.png'} (FIFO)" in capsys.readouterr().out.splitlines()


def test_a_broken_link_or_fifo_named_as_an_input_fails_with_what_it_is(odd_entries, tmp_path):
    plan = plan_jobs([odd_entries / "old.jpg", odd_entries / "sub" / "pipe.png", tmp_path / "nothing.png"],
                     tmp_path / "out", AUTO_FORMAT)
    assert plan.jobs == [] and plan.problems == [
        (odd_entries / "old.jpg", "is a broken link"), (odd_entries / "sub" / "pipe.png", "is a FIFO, not a file"),
        (tmp_path / "nothing.png", "no such file or folder")]


# --- Processes that libraries fork -----------------------------------------------------------------------------


def _lock_forever(mutex: ctypes.Array, started: object) -> None:
    """Stands for a forked child stuck on a lock another thread held at the fork: a wait no Python handler ends."""
    lock = ctypes.CDLL(None).pthread_mutex_lock
    started.set()
    lock(mutex)


def test_a_child_a_library_forks_is_ended_by_its_sigterm_despite_the_clis_handler():
    """OpenVINO's telemetry forks (multiprocessing, from its threads) at each model conversion and ends a child
    that hangs with terminate(), SIGTERM; the child inherited the handler that makes SIGTERM stop the run as
    Ctrl-C does, which only sets a flag for a stuck child's Python, so the child outlived the run."""
    import multiprocessing
    import signal

    mutex = ctypes.create_string_buffer(64)  # zeros: PTHREAD_MUTEX_INITIALIZER
    libc = ctypes.CDLL(None)
    libc.pthread_mutex_lock(mutex)
    previous = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm()
    try:
        forking = multiprocessing.get_context("fork")
        started = forking.Event()
        child = forking.Process(target=_lock_forever, args=(mutex, started), daemon=True)
        child.start()
    finally:
        signal.signal(signal.SIGTERM, previous)
        libc.pthread_mutex_unlock(mutex)
    try:
        # As the library does (after its join timeout): a SIGTERM before the child's fork hooks ran would find the
        # handler still there.
        assert started.wait(120)
        child.terminate()
        child.join(120)  # returns at once where SIGTERM ends it; a wait of its own where not
        assert child.exitcode == -signal.SIGTERM
    finally:
        child.kill()
        child.join()


def test_a_sub_folder_that_cannot_be_read_fails_with_the_reason(tmp_path, monkeypatch):
    """A sub-folder the user may not read was passed over unsaid (pathlib's rglob drops it), and the run said
    every file was converted."""
    photos = tmp_path / "photos"
    for name in ("a.png", "locked/b.png", "locked/deeper/c.png", "open/d.png"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path):  # the tests run as root, whom no permission stops
        if Path(path) == photos / "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    plan = plan_jobs([photos], tmp_path / "out", AUTO_FORMAT)
    assert [job.source for job in plan.jobs] == [photos / "a.png", photos / "open" / "d.png"]
    assert plan.problems == [(photos / "locked", "is a folder that cannot be read (Permission denied): none of its "
                                                 "files is converted")]
