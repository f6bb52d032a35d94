"""The service as it is deployed: nginx in front, buffering every request and answer, gunicorn behind it.

gunicorn's threads read a request and write its answer themselves, so a client that sends its headers or
its body slowly, or never reads the answer, holds a thread; four such clients take every thread of a worker
and /health stops answering (docs/load.md, "Slow and idle clients", has the measurements). nginx reads whole
requests and buffers whole answers with one event loop, closes clients that stall past CLIENT_TIMEOUT_S,
and hands gunicorn only complete requests over a Unix socket. The image and the manifest run this file;
so does `make run`.

SIGTERM (or SIGINT), from this process's start: nginx stops accepting at once and finishes what it has taken;
gunicorn gets SHUTDOWN_GRACE_S for the requests in flight (see core/shutdown.py). If either process dies, the other is
stopped and this process exits with an error, so that the container is restarted.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from config import Settings, load_settings
from core import backends

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("superres.serve")
# The answer nginx gives itself for its own refusals, as every route of the app answers: {"message": ...}.
JSON_ERRORS = {
    "unavailable": (503, "the server is starting, restarting or stopping; retry later"),
    "header_too_large": (431, "the request's headers are too large: the limit is {header_bytes} bytes a line"),
    "uri_too_long": (414, "the request line is too long: the limit is {header_bytes} bytes"),
    "too_large": (413, "the upload is too large: the limit is {max_upload_bytes} bytes (MAX_UPLOAD_BYTES)"),
    "timeout": (408, "the request did not arrive within {client_timeout_s:g} s (CLIENT_TIMEOUT_S)"),
    "bad_request": (400, "the request is not valid HTTP/1.1"),
}
# A work request gunicorn did not take (502, 504), by the upstream address nginx tried: every slot taken
# (max_conns) leaves the upstream's name there; a socket no worker listens on, its own address.
WORK_REFUSALS = {"work": "the server is busy: every request slot of its workers is taken; retry later",
                 "default": JSON_ERRORS["unavailable"][1]}
WORK_REFUSED = "work_refused"
# nginx's own refusals, by nginx's status, each answered by the JSON location of that name.
FRONT_ERROR_PAGES = {400: "bad_request", 408: "timeout", 413: "too_large", 414: "uri_too_long",
                     494: "header_too_large"}
# choose_device's child: the choice on stdout, or the reason on stderr.
CHOICE_PROGRAM = """
import sys
from config import load_settings
from core import backends
try:
    choice = backends.choose(load_settings())
except backends.DeviceError as error:
    sys.exit(str(error))
print(choice.backend, choice.device)
"""
# Longest request line and header line nginx takes (large_client_header_buffers).
HEADER_BYTES = 8192


def nginx_config(settings: Settings, runtime: Path, upstream: str, threads: int) -> str:
    """nginx's configuration for ``settings``: listen on HOST:PORT, pass complete requests to ``upstream``,
    whose workers run ``threads`` threads each."""
    facts = {"header_bytes": HEADER_BYTES, "max_upload_bytes": settings.max_upload_bytes,
             "client_timeout_s": settings.client_timeout_s}
    named = "\n".join(_json_location(name, status, message.format(**facts), settings.retry_after_s)
                      for name, (status, message) in JSON_ERRORS.items())
    # Work requests may take every thread but one per worker: that one is always free for /health,
    # /ready and /metrics, so liveness never waits behind images.
    work_slots = settings.workers * (threads - 1)
    # An image's answer comes only when it is done.
    upstream_s = int(settings.longest_answer_s)
    # Started as root, nginx's workers would become "nobody" and could not open gunicorn's socket.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# Written by serve.py from the settings; see config.py.
{user}worker_processes 1;
daemon off;
pid {runtime}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
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
        '"request_id":"$http_x_request_id"}}';
    map $upstream_status $answered_by_front {{ "" 1; default 0; }}
    {_work_refusal_map()}
    access_log /dev/stderr json if=$answered_by_front;

    client_header_timeout {settings.client_timeout_s:g}s;
    client_body_timeout {settings.client_timeout_s:g}s;
    send_timeout {settings.client_timeout_s:g}s;
    keepalive_timeout {settings.client_timeout_s:g}s;
    reset_timedout_connection on;
    client_max_body_size {settings.max_upload_bytes};
    client_body_buffer_size 1m;
    large_client_header_buffers 4 {HEADER_BYTES};
    proxy_request_buffering on;
    proxy_buffering on;
    proxy_buffers 64 64k;
    proxy_read_timeout {upstream_s}s;
    proxy_send_timeout {settings.client_timeout_s:g}s;
    proxy_intercept_errors off;

    upstream ops {{ server unix:{upstream}; }}
    upstream work {{ zone work 64k; server unix:{upstream} max_conns={work_slots}; }}

    server {{
        listen {_listen_address(settings.host, settings.port)} backlog=1024;
        add_header X-Content-Type-Options nosniff always;
        proxy_set_header Host $http_host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        {_error_pages("unavailable")}

        location / {{ proxy_pass http://ops; }}
        location = /model/predict {{ {_error_pages(WORK_REFUSED)} proxy_pass http://work; }}
        location = /app/upscale {{ {_error_pages(WORK_REFUSED)} proxy_pass http://work; }}
{named}
{_json_location(WORK_REFUSED, 503, "$" + WORK_REFUSED, settings.retry_after_s)}
    }}
}}
"""


