"""Errors a request can meet, each carrying the HTTP status that fits it, and a refusal (413, 503) its reason.

The core raises them; the API layer turns any of them into ``{"message": ...}`` and counts each refusal by its
``reason`` (superres_refusals_total, docs/deployment.md).
"""
from __future__ import annotations

import math
from enum import StrEnum
from typing import ClassVar


class Reason(StrEnum):
    """Why a request was refused: the ``reason`` label of superres_refusals_total, one value per error class below
    (and api/errors.py's), so that the label takes its values from this fixed set only."""

    UPLOAD_TOO_LARGE = "upload_too_large"
    FORM_TOO_LARGE = "form_too_large"
    INPUT_PIXELS = "input_pixels"
    OUTPUT_PIXELS = "output_pixels"
    ENSEMBLE_PIXELS = "ensemble_pixels"
    MEMORY_BUDGET = "memory_budget"
    GPU_MEMORY_BUDGET = "gpu_memory_budget"
    TIME_ESTIMATE = "time_estimate"
    BUSY = "busy"
    QUEUE_TIMEOUT = "queue_timeout"
    TIME_LIMIT = "time_limit"
    NOT_READY = "not_ready"
    SHUTTING_DOWN = "shutting_down"
    OUT_OF_MEMORY = "out_of_memory"
    DEVICE_FAILED = "device_failed"


class ServiceError(Exception):
    """Base class: ``status`` is the HTTP status, ``str(error)`` the message for the user."""

    status = 500
    # A refusal's (413, 503) reason; a client error (400) has none.
    reason: ClassVar[Reason | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Refusal(ServiceError):
    """A request the server will not serve (too large, or not now): raised only as a subclass naming its reason
    (tests/api/test_observability.py finds any raise of a class without one)."""


class InvalidInput(ServiceError):
    """The request is malformed: a missing part or an option out of range."""

    status = 400


class InvalidImage(InvalidInput):
    """The bytes do not decode as a supported image."""


class UnknownModel(InvalidInput):
    """The request names a model this server does not offer."""


class TooLarge(Refusal):
    """The upload, the input image or the output image exceeds a configured limit."""

    status = 413


class UploadTooLarge(TooLarge):
    """The request's body is longer than MAX_UPLOAD_BYTES."""

    reason = Reason.UPLOAD_TOO_LARGE


class TooManyPixels(TooLarge):
    """The input image (or a TIFF tile decoded whole) has more pixels than MAX_INPUT_PIXELS."""

    reason = Reason.INPUT_PIXELS


class OutputTooLarge(TooLarge):
    """An image the work would make has more pixels than MAX_OUTPUT_PIXELS."""

    reason = Reason.OUTPUT_PIXELS


class EnsembleTooLarge(TooLarge):
    """The input is over MAX_ENSEMBLE_PIXELS, and ensemble=true runs the network 8 times."""

    reason = Reason.ENSEMBLE_PIXELS


class OverMemoryBudget(TooLarge):
    """The image's buffers and windows would not fit the worker's MEMORY_BUDGET_MB even alone."""

    reason = Reason.MEMORY_BUDGET


class OverDeviceMemoryBudget(TooLarge):
    """Not even the smallest tile's window fits the GPU_MEMORY_BUDGET_MB the loaded models leave."""

    reason = Reason.GPU_MEMORY_BUDGET


class Unavailable(Refusal):
    """The server cannot take the request now; the client should retry later, after ``retry_after_s`` where the
    server can tell (how long until a busy worker's place frees), else after the configured RETRY_AFTER_S."""

    status = 503

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def retry_after(self, least_s: int, most_s: float) -> int:
        """The Retry-After to send, in whole seconds: at least ``least_s`` (RETRY_AFTER_S), so that clients told
        of a place about to free do not all come back a moment later; at most ``most_s`` (QUEUE_WAIT_S), as the
        estimate speaks for one worker only, and a retry may reach another worker, or another server, sooner free."""
        return max(least_s, min(math.ceil(self.retry_after_s), math.ceil(most_s)))


class Busy(Unavailable):
    """Every inference slot and queue place of this worker is taken."""

    reason = Reason.BUSY


class QueueTimeout(Busy):
    """The request waited QUEUE_WAIT_S in the queue and no inference slot freed."""

    reason = Reason.QUEUE_TIMEOUT


class NotReady(Unavailable):
    """The requested model is still loading."""

    reason = Reason.NOT_READY


class OutOfDeviceMemory(Unavailable):
    """The GPU had no memory for a window, even at the smallest tile the retries go down to."""

    reason = Reason.OUT_OF_MEMORY


class DeviceFailed(Unavailable):
    """The GPU failed in a way that leaves this process's CUDA context unusable: every later call would fail the
    same way, so the worker stops once its requests in flight have ended and a fresh one, with a new context,
    takes its place."""

    reason = Reason.DEVICE_FAILED


class TimeLimitExceeded(Unavailable):
    """The request ran past the configured time limit and was stopped."""

    reason = Reason.TIME_LIMIT


def refusal_statuses() -> dict[Reason, int]:
    """Each reason with the status of its error class, from the classes themselves: those defined elsewhere
    (core/cost.py, core/shutdown.py, api/errors.py) count once imported, and a reason whose class is not yet
    imported is an error here rather than a series missing from superres_refusals_total."""
    statuses = {cls.reason: cls.status for cls in _subclasses(Refusal) if cls.reason is not None}
    missing = sorted(set(Reason) - statuses.keys())
    if missing:
        raise LookupError(f"no error class imported yet names the reasons {missing}")
    return statuses


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


class Cancelled(Exception):
    """The client went away or asked to stop; the work ends at the next tile."""


class ModelLoadError(Exception):
    """Why a model cannot be served, in words fit for an HTTP answer (other load errors stay in the log)."""
