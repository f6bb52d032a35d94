"""The real server: gunicorn on a free port, a real multipart upload over TCP."""
from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from harness.live_server import live_server
from tests.conftest import sample_bytes

pytestmark = pytest.mark.slow


def test_gunicorn_serves_predict_and_errors():
    with live_server() as server:
        response = requests.post(f"{server.url}/model/predict",
                                 files={"image": ("chelsea.png", sample_bytes("chelsea.png"), "image/png")}, timeout=120)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (112 * 4, 75 * 4)

        corrupt = requests.post(f"{server.url}/model/predict",
                                files={"image": ("x.png", b"\x89PNG\r\n\x1a\n broken", "image/png")}, timeout=30)
        assert corrupt.status_code == 400
        assert "message" in corrupt.json()
        assert requests.get(f"{server.url}/model/metadata", timeout=10).status_code == 200
