"""Imports point down: the model catalogue knows nothing of requests, the request schema nothing of the image
codec, and the tiler nothing of the project (docs/architecture.md, "Which module imports which")."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CATALOGUE = ("core.models.registry", "core.models.specs", "core.models.card", "core.models.weights",
             "core.models.operator_models")
# What sits above the catalogue: the request schema, the plan, the cost model, the pipeline, the service, HTTP.
ABOVE_CATALOGUE = ("core.options", "core.plan", "core.cost", "core.pipeline", "core.service", "api")


def imported_by(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module`` alone."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def within(modules: set[str], packages: tuple[str, ...]) -> set[str]:
    return {name for name in modules if any(name == package or name.startswith(f"{package}.") for package in packages)}


@pytest.mark.parametrize("module", CATALOGUE)
def test_the_catalogue_imports_nothing_above_it(module):
    assert within(imported_by(module), ABOVE_CATALOGUE) == set()


def test_the_request_schema_imports_no_image_codec():
    assert within(imported_by("core.options"), ("core.images", "core.encoding", "PIL", "png")) == set()


def test_the_tiler_imports_nothing_of_the_project():
    project = ("config", "core", "api", "app")
    assert within(imported_by("core.tiling"), project) == {"core", "core.tiling"}
