"""The command line's remote mode: files sent to running servers' ``POST /model/predict``.

Each file goes to the server with the fewest requests in flight. A 503 waits for its
Retry-After and tries again, on a server that has not answered 503 lately if one is free; a
connection error, a timeout or another 5xx marks that server down for a while and tries the
file on another one, a bounded number of times, and once every server has failed that many
requests in a row the files left are not sent; a 4xx is the file's own error and is not retried. Nothing here imports
TensorFlow: a laptop can drive a cluster without the service's heavy dependencies loaded.
"""
from __future__ import annotations

import email.utils
import http.client
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import requests


# A server marked down gets no files for this long; a restarted pod is usually back within it.
DOWN_FOR_S = 30.0
CONNECT_TIMEOUT_S = 10.0
# When a 503 carries no usable Retry-After; the service itself always sends one (RETRY_AFTER_S).
FALLBACK_RETRY_AFTER_S = 5.0
# A proxy's answers when no server answered it behind: as a connection error, they count towards ServersDown.
NO_SERVER_BEHIND = (502, 504)
# The shortest pause after a 503: "Retry-After: 0" or a date past would otherwise resend the file at once,
# over and over, without ever reaching --max-wait.
MIN_RETRY_AFTER_S = 1.0
# An answer goes to its file in pieces of this size as it arrives, instead of whole into memory first.
CHUNK_BYTES = 64 * 1024


class FileFailed(Exception):
    """A file that cannot be upscaled: its own 4xx, or every attempt used up."""


class ServersDown(Exception):
    """Every server left as many requests in a row unanswered as a file may try: the files left are not sent."""


@dataclass
class Server:
    url: str
    # Its MAX_UPLOAD_BYTES, from /model/metadata: a larger file goes to a server that takes it.
    max_upload_bytes: float = float("inf")
    in_flight: int = 0
    down_until: float = 0.0
    done: int = 0
    # Why the server was marked down, each time it was.
    downs: list[str] = field(default_factory=list)
    # Requests it has not answered (no connection, no answer, a proxy's 502 or 504) since the last it answered:
    # with every server past --retries, none is coming back soon.
    failed_in_a_row: int = 0
    # Until then it answered 503: other servers get the files first.
    busy_until: float = 0.0


@dataclass
class _Tries:
    """One file's history: requests sent, servers that failed it, seconds waited for busy servers."""

    sent: int = 0
    failed_on: list[str] = field(default_factory=list)
    waited: float = 0.0


@dataclass(frozen=True)
class Upscaled:
    server: str
    requests: int


# Takes an answer's pieces as they arrive, and must store none of them unless it gets them all:
# a connection that breaks mid-answer raises from the iteration and the file is tried again.
Save = Callable[[Iterable[bytes]], None]


def server_url(text: str) -> str:
    """``host:port`` or a full URL, without a trailing slash."""
    url = text if "://" in text else f"http://{text}"
    return url.rstrip("/")


@dataclass(frozen=True)
class Offer:
    """What a server's /model/metadata promises: the model the files will run on, and its upload limit."""

    model: str
    max_upload_bytes: int
    # The server's models, and the denoise levels of each, by which it checks a request's options.
    models: tuple[str, ...] = ()
    denoise_levels: dict[str, tuple[str, ...]] = field(default_factory=dict)


# A model in these states is on its way to ready: its server answers 503 until then, which the files wait out.
LOADING_STATES = ("pending", "loading")


