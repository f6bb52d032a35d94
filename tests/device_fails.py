"""``app:app`` with a device that fails for good (a CUDA illegal address, as tests/core/test_gpu_serving.py makes it,
on the PyTorch backend) where DEVICE_FAILS says: at the models' warm-up, or at each image after it, or
(``warm-up-of-one``) at the warm-up of the first worker to create the file DEVICE_FAILS_MARK while every other
worker's models load for ever; for a real gunicorn in tests/test_gunicorn.py (``tests.device_fails:app``)."""
from __future__ import annotations

import os
import threading

import app as served
from core.backends import pytorch
from core.service import Service


def _illegal_address(*args: object) -> None:
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def _fail_from_now() -> None:
    pytorch.device_works = lambda device: False
    pytorch.TorchRunner._run = _illegal_address


def _load_then_fail(service: Service, *args: object) -> None:
    _load(service, *args)
    _fail_from_now()


def _first_fails_others_load_for_ever(service: Service, *args: object) -> None:
    try:
        os.close(os.open(os.environ["DEVICE_FAILS_MARK"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        threading.Event().wait()
    _fail_from_now()
    _load(service, *args)


_load = Service.load
if os.environ["DEVICE_FAILS"] == "warm-up":
    _fail_from_now()
elif os.environ["DEVICE_FAILS"] == "warm-up-of-one":
    Service.load = _first_fails_others_load_for_ever
else:
    Service.load = _load_then_fail

app = served.create_app()