def _listen_address(host: str, port: int) -> str:
    """nginx's listen address for HOST and PORT. An IPv6 address goes in brackets; the IPv6 wildcard takes IPv4
    too, as "::" does for other servers on Linux (nginx's own default for it is IPv6 alone)."""
    if ":" not in host:
        return f"{host}:{port}"
    return f"[{host}]:{port}" + (" ipv6only=off" if host == "::" else "")


def _error_pages(no_upstream: str) -> str:
    """The error_page lines of a server or location block: nginx's own refusals answered as JSON, and no answer
    from gunicorn (502, 504) by the location ``no_upstream``. A block with any error_page of its own inherits none
    from the server, so each block that sets one must set them all."""
    pages = [f"error_page {status} = @{name};" for status, name in FRONT_ERROR_PAGES.items()]
    return " ".join([*pages, f"error_page 502 504 = @{no_upstream};"])


def _work_refusal_map() -> str:
    """The variable WORK_REFUSED: the message of a work request gunicorn did not take."""
    cases = " ".join(f'{address} "{message}";' for address, message in WORK_REFUSALS.items())
    return f"map $upstream_addr ${WORK_REFUSED} {{ {cases} }}"


def _json_location(name: str, status: int, message: str, retry_after_s: int) -> str:
    escaped = message.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    retry = f"add_header Retry-After {retry_after_s} always; " if status == 503 else ""
    return (f"        location @{name} {{ default_type application/json; {retry}"
            f"add_header X-Content-Type-Options nosniff always; "
            f"return {status} '{{\"message\": \"{escaped}\"}}\\n'; }}")


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
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s")
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
    runtime = Path(tempfile.mkdtemp(prefix="superres-serve-"))
    upstream = runtime / "gunicorn.sock"
    threads = settings.threads_for(choice.device)
    (runtime / "nginx.conf").write_text(nginx_config(settings, runtime, str(upstream), threads))
    gunicorn = stop.start(subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                                            "--bind", f"unix:{upstream}", "app:app"], cwd=ROOT,
                                           env={**os.environ, "THREADS": str(threads)}), signal.SIGTERM)
    front = None
    try:
        if not _wait_for(upstream, gunicorn, stop):
            code = gunicorn.wait()  # a stop may have come before gunicorn's own handlers: no error then
            return 0 if stop.requested else code or 1
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
        shutil.rmtree(runtime, ignore_errors=True)


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
    """Return when both have ended after a stop, or when one of them ended without one."""
    while gunicorn.poll() is None and front.poll() is None:
        time.sleep(0.2)
    if not stop.requested:
        dead = "gunicorn" if gunicorn.poll() is not None else "nginx"
        print(f"serve.py: {dead} exited unexpectedly; stopping the other", file=sys.stderr)
        return 1
    return gunicorn.wait() or front.wait()


def _wait_or_kill(process: subprocess.Popen, timeout_s: float) -> None:
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
