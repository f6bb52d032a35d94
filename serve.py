"""The service as it is deployed: nginx in front, buffering every request and answer, gunicorn behind it.

gunicorn's threads read a request and write its answer themselves, so a client that sends its headers or
its body slowly, or never reads the answer, holds a thread; four such clients take every thread of a worker
and /health stops answering (docs/load.md, "Slow and idle clients", has the measurements). nginx reads whole
requests and buffers whole answers with one event loop, closes clients that stall past CLIENT_TIMEOUT_S,
and hands gunicorn only complete requests over a Unix socket. The image and the manifest run this file;
so does `make run`.

SIGTERM (or SIGINT), from this process's start: nginx stops accepting at once and finishes what it has taken;
gunicorn gets SHUTDOWN_GRACE_S for the requests in flight (see core/shutdown.py). If either process dies, the other is
stopped and this process exits with an error (gunicorn's exit code where it was gunicorn: 3 where a worker failed to
boot, such as one whose GPU failed while the models loaded), so that the container is restarted.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gunicorn.arbiter import Arbiter
from pydantic import ValidationError

from config import ANSWER_MARGIN_S, MEBIBYTE, REQUEST_ID_PATTERN, Settings, invalid_settings, load_settings
from core import backends
from core.errors import Reason
from core.logs import configure_logging

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("superres.serve")
# The answer nginx gives itself for its own refusals, as every route of the app answers: {"message": ...}.
JSON_ERRORS = {
    "unavailable": (503, "the server is starting, restarting or stopping; retry later"),
    "header_too_large": (431, "the request's headers are too large: the limit is {header_bytes} bytes a line, and "
                              "{header_buffers} buffers of {header_bytes} bytes, each holding whole lines, for the "
                              "request line and headers together"),
    "uri_too_long": (414, "the request line is too long: the limit is {header_bytes} bytes"),
    "too_large": (413, "the upload is too large: the limit is {max_upload_bytes} bytes (MAX_UPLOAD_BYTES)"),
    "body_too_large": (413, "the request's body is too large for this route: the limit is {other_body_bytes} bytes "
                            "(images go to /model/predict and /app/upscale)"),
    "spool_full": (503, "the server is busy: it takes {held_requests} at once, as many as "
                        "{spool_mb} MiB of disk for their uploads and answers holds (SPOOL_MB); retry later"),
    "no_answer": (504, "the worker given the request did not answer it within {answer_s:g} s, the longest an answer "
                       "may take (QUEUE_WAIT_S + REQUEST_TIME_LIMIT_S + {answer_margin_s:g} s)"),
    "bad_request": (400, "the request is not valid HTTP/1.0 or HTTP/1.1, or its path leads above the root"),
    "not_found": (404, "no such route: the API is described at /"),  # only the paths of the locations below
    # nginx refuses these two methods itself (any other reaches the app, which answers its own 405).
    "method_not_allowed": (405, "TRACE and CONNECT are not allowed: the routes take GET, HEAD, POST and OPTIONS"),
    "transfer_encoding": (501, "the request's Transfer-Encoding is not supported: send the body as it is, with a "
                               "Content-Length, or chunked"),
    "http_version": (505, "the request's HTTP version is not supported: send HTTP/1.0 or HTTP/1.1"),
    # The 500s nginx gives itself here: a body it could not write to its temporary folder, or a lack of memory or
    # of open files (an upstream connection it could not open); its error log (stderr, at crit or alert) says which.
    "front_error": (500, "nginx, in front of the workers, failed on this request before any worker saw it: it could "
                         "not write the request's body to its temporary folder (the disk full or not writable), or "
                         "ran out of memory or open files; retry later, and if it lasts tell the operator, whose "
                         "nginx error log names the cause (image requests may take SPOOL_MB of that disk)"),
}
# A work request gunicorn did not take (502), by the upstream address nginx tried: every slot taken
# (max_conns) leaves the upstream's name there; a socket no worker listens on, its own address.
WORK_REFUSALS = {"work": "the server is busy: every request slot of its workers is taken; retry later",
                 "default": JSON_ERRORS["unavailable"][1]}
WORK_REFUSED = "work_refused"
# The image routes: nginx's own locations for them, and a label of the refusals it counts (any other path: "other").
WORK_ROUTES = ("/model/predict", "/app/upscale")
OTHER_ROUTE = "other"
# nginx's own refusals that superres_refusals_total counts beside the workers' (docs/deployment.md), by the JSON
# location that answers them: its reason. An upload over MAX_UPLOAD_BYTES is the workers' own reason.
FRONT_REASONS = {"too_large": Reason.UPLOAD_TOO_LARGE.value, "body_too_large": "body_too_large",
                 "spool_full": "spool_full", "no_answer": "worker_timeout", "front_error": "front_error"}
# A request gunicorn did not take (answered 503 by WORK_REFUSED or "unavailable"), by why.
UPSTREAM_REASONS = {"slots": "request_slots_taken", "no_worker": "no_worker"}
# A client too slow (its headers, or a pause in its body, past CLIENT_TIMEOUT_S) is cut off with no answer: nginx
# ends such a request with 408 and sends nothing, whatever error_page says, so no location sets its reason: its
# status does.
CLIENT_TIMEOUT, CLIENT_TIMEOUT_REASON = 408, "client_timeout"
# nginx sends each refusal it counts to serve.py as a syslog datagram on this socket of its runtime folder,
# "<route> <status> <reason>" after this tag.
REFUSAL_SOCKET = "refusals.sock"
REFUSAL_TAG = "superres_refusal"
# A connection that sends no byte before client_header_timeout is closed with no request, so with no access log line:
# only nginx's error log tells of it, at info, on this socket of its runtime folder. A connection idle after a whole
# request (keep-alive) closes unlogged, and one a probe closes at once logs "client closed connection" instead.
CONNECTION_LOG_SOCKET = "connections.sock"
# From its start, which is nginx's own text: other lines end with a request's text, which a client writes.
NO_REQUEST_LINE = re.compile(r" \[info\] \d+#\d+: \*\d+ client timed out \([^)]*\) while waiting for request, "
                             r"client: ([^,]+), server: [^,]*$")
NO_REQUEST = "no_request"
# nginx's own refusals, by nginx's status, each answered by the JSON location of that name.
FRONT_ERROR_PAGES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                     413: "too_large", 414: "uri_too_long", 494: "header_too_large", 500: "front_error",
                     501: "transfer_encoding", 504: "no_answer", 505: "http_version"}
# Refusals that can come before nginx has read a request line's URI (a TLS handshake sent to the plain port, a
# lowercase method, a path above the root, a line too long). A named location needs that URI (nginx answers its
# own HTML 500 instead), so these go to an internal location by path, under this prefix.
BEFORE_URI = frozenset(FRONT_ERROR_PAGES[status] for status in (400, 414, 505))
ERROR_PATH = "/.front-error/"
# choose_device's child: the choice on stdout, or the reason on stderr.
CHOICE_PROGRAM = """
import sys
from config import load_settings
from core import backends
from core.logs import configure_logging
try:
    choice = backends.choose(load_settings())
