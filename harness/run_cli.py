"""sr-upscale run as a user runs it, for the tests."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from harness.live_server import ROOT


def sr_upscale(*args: object, python_flags: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    """The CLI's exit code and what it printed. Its streams go to files, not pipes, so that the run ends when the
    CLI does: a child that OpenVINO's telemetry forked, stuck on a lock and left behind once, held the streams
    and made a pipe wait out the whole timeout (the telemetry no longer loads, and cli.py lets a library's
    forked child die of the library's SIGTERM)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run([sys.executable, *python_flags, "-m", "cli", *map(str, args)], cwd=ROOT, stdout=out,
                              stderr=err, text=True, timeout=600, env={**os.environ, **env})
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())
