"""Shared fixtures: one service with the real models per test session."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import create_app
from config import Settings, load_settings
from harness.live_server import IN_PROCESS_BUDGET

# The memory budget counts one worker's resident memory, but this process holds the models of every
# test's service at once: its in-process services get a budget for that. A real gunicorn worker started
# by harness.live_server gets the default budget, or the one its test gives.
os.environ.setdefault("MEMORY_BUDGET_MB", IN_PROCESS_BUDGET)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "test_examples" / "low_resolution"
TEST_MODELS = "srgan,srresnet"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(models=TEST_MODELS, default_model="srgan")


def loaded_app(settings: Settings):
    """The Flask app with every model of ``settings`` loaded before it is returned."""
    flask_app = create_app(settings, load_models=False)
    flask_app.extensions["super_resolution"].registry.load_all()
    return flask_app


@pytest.fixture(scope="session")
def app(settings):
    return loaded_app(settings)


@pytest.fixture(scope="session")
def service(app):
    return app.extensions["super_resolution"]


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def datasets_dir(settings) -> Path:
    if not (settings.datasets_dir / "Set5").is_dir():
        pytest.skip(f"evaluation data not found at {settings.datasets_dir} (set DATASETS_DIR)")
    return settings.datasets_dir


def sample_bytes(name: str = "astronaut.png") -> bytes:
    return (SAMPLES / name).read_bytes()


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