except backends.DeviceError as error:
    sys.exit(str(error))
print(choice.backend, choice.device)
"""
# What gunicorn's master means by its exit codes (gunicorn.arbiter.Arbiter), for serve.py's line when it exits.
GUNICORN_EXITS = {Arbiter.WORKER_BOOT_ERROR: " (a worker failed to boot; the lines before say why)",
                  Arbiter.APP_LOAD_ERROR: " (the app failed to load; the lines before say why)"}
# Longest request line and header line nginx takes, and how many such buffers hold a request's line and headers
# together, each holding whole lines (large_client_header_buffers): past either, 431.
HEADER_BYTES, HEADER_BUFFERS = 8192, 4
# Connections nginx's one worker process holds, clients' and gunicorn's together (worker_connections).
WORKER_CONNECTIONS = 4096
# Files nginx's worker may hold open (worker_rlimit_nofile): each connection, and a request's body and its answer
# each spooled to a file. A container's soft limit is often 1024, which would fail new connections under load as
# nginx's 500 (front_error) long before worker_connections.
OPEN_FILES = 3 * WORKER_CONNECTIONS
# A request body up to this size stays in nginx's memory (client_body_buffer_size); a larger one goes whole to disk.
BODY_BUFFER_BYTES = MEBIBYTE
# An answer nginx holds in memory (proxy_buffers), before it spools the rest to disk; nginx refuses a spool file
# limit below one buffer (other than 0, none).
ANSWER_BUFFERS, ANSWER_BUFFER_BYTES = 64, 64 * 1024
# The most of an answer's status line and headers nginx takes from a worker (proxy_buffer_size); past it nginx
# answers 502 itself (which the client gets as "starting, restarting or stopping"). nginx's default, one memory
# page (4 KiB), is less than a redirect's Location (api/errors.py), which echoes the request line (up to gunicorn's
# limit_request_line, 4094 bytes), beside the app's own headers; this holds the longest line a client may send
# echoed once and as much again for the app's own headers.
ANSWER_HEAD_BYTES = 2 * HEADER_BYTES


class FrontMisfit(ValueError):
    """Settings nginx cannot be configured for; serve.py refuses to start with the reason."""


class SpoolTooSmall(FrontMisfit):
    """SPOOL_MB cannot hold the workers' request slots at MAX_UPLOAD_BYTES."""