def probe(url: str, model: str | None) -> tuple[Offer | None, str | None]:
    """``(offer, None)`` when the server offers ``model`` (or its default) ready, ``(offer, note)`` while it
    still loads, else ``(None, why not)``."""
    try:
        response = requests.get(f"{url}/model/metadata", timeout=CONNECT_TIMEOUT_S)
    except requests.RequestException as error:
        return None, f"cannot connect ({_describe(error, CONNECT_TIMEOUT_S)})"
    if response.status_code != 200:
        return None, f"GET /model/metadata answered HTTP {response.status_code}"
    try:
        metadata = response.json()
        states = {entry["id"]: entry["state"] for entry in metadata["models"]}
        chosen = model or metadata["default_model"]
        max_upload_bytes = int(metadata["limits"]["max_upload_bytes"])
        denoise = next((option for option in metadata.get("options", ()) if option["name"] == "denoise"), {})
        denoise_levels = {name: tuple(levels) for name, levels in denoise.get("choices_by_model", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, "GET /model/metadata did not answer this service's metadata"
    if chosen not in states:
        return None, f"does not offer model {chosen} (it offers {', '.join(states)})"
    offer = Offer(chosen, max_upload_bytes, tuple(states), denoise_levels)
    if states[chosen] in LOADING_STATES:
        # Started beside its servers, or during a rolling restart, a run would otherwise leave a server out to the end.
        return offer, f"model {chosen} is still loading there: it gets files once ready"
    if states[chosen] != "ready":
        return None, f"model {chosen} is not ready there ({states[chosen]})"
    return offer, None


class Cluster:
    """The usable servers, which file goes where, and the retry rules."""

    def __init__(self, urls: list[str], jobs: int, retries: int, timeout_s: float, max_wait_s: float,
                 upload_limits: Mapping[str, int] | None = None) -> None:
        """``upload_limits``: each server's largest upload by URL (unknown: no limit)."""
        self.servers = [Server(url, (upload_limits or {}).get(url, float("inf"))) for url in urls]
        self.per_server = -(-jobs // len(urls))
        self.retries = retries
        self.timeout_s = timeout_s
        self.max_wait_s = max_wait_s
        self.retried = 0  # files sent more than once
        self.last_gone = ""  # why a server last failed to answer
        self._changed = threading.Condition()

    def report(self) -> list[str]:
        """What each server did, and how many files needed more than one request."""
        lines = []
        for server in self.servers:
            downs = f", marked down {len(server.downs)}x (last: {server.downs[-1]})" if server.downs else ""
            lines.append(f"  {server.url}: {server.done} files{downs}")
        return [*lines, f"  retried {self.retried} files"]

    def upscale(self, data: bytes, filename: str, fields: dict[str, str], save: Save) -> Upscaled:
        """The upscaled file, passed to ``save``, from whichever server could do it; FileFailed with the
        reason otherwise."""
        tries = _Tries()
        try:
            while (done := self._try_once(data, filename, fields, save, tries)) is None:
                pass
            return done
        finally:
            if tries.sent > 1:
                with self._changed:
                    self.retried += 1

    def _try_once(self, data: bytes, filename: str, fields: dict[str, str], save: Save,
                  tries: _Tries) -> Upscaled | None:
        """One request for the file; None when it is to be tried again."""
        server, unanswered = self._checkout(len(data), avoid=tries.failed_on)
        tries.sent += 1
        try:
            with requests.post(f"{server.url}/model/predict", files={"image": (_sendable(filename), data)},
                               data=fields, timeout=(CONNECT_TIMEOUT_S, self.timeout_s), stream=True,
                               # A new connection per file: a Kubernetes Service balances
                               # connections, not requests, so this spreads files over its pods.
                               headers={"Connection": "close"}) as response:
                self._heard_from(server, response.status_code)
                if response.status_code == 200:
                    save(response.iter_content(CHUNK_BYTES))
                    with self._changed:
                        server.done += 1
                    return Upscaled(server.url, tries.sent)
                status, message, retry_after = response.status_code, _message(response), _retry_after(response)
        except requests.RequestException as error:
            self._mark_down(server, _describe(error, self.timeout_s), tries, unanswered)
            return None
        finally:
            self._release(server)
        if status == 503:
            self._mark_busy(server, retry_after)
            self._wait_until_retry(retry_after, message, tries)
        elif status >= 500:
            self._mark_down(server, f"HTTP {status}: {message}", tries,
                            unanswered if status in NO_SERVER_BEHIND else None)
        else:
            raise FileFailed(message)
        return None

    def _wait_until_retry(self, pause: float, message: str, tries: _Tries) -> None:
        """Sleep for the 503's Retry-After; FileFailed once the file would wait past --max-wait."""
        if tries.waited + pause > self.max_wait_s:
            raise FileFailed(f"the servers stayed busy for more than {self.max_wait_s:g} s (--max-wait); "
                             f"last answer: {message}")
        time.sleep(pause)
        tries.waited += pause

    def _heard_from(self, server: Server, status: int) -> None:
        if status not in NO_SERVER_BEHIND:
            with self._changed:
                server.failed_in_a_row = 0

    def _mark_busy(self, server: Server, pause: float) -> None:
        with self._changed:
            server.busy_until = max(server.busy_until, time.monotonic() + pause)

    def _mark_down(self, server: Server, reason: str, tries: _Tries, unanswered: int | None) -> None:
        """No files to ``server`` for a while; FileFailed once the file has used all its attempts.

        ``unanswered``: the server's ``failed_in_a_row`` when the request was sent, None when it answered (a 500
        about this file). Of the requests in flight when it went away, only the first counts: ``--jobs 16`` on
        one Service whose pod died would otherwise count 16 at once, and every later round is DOWN_FOR_S apart.
        """
        with self._changed:
            server.down_until = time.monotonic() + DOWN_FOR_S
            server.downs.append(reason)
            if unanswered is not None and unanswered == server.failed_in_a_row:
                server.failed_in_a_row += 1
                self.last_gone = reason
            self._changed.notify_all()
        tries.failed_on.append(server.url)
        if len(tries.failed_on) > self.retries:
            raise FileFailed(f"{reason} (gave up after {len(tries.failed_on)} attempts)")

    def _checkout(self, size: int, avoid: list[str]) -> tuple[Server, int]:
        """The up server that takes a file of ``size`` bytes with the fewest files in flight, preferring those
        that have not answered 503 lately and those this file has not failed on, with its ``failed_in_a_row``;
        ServersDown once every server has left too many requests in a row unanswered.

        Each server takes at most its share of the requests in flight: when one is down, the
        others are not sent more than their queues hold (which would only earn 503s).
        """
        with self._changed:
            while True:
                if all(server.failed_in_a_row > self.retries for server in self.servers):
                    raise ServersDown(f"every server left {self.retries + 1} requests in a row unanswered "
                                      f"(last: {self.last_gone})")
                now = time.monotonic()
                # The caller reads no file larger than the largest limit: some server takes it.
                takers = [server for server in self.servers if server.max_upload_bytes >= size]
                up = [server for server in takers if server.down_until <= now]
                free = [server for server in up if server.in_flight < self.per_server]
                if free:
                    server = min(free, key=lambda s: (s.busy_until > now, s.url in avoid, s.in_flight, s.done))
                    server.in_flight += 1
                    return server, server.failed_in_a_row
                self._changed.wait(None if up else min(server.down_until for server in takers) - now)

    def _release(self, server: Server) -> None:
        with self._changed:
            server.in_flight -= 1
            self._changed.notify_all()


def _sendable(filename: str) -> str:
    """The name as the form can carry it: a name that is not UTF-8 on disk (an old camera's Latin-1 ``café.jpg``)
    holds surrogate escapes, which no encoder takes; its odd bytes become U+FFFD (the server reads no name)."""
    return os.fsencode(filename).decode("utf-8", "replace")


def _retry_after(response: requests.Response) -> float:
    """Retry-After in seconds: a number, or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return max(MIN_RETRY_AFTER_S, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return FALLBACK_RETRY_AFTER_S
    return max(MIN_RETRY_AFTER_S, (when - datetime.now(timezone.utc)).total_seconds())


def _message(response: requests.Response) -> str:
    """The service's ``{"message": ...}``, or the start of whatever else came back."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else f"HTTP {response.status_code}: {response.text[:200].strip()}"


def _describe(error: requests.RequestException, timeout_s: float) -> str:
    """A short reason ('connection refused', ...) rather than urllib3's nested exceptions."""
    if isinstance(error, requests.ConnectTimeout):
        return f"no connection within {CONNECT_TIMEOUT_S:g} s"
    if isinstance(error, requests.ReadTimeout):
        return f"no answer within {timeout_s:g} s (--timeout)"
    causes = _causes(error)
    for kind, reason in REASONS:
        if any(isinstance(cause, kind) for cause in causes):
            return reason
    return f"{type(error).__name__}: {error}"


REASONS = (
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
    (http.client.RemoteDisconnected, "the connection closed without an answer"),
    (http.client.IncompleteRead, "the connection closed in the middle of the answer"),
)


def _causes(error: BaseException) -> list[BaseException]:
    """Every exception ``error`` wraps, through causes, contexts and urllib3's ``reason`` and args."""
    found: list[BaseException] = []
    todo: list[object] = [error]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or any(item is seen for seen in found):
            continue
        found.append(item)
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return found
