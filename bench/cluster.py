"""A folder through ``sr-upscale --server``: one server against two, on loopback, in files per minute.

    flock -x /tmp/cpu.lock .venv/bin/python -m bench.cluster --files 40 --side 128

Each configuration starts its own gunicorn servers (MODELS=srgan, one worker each), runs the
command line over the same folder into a fresh output folder, and takes the time from its summary
line (the conversion, without start-up), and the CPU time the servers' workers spent meanwhile
(their busy cores). The servers share this machine's cores, so "two servers of one thread each"
stands for two one-core pods, and "one server of two threads" for one pod with the machine's two
cores. Prints a Markdown table with the CPU and the fp32 ceiling.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from PIL import Image

from bench.machine import ceiling_in_fresh_process, cpu_description
from harness.live_server import live_server
from harness.raw_http import cpu_seconds, worker_pids

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "test_examples" / "low_resolution"
# (label, servers, INFERENCE_THREADS of each, one command line per server with its share of the files)
CONFIGURATIONS = (("one server, 1 thread", 1, 1, False), ("two servers, 1 thread each", 2, 1, False),
                  ("two servers, 1 thread each, a command line each", 2, 1, True),
                  ("one server, 2 threads", 1, 2, False))


def make_folder(folder: Path, count: int, side: int, parts: int = 2) -> None:
    """``count`` distinct side x side photos cut from the samples, in ``parts`` sub-folders of equal share."""
    samples = sorted(SAMPLES.glob("*.png"))
    for index in range(count):
        part = folder / f"part{index % parts}"
        part.mkdir(parents=True, exist_ok=True)
        with Image.open(samples[index % len(samples)]) as image:
            shift = index // len(samples)
            image.convert("RGB").resize((side + shift, side + shift)).crop((shift, shift, side + shift, side + shift)) \
                .save(part / f"photo{index:03}.png")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent on anything but idling and waiting, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def client_seconds() -> float:
    """CPU seconds of this process's finished children (the command line runs as one)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_clis(jobs: list[tuple[list[Path], list[str]]], out: Path) -> float:
    """Command lines run at once, each over its folders to its servers: seconds of the slowest conversion,
    from the summary lines; fails unless every file was converted."""
    started = [subprocess.Popen([sys.executable, "-m", "cli", *map(str, folders), "-o", str(out / str(index)),
                                 *(argument for url in urls for argument in ("--server", url))],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for index, (folders, urls) in enumerate(jobs)]
    seconds = []
    for process in started:
        stdout, stderr = process.communicate(timeout=1800)
        converted = re.search(r"converted (\d+) in ([\d.]+) s, skipped 0 already done, failed 0", stdout)
        if process.returncode != 0 or converted is None:
            raise RuntimeError(f"sr-upscale failed: {stdout}{stderr[-2000:]}")
        print(stdout.strip(), file=sys.stderr)
        seconds.append(float(converted.group(2)))
    return max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--side", type=int, default=128)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "photos"
        make_folder(folder, args.files, args.side)
        parts = sorted(folder.iterdir())
        for index, (label, count, threads, client_each) in enumerate(CONFIGURATIONS):
            with ExitStack() as stack:
                servers = [stack.enter_context(live_server(inference_threads=str(threads))) for _ in range(count)]
                urls = [server.url for server in servers]
                jobs = [([part], [url]) for part, url in zip(parts, urls)] if client_each else [(parts, urls)]
                workers = [pid for server in servers for pid in worker_pids(server.process.pid)]
                before = sum(cpu_seconds(pid) for pid in workers), client_seconds(), machine_busy_seconds()
                seconds = run_clis(jobs, Path(work) / f"out{index}")
                after = sum(cpu_seconds(pid) for pid in workers), client_seconds(), machine_busy_seconds()
                # The clients' figure covers their whole runs (start-up too), so it is an upper bound.
                busy = [(late - early) / seconds for early, late in zip(before, after)]
            rows.append(f"| {label} | {args.files} | {seconds:.1f} | {args.files / seconds * 60:.0f} | "
                        + " | ".join(f"{value:.2f}" for value in busy) + " |")
    print(f"CPU: {cpu_description()}; fp32 ceiling (numpy sgemm) {ceiling_in_fresh_process():.0f} GFLOP/s\n")
    print(f"`srgan`, {args.side}x{args.side} PNGs, `--jobs` at its default (2 per server)\n")
    print("| servers | files | seconds | files per minute | cores busy: servers' workers | the client | "
          "the whole machine |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