def work_slots(settings: Settings, threads: int) -> int:
    """The image requests the workers take at once (the upstream's max_conns): every thread but one per worker,
    which stays free for /health, /ready and /metrics. With one thread there is no such slot, and nginx reads a
    max_conns of 0 as no limit at all: images would take the thread liveness needs."""
    if threads < 2:
        raise FrontMisfit(f"THREADS={threads} leaves no thread for images: behind nginx each worker keeps one thread "
                          f"free for /health, /ready and /metrics; set THREADS to 2 or more, or 0 for the default")
    return settings.workers * (threads - 1)


@dataclass(frozen=True)
class Spool:
    """What nginx may put on disk for the image requests (/model/predict, /app/upscale), from SPOOL_MB."""
    held_requests: int  # image requests nginx takes at once (limit_conn), 503 beyond
    answer_bytes: int  # the most of each answer spooled to disk (proxy_max_temp_file_size); 0: none
    work_slots: int  # requests the workers take at once (the upstream's max_conns)

    def disk_bytes(self, max_upload_bytes: int) -> int:
        """The most disk the image requests in flight can take (see spool_plan)."""
        return self.held_requests * (max_upload_bytes + self.answer_bytes) + self.work_slots * max_upload_bytes


def spool_plan(settings: Settings, threads: int) -> Spool:
    """How many image requests nginx takes at once, and how much of each answer it spools, within SPOOL_MB.

    With U = MAX_UPLOAD_BYTES, an image request on disk is at most:
      - its body in nginx (client_body_temp_path; only past BODY_BUFFER_BYTES, and freed once the answer starts,
        but counted for the request's whole life): U, for each request nginx takes (``held``);
      - what of its answer outgrows the ANSWER_BUFFERS in memory (proxy_temp_path): proxy_max_temp_file_size,
        set to U (0 where U is under one buffer, which nginx refuses as a limit), for each request nginx takes;
        a larger answer reaches the client at the client's pace, the worker's thread waiting on it;
      - Werkzeug's copy of its upload in the worker that reads it (a SpooledTemporaryFile in /tmp past 500 KB): U,
        for each request the workers take, at most their slots (WORKERS x (THREADS - 1), the upstream's max_conns).
    So held x (U + answer) + slots x U <= SPOOL_MB, and held is the largest whole number that keeps it true:
    held = (SPOOL_MB - slots x U) // (U + answer), and at most WORKER_CONNECTIONS, which bound it anyway (small
    uploads in a large spool: nginx refuses a limit_conn of 65536 or more). Fewer than the slots would leave slots
    idle behind nginx's refusals: start-up fails instead (SpoolTooSmall, naming the settings and the figures).
    """
    upload = settings.max_upload_bytes
    answer = upload if upload >= ANSWER_BUFFER_BYTES else 0
    slots = work_slots(settings, threads)
    spool = settings.spool_mb * MEBIBYTE
    held = min((spool - slots * upload) // (upload + answer), WORKER_CONNECTIONS)
    if held < slots:
        needed_mb = -(-slots * (2 * upload + answer) // MEBIBYTE)
        raise SpoolTooSmall(
            f"SPOOL_MB={settings.spool_mb} cannot hold the workers' {slots} request slots (WORKERS={settings.workers}"
            f" x (THREADS={threads} - 1)) at MAX_UPLOAD_BYTES={upload}: each slot's request may take "
            f"{2 * upload + answer} bytes of disk (its upload in nginx and in the worker, and {answer} bytes of its "
            f"answer spooled by nginx), {needed_mb} MiB for all {slots}; set SPOOL_MB to at least {needed_mb}, or "
            f"lower MAX_UPLOAD_BYTES, WORKERS or THREADS")
    return Spool(held_requests=held, answer_bytes=answer, work_slots=slots)


def image_requests(count: int) -> str:
    """``count`` image requests, in words: "1 image request", "10 image requests"."""
    return f"{count} image request{'' if count == 1 else 's'}"


def nginx_config(settings: Settings, runtime: Path, upstream: str, threads: int) -> str:
    """nginx's configuration for ``settings``: listen on HOST:PORT, pass complete requests to ``upstream``,
    whose workers run ``threads`` threads each."""
    spool = spool_plan(settings, threads)
    other_body_bytes = min(settings.max_upload_bytes, BODY_BUFFER_BYTES)
    # The most a worker may take to read a request and answer it (an image's answer comes only when it is done).
    answer_s = settings.longest_answer_s
    facts = {"header_bytes": HEADER_BYTES, "header_buffers": HEADER_BUFFERS,
             "max_upload_bytes": settings.max_upload_bytes,
             "other_body_bytes": other_body_bytes,
             "answer_s": answer_s, "answer_margin_s": ANSWER_MARGIN_S,
             "held_requests": image_requests(spool.held_requests), "spool_mb": settings.spool_mb}
    named = "\n".join(_json_location(name, status, message.format(**facts), settings.retry_after_s)
                      for name, (status, message) in JSON_ERRORS.items())
    # The image requests' share of the disk (spool_plan): each location counts its requests from the headers on,
    # before the body is read, in one zone of a constant key (an empty key, as $server_name is here, counts nothing).
    # Every other route takes no upload: its bodies stay in memory and its answers (small) are never spooled.
    work = (f"{_error_pages(WORK_REFUSED, busy='spool_full')} limit_conn work_requests {spool.held_requests}; "
            f"proxy_max_temp_file_size {spool.answer_bytes}; proxy_pass http://work;")
    other = (f"{_error_pages('unavailable', too_large='body_too_large')} client_max_body_size {other_body_bytes}; "
             f"proxy_max_temp_file_size 0; proxy_pass http://ops;")
    work_locations = "\n".join(f"        location = {route} {{ {work} }}" for route in WORK_ROUTES)
    client_timeout = nginx_time(settings.client_timeout_s)
    # Started as root, nginx's workers would become "nobody" and could not open gunicorn's socket.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# Written by serve.py from the settings; see config.py.
{user}worker_processes 1;
worker_rlimit_nofile {OPEN_FILES};
daemon off;
pid {runtime}/nginx.pid;
error_log stderr warn;
error_log syslog:server=unix:{runtime / CONNECTION_LOG_SOCKET},nohostname info;
events {{ worker_connections {WORKER_CONNECTIONS}; }}
http {{
    client_body_temp_path {runtime}/body;
    proxy_temp_path {runtime}/proxy;
    fastcgi_temp_path {runtime}/fastcgi;
    uwsgi_temp_path {runtime}/uwsgi;
    scgi_temp_path {runtime}/scgi;
    server_tokens off;
    default_type application/octet-stream;
    # One JSON line for each request nginx answers itself (the app logs the others).
    log_format json escape=json '{{"time":"$time_iso8601","level":"INFO","logger":"superres.front",'
        '"message":"request","method":"$request_method","path":"$uri","status":$status,'
        '"duration_s":$request_time,"input_bytes":"$content_length","remote_addr":"$remote_addr",'
        '"request_id":"$superres_request_id","reason":"$refusal_reason"}}';
    log_format refusal '$refusal_route $status $refusal_reason';
    # Each JSON location of a counted refusal sets $front_refusal; the other requests leave it unset.
    uninitialized_variable_warn off;
    map $status $status_refusal {{ {CLIENT_TIMEOUT} {CLIENT_TIMEOUT_REASON}; default ""; }}
    map $front_refusal $refusal_reason {{ "" $status_refusal; default $front_refusal; }}
    map $uri $refusal_route {{ {" ".join(f"{route} {route};" for route in WORK_ROUTES)} default {OTHER_ROUTE}; }}
    {_upstream_refusal_map()}
    # gunicorn's answers are the app's to log; a request gunicorn did not take or answer, nginx's.
    map $upstream_status $answered_by_front {{ "" 1; default $refusal_reason; }}
    # The caller's X-Request-ID where the app would keep it, else nginx's own: one id in nginx's line or the
    # app's, and in the answer, for every request (an id nginx made reaches the app as the caller's would).
    map $http_x_request_id $superres_request_id {{ "~^{REQUEST_ID_PATTERN}$" $http_x_request_id; default $request_id; }}
    {_work_refusal_map()}
    access_log /dev/stderr json if=$answered_by_front;
    access_log syslog:server=unix:{runtime / REFUSAL_SOCKET},nohostname,tag={REFUSAL_TAG} refusal if=$refusal_reason;

    client_header_timeout {client_timeout};
    client_body_timeout {client_timeout};
    send_timeout {client_timeout};
    keepalive_timeout {client_timeout};
    reset_timedout_connection on;
    client_max_body_size {settings.max_upload_bytes};
    client_body_buffer_size {BODY_BUFFER_BYTES};
    large_client_header_buffers {HEADER_BUFFERS} {HEADER_BYTES};
    proxy_request_buffering on;
    proxy_buffering on;
    proxy_buffers {ANSWER_BUFFERS} {ANSWER_BUFFER_BYTES};
    proxy_buffer_size {ANSWER_HEAD_BYTES};
    # A worker whose threads are all busy takes a request's connection and reads it only when one is free: waiting
    # on it to read is waiting on it to answer, and a 504 either way says that it did not answer within answer_s.
    proxy_read_timeout {nginx_time(answer_s)};
    proxy_send_timeout {nginx_time(answer_s)};
    # gunicorn's own answers, its 503s among them, pass as they are: error_page takes only nginx's own.
    proxy_intercept_errors off;
    limit_conn_zone work zone=work_requests:64k;
    limit_conn_log_level warn;

    upstream ops {{ server unix:{upstream}; }}
    upstream work {{ zone work 64k; server unix:{upstream} max_conns={spool.work_slots}; }}

    server {{
        listen {_listen_address(settings.host, settings.port)} backlog=1024;
        add_header X-Content-Type-Options nosniff always;
        proxy_set_header Host $http_host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Request-ID $superres_request_id;
        {_error_pages("unavailable")}

        location / {{ {other} }}
{work_locations}
{named}
{_json_location(WORK_REFUSED, 503, "$" + WORK_REFUSED, settings.retry_after_s)}
    }}
}}
"""


def nginx_time(seconds: float) -> str:
    """``seconds`` as nginx reads a time: whole milliseconds (it refuses a fraction such as "2.5s")."""
    return f"{round(seconds * 1000)}ms"


def _listen_address(host: str, port: int) -> str:
    """nginx's listen address for HOST and PORT. An IPv6 address goes in brackets; the IPv6 wildcard takes IPv4
    too, as "::" does for other servers on Linux (nginx's own default for it is IPv6 alone)."""
    if ":" not in host:
        return f"{host}:{port}"
    return f"[{host}]:{port}" + (" ipv6only=off" if host == "::" else "")


def _error_pages(no_upstream: str, too_large: str = "too_large", busy: str | None = None) -> str:
    """The error_page lines of a server or location block: nginx's own refusals answered as JSON (a body over the
    block's limit by the location ``too_large``, its own 503 by ``busy``, a worker that did not answer in time by
    the location no_answer), and a request gunicorn did not take (502) by the location ``no_upstream``. A block with
    any error_page of its own inherits none from the server, so each block that sets one must set them all."""
    pages = {**FRONT_ERROR_PAGES, 413: too_large, **({503: busy} if busy else {})}
    return " ".join([*(f"error_page {status} = {_error_location(name)};" for status, name in pages.items()),
                     f"error_page 502 = @{no_upstream};"])


def _error_location(name: str) -> str:
    """Where nginx's refusal ``name`` is answered: by path where it can come before the URI, else by name."""
    return ERROR_PATH + name if name in BEFORE_URI else "@" + name


def _work_refusal_map() -> str:
    """The variable WORK_REFUSED: the message of a work request gunicorn did not take."""
    cases = " ".join(f'{address} "{message}";' for address, message in WORK_REFUSALS.items())
    return f"map $upstream_addr ${WORK_REFUSED} {{ {cases} }}"


def _upstream_refusal_map() -> str:
    """The variable $upstream_refusal: why gunicorn did not take a request (every slot taken leaves the work
    upstream's name in $upstream_addr)."""
    return (f'map "$upstream_status $upstream_addr" $upstream_refusal {{ "~ work$" {UPSTREAM_REASONS["slots"]}; '
            f'default {UPSTREAM_REASONS["no_worker"]}; }}')


def _refusal_reason(name: str) -> str | None:
    """The reason the JSON location ``name`` counts its refusals by, if it counts them."""
    return "$upstream_refusal" if name in (WORK_REFUSED, "unavailable") else FRONT_REASONS.get(name)


def _json_location(name: str, status: int, message: str, retry_after_s: int) -> str:
    escaped = message.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    retry = f"add_header Retry-After {retry_after_s} always; " if status == 503 else ""
    reason = _refusal_reason(name)
    counted = f"set $front_refusal {reason}; " if reason else ""
    place = _error_location(name)
    block = f"= {place} {{ internal;" if place.startswith("/") else f"{place} {{"
    return (f"        location {block} default_type application/json; {retry}"
            f"add_header X-Content-Type-Options nosniff always; add_header X-Request-ID $superres_request_id always; "
            f"{counted}return {status} '{{\"message\": \"{escaped}\"}}\\n'; }}")


class _Stop:
    """SIGTERM and SIGINT from this process's start: as a container's first process it has no default action for
    them, so without a handler until gunicorn listened, a stop in the first seconds would be ignored (or, outside
    a container, would leave gunicorn running). The signal goes on to each child started so far (nginx: graceful
    quit, gunicorn: graceful stop); the one started after it sees ``requested``."""

    def __init__(self) -> None:
        self.requested = False
        self.children: list[tuple[subprocess.Popen, signal.Signals]] = []
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)

    def __call__(self, signum: int, _frame: object) -> None:
        self.requested = True
        log.info("serve.py: %s received: nginx stops accepting, gunicorn finishes what is in flight",
                 signal.Signals(signum).name)
        for process, stop in self.children:
            if process.poll() is None:
                process.send_signal(stop)

    def start(self, process: subprocess.Popen, stop: signal.Signals) -> subprocess.Popen:
        """``process`` stopped with ``stop`` on a stop, at once where the stop came while it was started."""
        self.children.append((process, stop))
        if self.requested:
            process.send_signal(stop)
        return process


def main() -> int:
    stop = _Stop()
    try:
        settings = load_settings()
    except ValidationError as error:
        print(f"serve.py: {invalid_settings(error)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        choice = choose_device()
    except backends.DeviceError as error:
        print(error, file=sys.stderr)
        return 2
    if stop.requested:
        return 0
    log.info("networks run on %s through %s", choice.device, choice.backend)
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if nginx is None:
        print("serve.py needs nginx in front of gunicorn (Debian: apt-get install nginx-light)", file=sys.stderr)
        return 2
    threads = settings.threads_for(choice.device)
    try:
        spool_plan(settings, threads)
    except FrontMisfit as error:
        print(f"serve.py: {error}", file=sys.stderr)
        return 2
    runtime = Path(tempfile.mkdtemp(prefix="superres-serve-"))
    upstream = runtime / "gunicorn.sock"
    (runtime / "nginx.conf").write_text(nginx_config(settings, runtime, str(upstream), threads))
    # The workers' metrics folder, where this process counts nginx's refusals too; gunicorn empties it at start.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.prometheus_multiproc_dir or runtime / "metrics")
    gunicorn = stop.start(subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                                            "--bind", f"unix:{upstream}", "app:app"], cwd=ROOT,
                                           env={**os.environ, "THREADS": str(threads)}), signal.SIGTERM)
    front = counter = None
    try:
        if not _wait_for(upstream, gunicorn, stop):
            code = gunicorn.wait()  # a stop may have come before gunicorn's own handlers: no error then
            return 0 if stop.requested else code or 1
        counter = FrontRefusalCounter(runtime)  # once gunicorn has emptied the folder
        front = stop.start(subprocess.Popen([nginx, "-e", "stderr", "-p", str(runtime), "-c",
                                             str(runtime / "nginx.conf")]), signal.SIGQUIT)
        return _supervise(gunicorn, front, stop)
    finally:
        for process, signum in ((front, signal.SIGQUIT), (gunicorn, signal.SIGTERM)):
            if process is not None and process.poll() is None:
                process.send_signal(signum)
        for process in (front, gunicorn):
            if process is not None:
                _wait_or_kill(process, settings.shutdown_grace_s + 10)
        if counter is not None:
            counter.close()
        shutil.rmtree(runtime, ignore_errors=True)


def front_series() -> list[tuple[str, int, str]]:
    """Every (route, status, reason) of nginx's own refusals: on the image routes, an upload over MAX_UPLOAD_BYTES,
    a full spool and any request gunicorn did not take; on the others, a body too large and no worker (their
    upstream has no slot limit); on every route, a worker's answer not in time, nginx's own failure (500) and a
    client too slow; and a connection that sent no request, which has no route."""
    unavailable = JSON_ERRORS["unavailable"][0]
    late = (JSON_ERRORS["no_answer"][0], FRONT_REASONS["no_answer"])
    failed = (JSON_ERRORS["front_error"][0], FRONT_REASONS["front_error"])
    slow = (CLIENT_TIMEOUT, CLIENT_TIMEOUT_REASON)
    work = [*((JSON_ERRORS[name][0], FRONT_REASONS[name]) for name in ("too_large", "spool_full")),
            *((unavailable, reason) for reason in UPSTREAM_REASONS.values()), late, failed, slow]
    other = [(JSON_ERRORS["body_too_large"][0], FRONT_REASONS["body_too_large"]),
             (unavailable, UPSTREAM_REASONS["no_worker"]), late, failed, slow]
    return ([(route, status, reason) for route in WORK_ROUTES for status, reason in work]
            + [(OTHER_ROUTE, status, reason) for status, reason in (*other, (CLIENT_TIMEOUT, NO_REQUEST))])


class FrontRefusalCounter:
    """Counts nginx's own refusals in superres_refusals_total, as the workers count theirs, so that the alerts on it
    see them: nginx sends each as a syslog datagram to REFUSAL_SOCKET in its runtime folder ``runtime``, and its
    error log to CONNECTION_LOG_SOCKET there, where a connection that sent no request is told of (its syslog never
    blocks its event loop: a datagram a socket has no room for is dropped, and nginx says so in its error log; the
    error log's many lines have their own socket, so that they crowd out no refusal). A thread for each socket adds
    what it counts to this process's file in PROMETHEUS_MULTIPROC_DIR, which /metrics adds up with the workers'."""

    def __init__(self, runtime: Path) -> None:
        # Here, not at the top: prometheus-client reads PROMETHEUS_MULTIPROC_DIR at import, and main sets it first.
        import monitoring

        self._counter = monitoring.REFUSALS
        self._series = {(route, str(status), reason) for route, status, reason in front_series()}
        for series in self._series:
            self._counter.labels(*series)  # at 0 from the start, as the workers' series
        self._listeners = [_DatagramListener(runtime / REFUSAL_SOCKET, self._count_refusal),
                           _DatagramListener(runtime / CONNECTION_LOG_SOCKET, self._count_no_request)]

    def _count_refusal(self, datagram: str) -> None:
        series = tuple(datagram.partition(f"{REFUSAL_TAG}: ")[2].split())
        if series in self._series:
            self._counter.labels(*series).inc()
        else:
            log.warning("serve.py: nginx reported a refusal outside superres_refusals_total's series: %r", datagram)

    def _count_no_request(self, datagram: str) -> None:
        """Counts, and logs as nginx logs the requests it answers itself, a line of nginx's error log that tells of a
        connection closed at CLIENT_TIMEOUT_S without a request; every other line is nginx's own business."""
        if (idle := NO_REQUEST_LINE.search(datagram)) is None:
            return
        self._counter.labels(OTHER_ROUTE, str(CLIENT_TIMEOUT), NO_REQUEST).inc()
        logging.getLogger("superres.front").info("no request", extra={
            "status": CLIENT_TIMEOUT, "remote_addr": idle.group(1), "reason": NO_REQUEST})

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()


class _DatagramListener:
    """A datagram socket bound at ``path``, each datagram's text handed to ``handle`` by a thread of its own."""

    def __init__(self, path: Path, handle: Callable[[str], None]) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._handle = handle
        self._thread = threading.Thread(target=self._listen, name=f"front-{path.stem}", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while datagram := self._socket.recv(4096):  # empty once close shuts the socket down
            self._handle(datagram.decode(errors="replace"))

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join()
        self._socket.close()


def choose_device() -> backends.Choice:
    """DEVICE and BACKEND resolved from the environment as a worker resolves them; DeviceError says why not.

    Where the driver's files say a GPU may be there, the check imports torch, a few hundred MiB resident: it runs
    in a child process, so that this process, which lives as long as the container, does not keep them.
    """
    done = subprocess.run([sys.executable, "-c", CHOICE_PROGRAM], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise backends.DeviceError(done.stderr.strip())
    backend, device = done.stdout.split()
    return backends.Choice(backend, device)


def _wait_for(upstream: Path, gunicorn: subprocess.Popen, stop: _Stop) -> bool:
    """True once gunicorn listens on its socket; False if it exited or a stop came first."""
    while not upstream.exists():
        if gunicorn.poll() is not None or stop.requested:
            return False
        time.sleep(0.05)
    return True


def _supervise(gunicorn: subprocess.Popen, front: subprocess.Popen, stop: _Stop) -> int:
    """Return when both have ended after a stop, or when one of them ended without one: then with gunicorn's exit
    code where it ended (3 where a worker failed to boot, such as one whose GPU failed while the models loaded),
    else 1."""
    while gunicorn.poll() is None and front.poll() is None:
        time.sleep(0.2)
    if stop.requested:
        return gunicorn.wait() or front.wait()
    if gunicorn.returncode is not None:
        log.error("serve.py: gunicorn exited unexpectedly with code %s%s; stopping nginx", gunicorn.returncode,
                  GUNICORN_EXITS.get(gunicorn.returncode, ""))
        return gunicorn.returncode if gunicorn.returncode > 0 else 1  # a signal's is negative
    log.error("serve.py: nginx exited unexpectedly with code %s; stopping gunicorn", front.returncode)
    return 1


def _wait_or_kill(process: subprocess.Popen, timeout_s: float) -> None:
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
