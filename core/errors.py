"""Errors a request can meet, each carrying the HTTP status that fits it.

The core raises them; the API layer turns any of them into ``{"message": ...}``.
"""
from __future__ import annotations

import math


class ServiceError(Exception):
    """Base class: ``status`` is the HTTP status, ``str(error)`` the message for the user."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    """The request is malformed: a missing part or an option out of range."""

    status = 400


class InvalidImage(InvalidInput):
    """The bytes do not decode as a supported image."""


class UnknownModel(InvalidInput):
    """The request names a model this server does not offer."""


class TooLarge(ServiceError):
    """The upload, the input image or the output image exceeds a configured limit."""

    status = 413


class Unavailable(ServiceError):
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


class NotReady(Unavailable):
    """The requested model is still loading."""


class OutOfDeviceMemory(Unavailable):
    """The GPU had no memory for a window, even at the smallest tile the retries go down to."""


class DeviceFailed(Unavailable):
    """The GPU failed in a way that leaves this process's CUDA context unusable: every later call would fail the
    same way, so the worker stops once its requests in flight have ended and a fresh one, with a new context,
    takes its place."""


class TimeLimitExceeded(Unavailable):
    """The request ran past the configured time limit and was stopped."""


class Cancelled(Exception):
    """The client went away or asked to stop; the work ends at the next tile."""


class ModelLoadError(Exception):
    """Why a model cannot be served, in words fit for an HTTP answer (other load errors stay in the log)."""
