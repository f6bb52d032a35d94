"""What each model costs a worker at start-up: load seconds and resident memory.

Each model is loaded alone in a fresh process (the settings' backend, default OPENVINO), as a worker
loads it: built from its weights, converted, compiled and run once per native network. Prints a
Markdown table for docs/deployment.md, after the CPU and its fp32 ceiling measured in the same run. Run under
``flock -x /tmp/cpu.lock`` (it measures time):

    .venv/bin/python scripts/measure_model_startup.py [--models srgan,span,...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024


def measure(model: str) -> dict[str, float]:
    """Run in the child: RSS before and after the service loads ``model``, and its load seconds."""
    from config import load_settings
    from core.service import Service

    service = Service.create(load_settings(models=model, default_model=model))
    before = rss_mib()
    seconds: dict[str, float] = {}
    service.registry.load_all(on_loaded=lambda name, s: seconds.update({name: s}))
    if not service.registry.ready:
        raise RuntimeError(f"{model} did not load: {service.registry.states()}")
    (entry,) = service.registry.describe()
    return {"seconds": seconds[model], "before_mib": before, "after_mib": rss_mib(),
            "networks": sum(len(levels) for levels in entry["denoise"].values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="srgan,srresnet,realsr,realesrgan,span,anime,realcugan")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    from bench.machine import ceiling_in_fresh_process, cpu_description

    print(f"{cpu_description()}; fp32 ceiling {ceiling_in_fresh_process():.0f} GFLOP/s", flush=True)
    print("| model | networks | load seconds | worker RSS added (MiB) |\n|---|---|---|---|")
    for model in args.models.split(","):
        output = subprocess.run([sys.executable, __file__, "--child", model], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        print(f"| `{model}` | {row['networks']} | {row['seconds']:.1f} | {row['after_mib'] - row['before_mib']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
