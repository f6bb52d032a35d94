"""What a GPU machine without network needs for bench.gpu, in one ignored folder that travels with the tree.

    python -m bench.carry --models srgan,span,anime,realcugan [--out .carry] [--no-wheels]

``weights/``: the weight files of every network of the chosen models, copied from the installed packages
with each package's ``__init__.py`` and distribution metadata, so that the specs' ``in_package`` and
``in_distribution`` paths find them with ``weights/`` on PYTHONPATH. ``whl/``: Python 3.12 wheels of what
the service and bench.gpu import beyond the GPU machine's image (torch, numpy, Pillow, h5py, safetensors
and the rest are there), at the versions this venv runs. Prints the size against the 64 MiB that one
call carries with the tree, and the command that installs the wheels and runs there (docs/gpu.md).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import distribution, version
from pathlib import Path

from config import load_settings
from core.models.specs import PACKAGED, SPECS

ROOT = Path(__file__).resolve().parent.parent
# Imported by the service and bench.gpu but absent from the GPU machine's image (the device tool's package
# list); werkzeug is there, but older than flask 3.1 takes.
WHEELS = ("aniso8601", "annotated-types", "blinker", "flask", "flask-restx", "gunicorn", "importlib-resources",
          "isal", "itsdangerous", "jsonschema", "jsonschema-specifications", "pydantic", "pydantic-core",
          "pydantic-settings", "pypng", "python-dotenv", "referencing", "rpds-py", "spandrel",
          "typing-inspection", "werkzeug")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
CALL_LIMIT = 64 * 2**20


def weight_files(models: list[str]) -> list[Path]:
    """Every file of the models' networks: a network's path, or the files of its stem (ncnn's .param, .bin)."""
    settings = load_settings()
    found = []
    for name in models:
        for variant in SPECS[name].variants:
            path = variant.weights.locate(settings)
            found += [path] if path.is_file() else [file for file in path.parent.iterdir() if file.stem == path.name]
    return found


def site_of(path: Path) -> Path:
    """The sys.path folder that holds ``path``."""
    # Not the repository itself (sys.path[0] under -m), which holds .venv and so every installed file too.
    return next(Path(entry) for entry in sys.path if entry and path.is_relative_to(entry) and Path(entry) != ROOT)


def copy_weights(models: list[str], out: Path) -> None:
    """The weight files under ``out`` as they lie under site-packages, with their packages' __init__.py and
    dist-info folders."""
    packages = set()
    for file in weight_files(models):
        relative = file.relative_to(site_of(file))
        packages.add(relative.parts[0])
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, out / relative)
    for package in packages:
        site = Path(str(distribution(package).locate_file("")))
        for metadata in site.glob(f"{package}-*.dist-info"):
            shutil.copytree(metadata, out / metadata.name, dirs_exist_ok=True)
        if (site / package / "__init__.py").is_file():
            shutil.copyfile(site / package / "__init__.py", out / package / "__init__.py")


def download_wheels(out: Path) -> None:
    """Each of WHEELS at this venv's version, for CPython 3.12 on x86-64 Linux, without its dependencies."""
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(out), *pins],
                   check=True)


def size(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(PACKAGED))
    parser.add_argument("--out", type=Path, default=ROOT / ".carry")
    parser.add_argument("--no-wheels", action="store_true")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    copy_weights(args.models.split(","), args.out / "weights")
    if not args.no_wheels:
        download_wheels(args.out / "whl")
    total = size(args.out)
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    tree = sum((ROOT / name).stat().st_size for name in listed.split("\0") if name)
    print(f"{args.out}: {total / 2**20:.1f} MiB; with the tree {(total + tree) / 2**20:.1f} of the "
          f"{CALL_LIMIT // 2**20} MiB one call carries")
    relative = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    install = "" if args.no_wheels else (f"python3 -m pip install -q --no-index --no-deps --no-compile "
                                         f"--target /tmp/site {relative}/whl/*.whl && ")
    print(f"there: {install}PYTHONPATH=/tmp/site:{relative}/weights python3 -m bench.gpu --models {args.models} ...")
    return 0 if total + tree <= CALL_LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
