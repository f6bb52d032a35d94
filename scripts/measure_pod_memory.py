"""What a served pod holds besides its worker: serve.py, gunicorn's master and nginx, by resident memory.

    .venv/bin/python scripts/measure_pod_memory.py

Starts the service as it is deployed (serve.py: nginx in front of gunicorn, MODELS=srgan) and prints each
process's RSS. tests/test_deploy.py's POD_OVERHEAD_MIB leaves room above the sum (docs/deployment.md, "Sizing").
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.live_server import live_server  # noqa: E402
from harness.raw_http import descendants, rss_bytes  # noqa: E402


def main() -> None:
    with live_server(front=True, models="srgan") as server:
        worker = max(descendants(server.process.pid), key=rss_bytes)
        others = 0
        for pid in descendants(server.process.pid):
            mib = rss_bytes(pid) / 2 ** 20
            command = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:70]
            print(f"{pid:7} {mib:7.0f} MiB  {'(the worker) ' if pid == worker else ''}{command}")
            others += 0 if pid == worker else mib
        print(f"besides the worker: {others:.0f} MiB")


if __name__ == "__main__":
    main()
