"""The deployment files: the Kubernetes manifests, CPU and GPU (validated offline), the Dockerfiles (hadolint),
the docker test's GPU run in CI, and the docs' table."""
from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml

import config
import monitoring
from config import (CPU_WORKER_MEMORY_BUDGET_MB, GPU_INFERENCE_SLOTS, GPU_WORKER_MEMORY_BUDGET_MB, MEBIBYTE,
                    Settings)
from harness.live_server import free_port
from harness.raw_http import closed_by_server, descendants, wait_for
import serve
from scripts import settings_table
from tests.conftest import ROOT

MANIFEST = ROOT / "max-image-super-resolution-generator.yaml"
GPU_MANIFEST = ROOT / "max-image-super-resolution-generator-gpu.yaml"
DOCKERFILE = ROOT / "Dockerfile"
GPU_DOCKERFILE = ROOT / "Dockerfile.gpu"
DOCKERFILES = (DOCKERFILE, GPU_DOCKERFILE)
DEPLOYMENT_DOCS = ROOT / "docs" / "deployment.md"
TOOLS = Path(sys.executable).parent


def documents(manifest: Path = MANIFEST) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(manifest.read_text())}


def container(manifest: Path = MANIFEST) -> dict:
    [only] = documents(manifest)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def environment(manifest: Path = MANIFEST) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(manifest)["env"]}


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([TOOLS / "kubernetes-validate", "--strict", "--quiet", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_manifest_passes_strict_schema_validation():
    result = kubernetes_validate(MANIFEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(documents()) == {"Service", "Deployment", "HorizontalPodAutoscaler"}


def test_strict_validation_rejects_a_misspelt_field(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(MANIFEST.read_text().replace("readinessProbe:", "readynessProbe:"))
    assert kubernetes_validate(broken).returncode != 0


def test_probes_point_at_real_routes_that_answer_200_once_models_are_loaded(client):
    probes = {kind: container()[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert probe["port"] == "http"
        assert client.get(probe["path"]).status_code == 200


def test_ports_agree_between_service_container_and_settings():
    docs = documents()
    [port] = container()["ports"]
    env = {item["name"]: item["value"] for item in container()["env"]}
    assert port["name"] == "http" and port["containerPort"] == int(env["PORT"]) == Settings().port == 5000
    [service_port] = docs["Service"]["spec"]["ports"]
    assert docs["Service"]["spec"]["type"] == "NodePort"
    assert service_port["targetPort"] == "http"
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]


def test_environment_names_real_settings():
    names = {item["name"] for item in container()["env"]}
    assert names <= {field.upper() for field in Settings.model_fields}


def test_pod_runs_as_non_root_on_a_read_only_root_with_writable_tmp_and_metrics():
    pod = documents()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    mounts = {mount["mountPath"] for mount in container()["volumeMounts"]}
    env = {item["name"]: item["value"] for item in container()["env"]}
    assert {"/tmp", env["PROMETHEUS_MULTIPROC_DIR"]} <= mounts


def test_memory_limit_leaves_room_above_the_request():
    resources = container()["resources"]
    assert parse_gibibytes(resources["limits"]["memory"]) > parse_gibibytes(resources["requests"]["memory"])
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]


# What a pod holds besides its workers: serve.py, gunicorn's master and nginx, 84 MiB measured by
# scripts/measure_pod_memory.py, with room for nginx's buffers (docs/deployment.md, "Sizing").
POD_OVERHEAD_MIB = 256


@pytest.mark.parametrize("manifest, default_budget_mb", [(MANIFEST, CPU_WORKER_MEMORY_BUDGET_MB),
                                                         (GPU_MANIFEST, GPU_WORKER_MEMORY_BUDGET_MB)])
def test_memory_request_is_each_workers_budget_and_the_pods_other_processes(manifest, default_budget_mb):
    """The scheduler places the pod only where every worker's MEMORY_BUDGET_MB (its default for the device where
    the manifest leaves it unset) can be had: a GPU pod asking 4 GiB for a 6144-MiB worker budget could be placed
    where the worker's images would be killed at the node's limit."""
    env = environment(manifest)
    workers, budget = int(env["WORKERS"]), int(env.get("MEMORY_BUDGET_MB", 0)) or default_budget_mb
    request = parse_gibibytes(container(manifest)["resources"]["requests"]["memory"]) * 1024
    assert request == workers * budget + POD_OVERHEAD_MIB


def parse_gibibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(Gi|Mi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([TOOLS / "hadolint", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_uses_only_the_classic_builder_and_runs_nginx_and_gunicorn_as_non_root(dockerfile):
    text = dockerfile.read_text()
    assert not re.search(r"^#\s*syntax=", text, re.M | re.I)
    assert "--mount" not in text and "<<" not in text
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M) and re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert re.search(r"^EXPOSE 5000$", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/health", text, re.M)
    assert 'CMD ["python", "serve.py"]' in text
    assert re.search(r"apt-get install -y --no-install-recommends nginx-light", text)


def test_dockerignore_keeps_the_venv_git_and_tests_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".venv-gpu", ".git", "tests", "Dockerfile.gpu"} <= ignored


def requirement_names(path: Path) -> set[str]:
    """The packages a requirements file pins, following its -r includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names |= requirement_names(path.parent / line[2:].strip())
        elif line:
            names.add(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0].lower())
    return names


def test_gpu_image_installs_pytorch_and_the_serving_stack_without_tensorflow():
    text = GPU_DOCKERFILE.read_text()
    installed = set(re.findall(r"pip install [^\n]*-r (requirements[\w-]*\.txt)", text))
    assert installed == {"requirements-torch.txt", "requirements-serving.txt", "requirements-nodeps.txt"}
    assert "requirements.txt" not in re.findall(r"requirements[\w-]*\.txt", text)
    packages = set().union(*(requirement_names(ROOT / name) for name in installed))
    assert {"torch", "spandrel", "flask", "gunicorn"} <= packages
    assert not packages & {"tensorflow", "tensorflow-cpu", "keras", "openvino"}
    # PyTorch's 3 GB of wheels sit in a layer of their own, before the serving stack's and the code's.
    torch_layer = text.index("-r requirements-torch.txt")
    assert torch_layer < text.index("COPY requirements-serving.txt") < text.index("COPY . /app")


def test_gpu_image_asks_the_nvidia_runtime_for_every_gpu_and_its_compute_libraries():
    text = GPU_DOCKERFILE.read_text()
    assert re.search(r"^\s+NVIDIA_VISIBLE_DEVICES=all\b", text, re.M)
    assert re.search(r"^\s+NVIDIA_DRIVER_CAPABILITIES=compute,utility\b", text, re.M)
    # DEVICE stays auto in the image: CUDA where the container sees a GPU, the CPU elsewhere (CI).
    assert not re.search(r"^(ENV)?\s+DEVICE[= ]", text, re.M)


def test_ci_builds_the_gpu_image_and_checks_it_serves_on_the_cpu_through_pytorch():
    script = (ROOT / "scripts" / "docker-test.sh").read_text()
    assert re.search(r"gpu\) dockerfile=Dockerfile\.gpu .*expected_device=cpu/pytorch", script)
    ci = (ROOT / ".ci" / "run").read_text()
    [variants] = re.findall(r'DOCKER_TEST_VARIANTS="([^"]*)" make docker-test', ci)
    assert variants.split() == ["cpu", "gpu"]


def test_ci_runs_the_tests_and_the_lint():
    commands = (ROOT / ".ci" / "run").read_text().splitlines()
    assert {"make test", "make lint"} <= set(commands)


def test_deployment_docs_hold_the_configuration_table_of_every_setting():
    # scripts/settings_table.py prints the table from config.Settings; the docs must hold it unchanged.
    assert settings_table.table() in DEPLOYMENT_DOCS.read_text()
    assert all(f"| `{name.upper()}` |" in settings_table.table() for name in Settings.model_fields)


def pre_stop_pause_s(manifest_container: dict) -> int:
    """The seconds the pod keeps serving after Kubernetes decides to stop it, before SIGTERM."""
    command = manifest_container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def test_termination_grace_period_covers_the_pre_stop_pause_and_the_shutdown_grace_and_ten_seconds():
    pod = documents()["Deployment"]["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in container()["env"]}
    grace = int(env.get("SHUTDOWN_GRACE_S", Settings().shutdown_grace_s))
    assert pre_stop_pause_s(container()) == 5
    assert pod["terminationGracePeriodSeconds"] == pre_stop_pause_s(container()) + grace + 10


def test_every_documented_docker_run_gives_the_requests_in_flight_their_shutdown_grace():
    # docker stop kills the container 10 s after SIGTERM unless told otherwise; SHUTDOWN_GRACE_S is 50.
    stop_timeout = f"--stop-timeout {Settings().shutdown_grace_s + 10} "
    commands = [line for path in (ROOT / "README.md", DEPLOYMENT_DOCS, ROOT / "docs" / "gpu.md", *DOCKERFILES)
                for line in path.read_text().splitlines() if re.search(r"docker run .*-p 5000:5000", line)]
    assert len(commands) >= 7
    assert all(stop_timeout in line for line in commands), commands


def test_serve_chooses_the_device_without_holding_torch_where_a_gpu_may_be():
    # As on a GPU host: the driver's files are there, so the check imports torch (core/backends.cuda_available).
    script = """
import sys
from pathlib import Path
from config import load_settings
from core import backends
backends.NVIDIA_DEVICE_FILES = (Path(sys.executable),)
import serve
choice = serve.choose_device()
assert "torch" not in sys.modules, "serve.py holds torch"
backends.NVIDIA_DEVICE_FILES = ()
assert choice == backends.choose(load_settings()), choice
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def processes_in_environment(marker: str) -> list[int]:
    """The processes whose environment holds ``marker``: a process and the children it started."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() + b"\0" in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # ended while the folder was read
            continue
    return found


def test_a_stop_while_gunicorn_starts_ends_serve_and_every_process_it_started():
    # "networks run on" is logged once the device is chosen, before gunicorn is started and listens: a stop
    # then came before serve.py forwarded signals to its children, and was ignored (as a container's first
    # process) or left gunicorn running.
    marker = f"SERVE_STOP_TEST={os.getpid()}"
    process = subprocess.Popen([sys.executable, "serve.py"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PORT": str(free_port()), "MODELS": "srgan",
                                    "DEFAULT_MODEL": "srgan", marker.split("=")[0]: marker.split("=")[1]})
    try:
        for line in process.stderr:
            if "networks run on" in line:
                assert json.loads(line)["logger"] == "superres.serve"  # one JSON line, as the workers' records
                break
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, log[-2000:]
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(record["message"].startswith("serve.py: SIGTERM received") for record in records)
    assert wait_for(lambda: not processes_in_environment(marker), 30, interval_s=0.2)


class Ended:
    """A child process that has ended with ``returncode`` (None: still running), as serve.py polls it."""

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode

    def poll(self) -> int | None:
        return self.returncode


@pytest.mark.parametrize("gunicorn, front, code, line", [
    (3, None, 3, "serve.py: gunicorn exited unexpectedly with code 3 (a worker failed to boot; the lines before say "
                 "why); stopping nginx"),
    (-9, None, 1, "serve.py: gunicorn exited unexpectedly with code -9; stopping nginx"),
    (None, 1, 1, "serve.py: nginx exited unexpectedly with code 1; stopping gunicorn"),
])
def test_serve_exits_non_zero_naming_the_process_that_ended_and_gunicorns_code(caplog, gunicorn, front, code, line):
    """A worker whose GPU failed while the models loaded stops gunicorn with code 3: serve.py passes the code on to
    the container (it exited 1, saying only that gunicorn exited), and nginx is stopped."""
    stop = SimpleNamespace(requested=False)
    assert serve._supervise(Ended(gunicorn), Ended(front), stop) == code
    assert [record.getMessage() for record in caplog.records] == [line]


@pytest.mark.parametrize("manifest, dockerfile", [(MANIFEST, DOCKERFILE), (GPU_MANIFEST, GPU_DOCKERFILE)],
                         ids=["cpu", "gpu"])
def test_the_readme_builds_and_runs_the_image_its_manifest_deploys(manifest, dockerfile):
    image = container(manifest)["image"]
    readme = (ROOT / "README.md").read_text()
    file_option = "" if dockerfile == DOCKERFILE else f"-f {dockerfile.name} "
    assert f"docker build {file_option}-t {image} .\n" in readme
    assert re.search(rf"^docker run .*-p 5000:5000 {re.escape(image)}$", readme, re.M)
    assert f"kubectl apply -f {manifest.name}" in readme


# The GPU Deployment (max-image-super-resolution-generator-gpu.yaml).

def gpu_pod() -> dict:
    return documents(GPU_MANIFEST)["Deployment"]["spec"]["template"]["spec"]


def test_gpu_manifest_passes_strict_schema_validation():
    result = kubernetes_validate(GPU_MANIFEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(documents(GPU_MANIFEST)) == {"Service", "Deployment", "HorizontalPodAutoscaler"}


def test_gpu_strict_validation_rejects_a_misspelt_field(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(GPU_MANIFEST.read_text().replace("tolerations:", "toleration:"))
    assert kubernetes_validate(broken).returncode != 0


def test_gpu_deployment_asks_for_one_gpu_and_tolerates_the_gpu_taint():
    resources = container(GPU_MANIFEST)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"].get("nvidia.com/gpu", 1) == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod()["tolerations"]


def test_gpu_deployment_runs_on_cuda_or_not_at_all():
    env = environment(GPU_MANIFEST)
    assert env["DEVICE"] == "cuda"
    assert env["WORKERS"] == "1"
    assert set(env) <= {field.upper() for field in Settings.model_fields}
    assert Settings(**{name.lower(): value for name, value in env.items()}).device == "cuda"


def test_gpu_deployment_gives_nginx_a_thread_for_every_slot_and_queue_place_and_one_for_probes():
    env = environment(GPU_MANIFEST)
    settings = Settings(**{name.lower(): value for name, value in env.items()})
    assert settings.threads_for("cuda") - 1 >= settings.inference_slots_for("cuda") + settings.queue_size


def test_threads_default_to_the_slots_the_queue_and_one_for_the_probes():
    assert Settings(threads=0, queue_size=2).threads_for("cpu") == 1 + 2 + 1
    assert Settings(threads=0, queue_size=2).threads_for("cuda") == GPU_INFERENCE_SLOTS + 2 + 1
    assert Settings(threads=0, queue_size=5, inference_slots=2).threads_for("cuda") == 2 + 5 + 1
    assert Settings(threads=3).threads_for("cuda") == 3


def test_nginx_passes_each_worker_every_thread_but_the_probes_one():
    settings = Settings(workers=2, spool_mb=12 * 3 * 32)  # 12 slots, each with 3 x 32 MiB of disk (spool_plan)
    config = serve.nginx_config(settings, Path("/run/superres"), "/run/superres/gunicorn.sock", 7)
    assert "server unix:/run/superres/gunicorn.sock max_conns=12;" in config


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
FRONT_UPLOAD_LIMIT = 1000


@contextmanager
def front_alone(settings: Settings, runtime: Path, upstream: Path | None = None, threads: int = 4,
                launcher: Sequence[str] = (), preexec_fn: Callable[[], None] | None = None
                ) -> Iterator[subprocess.Popen]:
    """nginx run with serve.py's configuration for ``settings``, and no gunicorn behind it: ``upstream`` is a
    socket the test holds, or none. ``launcher`` is a command that runs nginx's (its arguments after it), and
    ``preexec_fn`` runs in nginx's process before it starts. Yields nginx's master process."""
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    upstream = upstream or runtime / "absent.sock"
    (runtime / "nginx.conf").write_text(serve.nginx_config(settings, runtime, str(upstream), threads))
    front = subprocess.Popen([*launcher, NGINX, "-e", "stderr", "-p", str(runtime), "-c", str(runtime / "nginx.conf")],
                             stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    try:
        wait_for(lambda: _accepts("127.0.0.1", settings.port) or front.poll() is not None, 30)
        assert front.poll() is None, f"nginx did not start: {front.stderr.read()}"
        yield front
    finally:
        front.terminate()
        front.wait(30)


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    """What nginx answers by itself, on loopback: its URL."""
    settings = Settings(host="127.0.0.1", port=free_port(), max_upload_bytes=FRONT_UPLOAD_LIMIT)
    with front_alone(settings, tmp_path_factory.mktemp("front")):
        yield f"http://127.0.0.1:{settings.port}"


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_front_listens_on_ipv6_and_ipv4_when_host_is_the_ipv6_wildcard(tmp_path):
    settings = Settings(host="::", port=free_port())
    with front_alone(settings, tmp_path):
        for host in ("127.0.0.1", "[::1]"):
            response = requests.get(f"http://{host}:{settings.port}/health", timeout=30)
            assert response.status_code == 503 and "starting" in response.json()["message"]


UPLOAD_TOO_LARGE = f"the upload is too large: the limit is {FRONT_UPLOAD_LIMIT} bytes (MAX_UPLOAD_BYTES)"


@pytest.mark.parametrize("path, message", [
    ("/model/predict", UPLOAD_TOO_LARGE), ("/app/upscale", UPLOAD_TOO_LARGE),
    ("/model/metadata", f"the request's body is too large for this route: the limit is {FRONT_UPLOAD_LIMIT} bytes "
                        "(images go to /model/predict and /app/upscale)")])
def test_front_refuses_a_too_large_upload_with_json_naming_the_limit_on_every_route(front, path, message):
    response = requests.post(front + path, files={"image": ("big.png", bytes(FRONT_UPLOAD_LIMIT))}, timeout=30)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["message"] == message


def test_front_keeps_bodies_of_other_routes_in_memory_and_refuses_larger_ones_with_json(tmp_path):
    # Only the image routes take uploads, counted against SPOOL_MB; any other route's body must stay within
    # nginx's memory buffer, or bodies sent to /health would fill the disk uncounted.
    settings = Settings(host="127.0.0.1", port=free_port())
    assert settings.max_upload_bytes > serve.BODY_BUFFER_BYTES
    with front_alone(settings, tmp_path):
        response = requests.post(f"http://127.0.0.1:{settings.port}/health",
                                 data=bytes(serve.BODY_BUFFER_BYTES + 1), timeout=30)
    assert response.status_code == 413 and response.headers["Content-Type"] == "application/json"
    assert response.json()["message"] == (f"the request's body is too large for this route: the limit is "
                                          f"{serve.BODY_BUFFER_BYTES} bytes (images go to /model/predict and "
                                          f"/app/upscale)")


def raw_answer(front: str, request: bytes) -> tuple[bytes, bytes]:
    """The head and body nginx answers to ``request``, sent as it is on a new connection."""
    port = int(front.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(request)
        answer = b"".join(iter(lambda: client.recv(65536), b""))
    head, body = answer.split(b"\r\n\r\n", 1)
    return head, body


@pytest.mark.parametrize("path", ["/model/predict", "/app/upscale", "/model/metadata"])
def test_front_refuses_a_broken_chunked_body_with_json_on_every_route(front, path):
    head, body = raw_answer(front, f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                   "Connection: close\r\n\r\nzz\r\nabc\r\n".encode())
    assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/json" in head
    assert body == b'{"message": "the request is not valid HTTP/1.0 or HTTP/1.1, or its path leads above the root"}\n'


CLOSE = b"Host: x\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("request_bytes, status, name", [
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32) + b"\r\n\r\n", 400, "bad_request"),  # TLS to HTTP
    (b"get /health HTTP/1.1\r\n" + CLOSE, 400, "bad_request"),
    (b"GET /app/../../etc/passwd HTTP/1.1\r\n" + CLOSE, 400, "bad_request"),
    (b"GET /" + b"a" * serve.HEADER_BYTES + b" HTTP/1.1\r\n" + CLOSE, 414, "uri_too_long"),
    (b"GET /health HTTP/2.0\r\n" + CLOSE, 505, "http_version"),
    (b"TRACE /health HTTP/1.1\r\n" + CLOSE, 405, "method_not_allowed"),
    (b"POST /model/predict HTTP/1.1\r\nTransfer-Encoding: gzip\r\n" + CLOSE, 501, "transfer_encoding"),
    # Both lengths, as a request smuggled past another front would have them.
    (b"POST /model/predict HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n" + CLOSE
     + b"0\r\n\r\n", 400, "bad_request"),
    (b"GET " + serve.ERROR_PATH.encode() + b"bad_request HTTP/1.1\r\n" + CLOSE, 404, "not_found"),
], ids=["tls", "lowercase-method", "above-root", "long-uri", "http2", "trace", "gzip-body", "both-lengths",
        "error-path"])
def test_front_answers_requests_it_cannot_read_with_json_naming_the_problem(front, request_bytes, status, name):
    # The first five are refused before nginx has the request line's URI: they answered nginx's own HTML 500.
    head, body = raw_answer(front, request_bytes)
    assert head.startswith(f"HTTP/1.1 {status} ".encode()) and b"Content-Type: application/json" in head
    assert json.loads(body) == {"message": serve.JSON_ERRORS[name][1].format(header_bytes=serve.HEADER_BYTES)}


@pytest.mark.parametrize("request_line", [b"GET /app/../../etc/passwd HTTP/1.0", b"GET /app/../../etc/passwd HTTP/1.1"])
def test_front_refuses_a_path_above_the_root_saying_so(front, request_line):
    """A path above the root is well-formed HTTP that nginx refuses with 400: the answer said "the request is not
    valid HTTP/1.1", untrue of it, and of any HTTP/1.0 request."""
    head, body = raw_answer(front, request_line + b"\r\n" + CLOSE)
    assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/json" in head
    assert json.loads(body) == {"message": "the request is not valid HTTP/1.0 or HTTP/1.1, or its path leads above "
                                           "the root"}


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
def test_front_refuses_the_methods_it_refuses_itself_naming_them(front, method):
    """nginx answers 405 to CONNECT as to TRACE; the answer said "TRACE is not allowed" to both."""
    head, body = raw_answer(front, f"{method} /health HTTP/1.1\r\n".encode() + CLOSE)
    assert head.startswith(b"HTTP/1.1 405 ") and b"Content-Type: application/json" in head
    assert json.loads(body) == {"message": "TRACE and CONNECT are not allowed: the routes take GET, HEAD, POST and "
                                           "OPTIONS"}


@pytest.mark.parametrize("headers", [
    b"X-Long: " + b"a" * serve.HEADER_BYTES + b"\r\n",
    b"".join(b"X-Short-%d: %s\r\n" % (number, b"a" * 1000) for number in range(40)),  # 1 kB each, 40 kB in all
], ids=["one-line-too-long", "short-lines-too-many"])
def test_front_answers_headers_too_large_naming_both_limits(front, headers):
    """nginx refuses a header line over 8192 bytes, and headers over its 4 buffers of 8192 bytes together; the
    answer named only the first, untrue of short lines too many."""
    head, body = raw_answer(front, b"GET /health HTTP/1.1\r\n" + headers + CLOSE)
    assert head.startswith(b"HTTP/1.1 431 ") and b"Content-Type: application/json" in head
    assert json.loads(body) == {"message": "the request's headers are too large: the limit is 8192 bytes a line, and 4 "
                                           "buffers of 8192 bytes, each holding whole lines, for the request line and "
                                           "headers together"}


@pytest.mark.parametrize("path", ["/model/predict", "/app/upscale", "/health"])
def test_front_answers_503_with_retry_after_when_gunicorn_does_not_answer(front, path):
    response = requests.post(front + path, files={"image": ("small.png", b"x")}, timeout=30)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(Settings().retry_after_s)
    assert response.json()["message"] == "the server is starting, restarting or stopping; retry later"


def test_front_says_busy_only_when_every_request_slot_is_taken(tmp_path):
    settings = Settings(host="127.0.0.1", port=free_port(), workers=1)
    upstream = tmp_path / "held.sock"
    with socket.socket(socket.AF_UNIX) as worker, front_alone(settings, tmp_path, upstream, threads=2):
        worker.bind(str(upstream))  # one worker of 2 threads: one request slot, one thread for the probes
        worker.listen(8)
        worker.settimeout(30)
        first = socket.create_connection(("127.0.0.1", settings.port), timeout=30)
        first.sendall(b"POST /model/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        held, _ = worker.accept()  # the first request has the slot, and its answer is not coming
        response = requests.post(f"http://127.0.0.1:{settings.port}/model/predict", files={"image": b"x"}, timeout=30)
        assert response.status_code == 503 and response.headers["Retry-After"] == str(settings.retry_after_s)
        assert response.json()["message"] == ("the server is busy: every request slot of its workers is taken; "
                                              "retry later")
        held.close()
        first.close()


# nginx's own refusals, counted in superres_refusals_total by serve.FrontRefusalCounter (docs/deployment.md).

def front_refusals() -> dict[tuple[str, str, str], float]:
    return {(sample.labels["route"], sample.labels["status"], sample.labels["reason"]): sample.value
            for family in monitoring.REGISTRY.collect() if family.name == "superres_refusals"
            for sample in family.samples if sample.name == "superres_refusals_total"
            and (sample.labels["route"], sample.labels["status"], sample.labels["reason"]) in FRONT_SERIES}


FRONT_SERIES = {(route, str(status), reason) for route, status, reason in serve.front_series()}


@contextmanager
def counting_front(settings: Settings, runtime: Path, upstream: Path | None = None, threads: int = 4,
                   **launch: object) -> Iterator[subprocess.Popen]:
    """front_alone (``launch`` its launcher and preexec_fn), with serve.py's counter of its refusals listening as
    under serve.py."""
    counter = serve.FrontRefusalCounter(runtime)
    try:
        with front_alone(settings, runtime, upstream, threads, **launch) as front:
            yield front
    finally:
        counter.close()


def grew_by(before: dict, expected: dict) -> bool:
    after = front_refusals()
    return {key: after[key] - before[key] for key in after if after[key] != before[key]} == expected


def test_front_counts_its_refusals_beside_the_workers_with_the_same_json_answers(tmp_path):
    settings = Settings(host="127.0.0.1", port=free_port(), max_upload_bytes=FRONT_UPLOAD_LIMIT)
    monitoring.REFUSALS.clear()
    with counting_front(settings, tmp_path) as front:
        before = front_refusals()
        assert before == dict.fromkeys(FRONT_SERIES, 0.0)  # each at 0 before its first refusal
        url = f"http://127.0.0.1:{settings.port}"
        too_large = requests.post(f"{url}/model/predict", files={"image": ("big.png", bytes(FRONT_UPLOAD_LIMIT))},
                                  timeout=30)
        no_worker = requests.post(f"{url}/health", data=b"x", timeout=30)
        assert (too_large.status_code, too_large.json()["message"]) == (413, UPLOAD_TOO_LARGE)
        assert (no_worker.status_code, no_worker.json()["message"]) == (503, serve.JSON_ERRORS["unavailable"][1])
        # The same reason as the workers' own 413 for an upload over MAX_UPLOAD_BYTES: one alert covers both.
        wait_for(lambda: grew_by(before, {("/model/predict", "413", "upload_too_large"): 1,
                                          ("other", "503", "no_worker"): 1}), 30)
    lines = [json.loads(line) for line in front.stderr.read().splitlines() if line.startswith("{")]
    # Its log line too, which a 503 for a worker that does not answer lacked.
    assert [(line["path"], line["status"], line["reason"]) for line in lines] == [
        ("/model/predict", 413, "upload_too_large"), ("/health", 503, "no_worker")]


def test_front_counts_a_client_too_slow_and_a_request_no_slot_was_free_for(tmp_path):
    settings = Settings(host="127.0.0.1", port=free_port(), workers=1, client_timeout_s=0.5)
    upstream = tmp_path / "held.sock"
    with socket.socket(socket.AF_UNIX) as worker, counting_front(settings, tmp_path, upstream, threads=2):
        worker.bind(str(upstream))  # one worker of 2 threads: one request slot, one thread for the probes
        worker.listen(8)
        worker.settimeout(30)
        before = front_refusals()
        first = socket.create_connection(("127.0.0.1", settings.port), timeout=30)
        first.sendall(b"POST /model/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        held, _ = worker.accept()  # the first request has the slot, and its answer is not coming
        busy = requests.post(f"http://127.0.0.1:{settings.port}/app/upscale", files={"image": b"x"}, timeout=30)
        assert busy.status_code == 503 and busy.json()["message"] == serve.WORK_REFUSALS["work"]
        slow = socket.create_connection(("127.0.0.1", settings.port), timeout=30)
        slow.sendall(b"POST /model/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        wait_for(lambda: grew_by(before, {("/app/upscale", "503", "request_slots_taken"): 1,
                                          ("/model/predict", "408", "client_timeout"): 1}), 30)
        for connection in (slow, held, first):
            connection.close()


@pytest.mark.parametrize("body_bytes", [1, MEBIBYTE], ids=["read-never-answered", "never-read"])
def test_front_answers_504_naming_the_wait_when_the_worker_given_a_request_does_not_answer(
        tmp_path, monkeypatch, body_bytes):
    """A worker that holds a request without answering it (hung, or every thread busy): nginx answers 504, naming
    how long it waited and the settings that make it, and counts worker_timeout. It answered 503 "the server is
    starting, restarting or stopping", untrue of a worker that took the request. A body larger than the socket's
    buffers is never read whole (proxy_send_timeout); a small one is, and no answer comes (proxy_read_timeout)."""
    for module in (config, serve):  # the longest answer, 1 s, rather than the margin's 30 s
        monkeypatch.setattr(module, "ANSWER_MARGIN_S", 0)
    settings = Settings(host="127.0.0.1", port=free_port(), queue_wait_s=0.5, request_time_limit_s=0.5)
    upstream = tmp_path / "hung.sock"
    with socket.socket(socket.AF_UNIX) as worker, counting_front(settings, tmp_path, upstream):
        worker.bind(str(upstream))
        worker.listen(8)  # connections wait in the backlog, as for a worker whose threads are all busy
        before = front_refusals()
        for path in ("/model/predict", "/model/metadata"):
            response = requests.post(f"http://127.0.0.1:{settings.port}{path}", data=bytes(body_bytes), timeout=30)
            assert response.status_code == 504 and response.headers["Content-Type"] == "application/json"
            assert response.json()["message"] == ("the worker given the request did not answer it within 1 s, the "
                                                  "longest an answer may take (QUEUE_WAIT_S + REQUEST_TIME_LIMIT_S + 0 s)")
        wait_for(lambda: grew_by(before, {("/model/predict", "504", "worker_timeout"): 1,
                                          ("other", "504", "worker_timeout"): 1}), 30)


# nginx's 500 for a body it cannot write to client_body_temp_path: a real failure of the kernel's each way, with
# no mount on the machine itself (CI's container may not allow one). The tmpfs is nginx's own, in a mount namespace
# of its own, so nothing outlives it; the other two need no privilege at all.
SPOOL_DISK_BYTES = 256 * 1024  # less than the 1 MiB nginx writes of a body at a time


def full_disk(runtime: Path) -> dict:
    """nginx with a small tmpfs of its own as its body folder: the write of a larger body fails (ENOSPC)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare (util-linux) here for a mount namespace")
    mount = ["unshare", "--mount", "--propagation", "private", *([] if os.geteuid() == 0 else ["--map-root-user"])]
    (runtime / "body").mkdir()
    probe = subprocess.run([*mount, "mount", "-t", "tmpfs", "tmpfs", str(runtime / "body")], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here for a tmpfs: {probe.stderr.decode().strip()}")
    script = f'mount -t tmpfs -o size={SPOOL_DISK_BYTES} tmpfs "$0" && exec "$@"'
    return {"launcher": [*mount, "--", "sh", "-c", script, str(runtime / "body")]}


def file_size_limit(_runtime: Path) -> dict:
    """nginx limited to files smaller than a body's (RLIMIT_FSIZE): the write past it fails (EFBIG), SIGXFSZ
    ignored as a shell's ulimit -f leaves nginx to see the error."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (SPOOL_DISK_BYTES, resource.RLIM_INFINITY))
    return {"preexec_fn": limit}


def folder_gone(runtime: Path) -> dict:
    """The body folder replaced by a file once nginx has started (a cleaner emptying /tmp, then something taking
    the name): opening a body's file fails (ENOTDIR)."""
    def replace() -> None:
        wait_for((runtime / "body").is_dir, 30)
        (runtime / "body").rmdir()
        (runtime / "body").write_bytes(b"")
    return {"after_start": replace}


# nginx's error log for each: a write cut short at the limit (pwritev), or the next write's error (pwrite).
WRITE_STOPPED = f"has written only {SPOOL_DISK_BYTES} of"


@pytest.mark.parametrize("break_spool, logged", [
    (full_disk, rf"{WRITE_STOPPED}|failed \(28: No space left on device\)"),
    (file_size_limit, rf"{WRITE_STOPPED}|failed \(27: File too large\)"),
    (folder_gone, r"open\(\) \S+ failed \(20: Not a directory\)")], ids=["full-disk", "file-size-limit", "folder-gone"])
@pytest.mark.parametrize("path", ["/model/predict", "/app/upscale"])
def test_front_answers_json_500_and_counts_it_when_it_cannot_write_a_body_to_its_temporary_folder(
        tmp_path, break_spool, logged, path):
    """A body past nginx's 1 MiB in memory goes to a file: where that fails, nginx answered its own HTML 500,
    counted nowhere. It answers JSON naming the causes and the way out, and counts front_error on the route."""
    settings = Settings(host="127.0.0.1", port=free_port())
    launch = break_spool(tmp_path)
    after_start = launch.pop("after_start", None)
    with stub_worker(tmp_path / "worker.sock") as worker, \
            counting_front(settings, tmp_path, tmp_path / "worker.sock", **launch) as front:
        if after_start:
            after_start()
        before = front_refusals()
        response = requests.post(f"http://127.0.0.1:{settings.port}{path}", data=bytes(3 * MEBIBYTE // 2), timeout=30)
        assert response.status_code == 500 and response.headers["Content-Type"] == "application/json"
        assert response.json() == {"message": serve.JSON_ERRORS["front_error"][1]}
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
        wait_for(lambda: grew_by(before, {(path, "500", "front_error"): 1}), 30)
        # A body that stays in memory still goes through.
        assert requests.post(f"http://127.0.0.1:{settings.port}{path}", data=b"x", timeout=30).status_code == 200
        assert worker.received == [(path, 1)]
    assert re.search(logged, front.stderr.read())  # the kernel's failure each way, as nginx's error log tells it


def test_front_raises_a_containers_soft_open_files_limit_for_its_connections_and_spool_files(tmp_path):
    """Started under a soft limit of 1024 open files (a container's usual one), nginx's worker kept it: 4096
    connections with their spool files would have failed new connections, as 500s, from about 1024 on."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < serve.OPEN_FILES:
        pytest.skip(f"this machine's hard limit on open files ({hard}) is below nginx's {serve.OPEN_FILES}")
    settings = Settings(host="127.0.0.1", port=free_port())
    with front_alone(settings, tmp_path, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
                     ) as front:
        worker = Path(f"/proc/{front.pid}/task/{front.pid}/children").read_text().split()[0]
        limits = Path(f"/proc/{worker}/limits").read_text()
    soft = re.search(r"^Max open files\s+(\d+)", limits, re.MULTILINE)
    assert soft and int(soft.group(1)) == serve.OPEN_FILES


def test_front_passes_an_answer_whose_headers_echo_a_whole_request_line(tmp_path):
    """A redirect's Location echoes the path and query (api/errors.py), up to gunicorn's 4094-byte request line:
    past nginx's default 4 KiB for an answer's head, nginx answered 503 "the server is starting, restarting or
    stopping" itself and counted no_worker."""
    location = "/model/metadata?q=" + "a" * (serve.HEADER_BYTES - 100)
    answer = (f"HTTP/1.1 308 PERMANENT REDIRECT\r\nContent-Type: application/json\r\nLocation: {location}\r\n"
              f"Content-Length: 3\r\nConnection: close\r\n\r\nok\n").encode()
    settings = Settings(host="127.0.0.1", port=free_port())
    with stub_worker(tmp_path / "worker.sock", answer), front_alone(settings, tmp_path, tmp_path / "worker.sock"):
        response = requests.get(f"http://127.0.0.1:{settings.port}/model//metadata", allow_redirects=False,
                                timeout=30)
    assert response.status_code == 308 and response.headers["Location"] == location


def test_front_counts_a_connection_that_sends_nothing_but_not_one_idle_after_its_request_nor_a_probe(tmp_path, caplog):
    """A connection that sends no byte before CLIENT_TIMEOUT_S has no request, so no access log line: it went
    uncounted and unlogged. It counts as no_request (from nginx's error log); a connection left open after a whole
    request (keep-alive) and one a TCP probe closes at once are no refusals. An unfinished header is client_timeout."""
    caplog.set_level(logging.INFO, logger="superres.front")
    settings = Settings(host="127.0.0.1", port=free_port(), client_timeout_s=0.5)
    upstream = tmp_path / "worker.sock"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"  # keep-alive, as gunicorn's
    with stub_worker(upstream, answer), counting_front(settings, tmp_path, upstream):
        before = front_refusals()
        socket.create_connection(("127.0.0.1", settings.port), timeout=30).close()  # a TCP probe
        with socket.create_connection(("127.0.0.1", settings.port), timeout=30) as kept_alive:
            kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(kept_alive)[0] == 200
            wait_for(lambda: closed_by_server(kept_alive), 30)
        # Each after the other: nginx's lines come in order, so that any for the two above would be counted first.
        with (socket.create_connection(("127.0.0.1", settings.port), timeout=30) as silent,
              socket.create_connection(("127.0.0.1", settings.port), timeout=30) as unfinished):
            unfinished.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            wait_for(lambda: closed_by_server(silent) and closed_by_server(unfinished), 30)
        wait_for(lambda: grew_by(before, {("other", "408", "no_request"): 1, ("other", "408", "client_timeout"): 1}), 30)
    logged = [(record.status, record.reason, record.remote_addr) for record in caplog.records
              if record.name == "superres.front"]
    assert logged == [(408, "no_request", "127.0.0.1")]


def test_a_refusal_outside_the_front_series_is_logged_not_counted(tmp_path, caplog):
    """Only the fixed series are counted: a datagram naming another (a configuration out of step) adds none."""
    counter = serve.FrontRefusalCounter(tmp_path)
    before = front_refusals()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as nginx:
            nginx.sendto(f"<190>Dec  7 21:00:00 {serve.REFUSAL_TAG}: /a/client/path 503 no_worker".encode(),
                         str(tmp_path / serve.REFUSAL_SOCKET))
        wait_for(lambda: "outside superres_refusals_total's series" in caplog.text, 30)
    finally:
        counter.close()
    assert front_refusals() == before


def test_gpu_probes_cover_model_load_and_warm_up_and_point_at_real_routes(client):
    probes = {kind: container(GPU_MANIFEST)[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert probes["readinessProbe"]["httpGet"]["path"] == probes["startupProbe"]["httpGet"]["path"] == "/ready"
    # The six default models load in 27-59 s on 2 CPU cores (docs/gpu.md): the startup probe allows 5 times that.
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 5 * 59
    for probe in probes.values():
        assert probe["httpGet"]["port"] == "http"
        assert client.get(probe["httpGet"]["path"]).status_code == 200


# Measured with the GPU image on the CPU (docs/gpu.md, "Image and Deployment"): the container's memory once the
# six default models are loaded; and what CUDA's context and libraries are allowed on a GPU (not measured here).
GPU_IMAGE_LOADED_MIB = 1089
CUDA_HOST_MIB = 1536


def test_gpu_memory_request_covers_the_measured_worker_and_the_limit_leaves_room():
    resources = container(GPU_MANIFEST)["resources"]
    request = parse_gibibytes(resources["requests"]["memory"]) * 1024
    limit = parse_gibibytes(resources["limits"]["memory"]) * 1024
    assert request >= GPU_IMAGE_LOADED_MIB + CUDA_HOST_MIB
    assert limit > request
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == environment(GPU_MANIFEST)["INFERENCE_THREADS"]


def test_gpu_pod_runs_as_non_root_on_a_read_only_root_like_the_cpu_pod():
    pod, cpu_pod = gpu_pod(), documents()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == cpu_pod["securityContext"]
    assert container(GPU_MANIFEST)["securityContext"] == container()["securityContext"]
    mounts = {mount["mountPath"] for mount in container(GPU_MANIFEST)["volumeMounts"]}
    assert {"/tmp", environment(GPU_MANIFEST)["PROMETHEUS_MULTIPROC_DIR"]} <= mounts
    grace = int(environment(GPU_MANIFEST)["SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] == pre_stop_pause_s(container(GPU_MANIFEST)) + grace + 10


def test_gpu_service_and_autoscaler_point_at_the_gpu_deployment_not_the_cpu_one():
    docs, cpu_docs = documents(GPU_MANIFEST), documents()
    name = docs["Deployment"]["metadata"]["name"]
    assert name != cpu_docs["Deployment"]["metadata"]["name"]
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == name
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= pod_labels.items()
    # The CPU Service must not send requests to GPU pods, nor the GPU Service to CPU pods.
    assert not cpu_docs["Service"]["spec"]["selector"].items() <= pod_labels.items()
    [port] = container(GPU_MANIFEST)["ports"]
    assert port["name"] == docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert port["containerPort"] == int(environment(GPU_MANIFEST)["PORT"]) == 5000


def test_gpu_autoscaler_scales_on_the_work_in_the_pods_from_metrics_not_on_cpu():
    metrics = documents(GPU_MANIFEST)["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert all(metric["type"] == "Pods" for metric in metrics)
    names = {metric["pods"]["metric"]["name"] for metric in metrics}
    gauges = {monitoring.INFERENCE_RUNNING._name, monitoring.INFERENCE_QUEUED._name}
    assert names == gauges == {"superres_inference_running", "superres_inference_queued"}
    # A pod never runs more than its slots: a target above them would never scale up on that metric.
    running = next(metric for metric in metrics if metric["pods"]["metric"]["name"] == "superres_inference_running")
    assert 0 < float(running["pods"]["target"]["averageValue"]) < GPU_INFERENCE_SLOTS


# The disk the image requests take (SPOOL_MB, serve.spool_plan): how many nginx holds at once and each answer's
# spool file.

class StubWorker(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A worker's socket that answers each whole request nginx passes it with ``answer``, and counts them."""
    daemon_threads = True

    def __init__(self, path: Path, answer: bytes) -> None:
        self.answer, self.received, self.heads = answer, [], []
        super().__init__(str(path), _StubRequest)


class _StubRequest(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        head = b"".join(iter(self.rfile.readline, b"\r\n"))
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        body = self.rfile.read(int(length.group(1))) if length else b""
        self.server.received.append((head.split(b" ")[1].decode(), len(body)))
        self.server.heads.append(head.decode())
        self.wfile.write(self.server.answer)


@contextmanager
def stub_worker(path: Path, answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
                ) -> Iterator[StubWorker]:
    server = StubWorker(path, answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def start_upload(port: int, path: str, length: int, sent: int) -> socket.socket:
    """A request whose body of ``length`` bytes has had only its first ``sent`` bytes sent."""
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode() + bytes(sent))
    return client


def read_answer(client: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the answer on ``client`` (its body by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = client.recv(65536)
        assert chunk, "the connection closed within the body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def spooled_bodies(front: subprocess.Popen, runtime: Path) -> list[int]:
    """The sizes of the request bodies nginx holds on disk now (unlinked files under client_body_temp_path)."""
    sizes = []
    for pid in descendants(front.pid):
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # ended while we looked
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(descriptor).startswith(f"{runtime / 'body'}/"):
                    sizes.append(descriptor.stat().st_size)
            except OSError:
                continue
    return sizes


def test_front_holds_as_many_uploads_as_spool_mb_allows_and_refuses_more_with_json_and_retry_after(tmp_path):
    # One worker of 2 threads (one request slot), 2 MiB uploads: 10 MiB hold the slot's upload in the worker and
    # two requests in nginx, each with its upload and 2 MiB of its answer.
    settings = Settings(host="127.0.0.1", port=free_port(), workers=1, max_upload_bytes=2 * MEBIBYTE, spool_mb=10)
    assert serve.spool_plan(settings, 2) == serve.Spool(held_requests=2, answer_bytes=2 * MEBIBYTE, work_slots=1)
    length, sent = 3 * MEBIBYTE // 2, 5 * MEBIBYTE // 4  # past the 1 MiB nginx keeps in memory: on disk
    upstream = tmp_path / "worker.sock"
    with stub_worker(upstream) as worker, counting_front(settings, tmp_path, upstream, threads=2) as front:
        before = front_refusals()
        held = [start_upload(settings.port, path, length, sent) for path in ("/model/predict", "/app/upscale")]
        try:
            wait_for(lambda: len(spooled_bodies(front, tmp_path)) == 2, 30, interval_s=0.05)
            # A third upload on either route is refused as soon as its headers arrive, before its body is read.
            for path in ("/model/predict", "/app/upscale"):
                with start_upload(settings.port, path, length, sent) as refused:
                    status, headers, body = read_answer(refused)
                assert status == 503 and headers["retry-after"] == str(settings.retry_after_s)
                assert headers["content-type"] == "application/json"
                assert json.loads(body)["message"] == ("the server is busy: it takes 2 image requests at once, as many as "
                                              "10 MiB of disk for their uploads and answers holds (SPOOL_MB); "
                                              "retry later")
            wait_for(lambda: grew_by(before, {("/model/predict", "503", "spool_full"): 1,
                                              ("/app/upscale", "503", "spool_full"): 1}), 30)
            assert len(spooled_bodies(front, tmp_path)) == 2 and worker.received == []
            # Probes and other routes are not counted.
            assert requests.get(f"http://127.0.0.1:{settings.port}/health", timeout=30).status_code == 200
            # The uploads held go on: each reaches the worker whole once its client sends the rest.
            held[0].sendall(bytes(length - sent))
            assert read_answer(held[0])[0] == 200
            assert worker.received[-1] == ("/model/predict", length)
            # One of the two places is free again.
            response = requests.post(f"http://127.0.0.1:{settings.port}/model/predict", data=b"x", timeout=30)
            assert response.status_code == 200 and worker.received[-1] == ("/model/predict", 1)
            held[1].sendall(bytes(length - sent))
            assert read_answer(held[1])[0] == 200
            assert worker.received[-1] == ("/app/upscale", length)
        finally:
            for client in held:
                client.close()


def test_front_passes_the_workers_own_503_as_it_is(tmp_path):
    # proxy_intercept_errors off: error_page 503 on the image routes takes only nginx's own refusal.
    busy = b'{"message": "the server is busy: 1 of 1 images running and 2 queued (queue size 2); retry later"}\n'
    answer = (b"HTTP/1.1 503 SERVICE UNAVAILABLE\r\nContent-Type: application/json\r\nRetry-After: 9\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(busy), busy))
    settings = Settings(host="127.0.0.1", port=free_port())
    upstream = tmp_path / "worker.sock"
    with stub_worker(upstream, answer), counting_front(settings, tmp_path, upstream):
        before = front_refusals()
        for path in ("/model/predict", "/app/upscale"):
            response = requests.post(f"http://127.0.0.1:{settings.port}{path}", files={"image": b"x"}, timeout=30)
            assert response.status_code == 503 and response.headers["Retry-After"] == "9"
            assert response.content == busy
        # The worker counts its own 503s; nginx, after them, counts only its own refusal (the datagrams keep order).
        requests.post(f"http://127.0.0.1:{settings.port}/health", data=bytes(serve.BODY_BUFFER_BYTES + 1), timeout=30)
        wait_for(lambda: grew_by(before, {("other", "413", "body_too_large"): 1}), 30)


def test_every_request_has_one_id_in_nginxs_line_the_apps_and_the_answer(tmp_path):
    settings = Settings(host="127.0.0.1", port=free_port(), max_upload_bytes=FRONT_UPLOAD_LIMIT)
    upstream = tmp_path / "worker.sock"
    url = f"http://127.0.0.1:{settings.port}"
    with stub_worker(upstream) as worker, front_alone(settings, tmp_path, upstream) as front:
        passed = requests.post(f"{url}/model/predict", data=b"x", timeout=30)
        kept = requests.post(f"{url}/model/predict", data=b"x", headers={"X-Request-ID": "edge-7f3a.42"}, timeout=30)
        hostile = requests.post(f"{url}/model/predict", data=b"x", headers={"X-Request-ID": "a b<script>"}, timeout=30)
        refused = requests.post(f"{url}/model/predict", data=bytes(FRONT_UPLOAD_LIMIT + 1), timeout=30)
        front.terminate()
        front.wait(30)
        nginx_lines = [json.loads(line) for line in front.stderr.read().splitlines() if line.startswith("{")]
    made, mended = (re.search(r"(?im)^x-request-id: *(\S+)", head).group(1) for head in worker.heads[::2])
    assert re.fullmatch(r"[0-9a-f]{32}", made) and re.fullmatch(r"[0-9a-f]{32}", mended)  # nginx's own
    assert "x-request-id: edge-7f3a.42" in worker.heads[1].lower()  # the caller's, kept as the app keeps it
    assert passed.status_code == kept.status_code == hostile.status_code == 200
    # nginx's own answer carries its id, and its log line the same
    assert refused.status_code == 413 and re.fullmatch(r"[0-9a-f]{32}", refused.headers["X-Request-ID"])
    [line] = [line for line in nginx_lines if line["status"] == 413]
    assert line["request_id"] == refused.headers["X-Request-ID"]


@pytest.mark.parametrize("overrides, threads, held, answer", [
    ({}, 4, 10, 32 * MEBIBYTE),  # the CPU manifest: (768 - 3 x 32) // (32 + 32)
    ({}, 7, 9, 32 * MEBIBYTE),  # the GPU manifest: (768 - 6 x 32) // (32 + 32)
    ({"workers": 2, "max_upload_bytes": 8 * MEBIBYTE}, 7, 42, 8 * MEBIBYTE),  # (768 - 12 x 8) // (8 + 8)
    ({"spool_mb": 1, "max_upload_bytes": 1000}, 4, 1045, 0),  # (1 MiB - 3000) // 1000: answers never spooled
    ({"spool_mb": 96, "max_upload_bytes": 32 * MEBIBYTE}, 2, 1, 32 * MEBIBYTE),  # the least: the slot alone
    ({"max_upload_bytes": 10_000}, 4, serve.WORKER_CONNECTIONS, 0),  # 80,527 fit, but nginx holds no more
])
def test_spool_plan_takes_the_most_requests_whose_uploads_and_answers_fit_spool_mb(overrides, threads, held, answer):
    settings = Settings(**overrides)
    plan = serve.spool_plan(settings, threads)
    assert plan == serve.Spool(held_requests=held, answer_bytes=answer, work_slots=settings.workers * (threads - 1))
    upload, spool = settings.max_upload_bytes, settings.spool_mb * MEBIBYTE
    assert plan.disk_bytes(upload) == held * (upload + answer) + plan.work_slots * upload <= spool
    assert plan.disk_bytes(upload) + upload + answer > spool or held == serve.WORKER_CONNECTIONS  # no more fit
    config = serve.nginx_config(settings, Path("/run/superres"), "/run/superres/gunicorn.sock", threads)
    assert config.count(f"limit_conn work_requests {held}; proxy_max_temp_file_size {answer}; "
                        "proxy_pass http://work;") == 2
    assert f"it takes {held} image request{'' if held == 1 else 's'} at once," in config
    assert "limit_conn_zone work zone=work_requests:64k;" in config  # a constant key: one count for both routes
    assert f"client_max_body_size {min(upload, MEBIBYTE)}; proxy_max_temp_file_size 0; proxy_pass http://ops;" \
        in config


def test_spool_plan_refuses_a_spool_that_cannot_hold_the_workers_slots_naming_the_settings():
    settings = Settings(workers=2, spool_mb=500)
    with pytest.raises(serve.SpoolTooSmall) as refused:
        serve.spool_plan(settings, 4)
    assert str(refused.value) == (
        "SPOOL_MB=500 cannot hold the workers' 6 request slots (WORKERS=2 x (THREADS=4 - 1)) at "
        "MAX_UPLOAD_BYTES=33554432: each slot's request may take 100663296 bytes of disk (its upload in nginx and "
        "in the worker, and 33554432 bytes of its answer spooled by nginx), 576 MiB for all 6; set SPOOL_MB to at "
        "least 576, or lower MAX_UPLOAD_BYTES, WORKERS or THREADS")
    assert serve.spool_plan(Settings(workers=2, spool_mb=576), 4).held_requests == 6


@pytest.mark.parametrize("threads, spool_mb, reasons", [
    ("4", "100", ["serve.py: SPOOL_MB=100 cannot hold the workers' 3 request slots (WORKERS=1 x (THREADS=4 - 1)) at "
                  "MAX_UPLOAD_BYTES=33554432:", "set SPOOL_MB to at least 288,"]),
    ("1", "768", ["serve.py: THREADS=1 leaves no thread for images: behind nginx each worker keeps one thread free "
                  "for /health, /ready and /metrics; set THREADS to 2 or more, or 0 for the default"]),
], ids=["spool", "threads"])
def test_serve_refuses_to_start_with_settings_nginx_cannot_serve(threads, spool_mb, reasons):
    marker = f"SERVE_SPOOL_TEST={os.getpid()}"
    done = subprocess.run([sys.executable, "serve.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PORT": str(free_port()), "MODELS": "srgan", "DEFAULT_MODEL": "srgan",
                               "WORKERS": "1", "THREADS": threads, "SPOOL_MB": spool_mb,
                               "MAX_UPLOAD_BYTES": str(MEBIBYTE * 32), marker.split("=")[0]: marker.split("=")[1]})
    assert done.returncode == 2, done.stderr[-2000:]
    for reason in reasons:
        assert reason in done.stderr
    assert not processes_in_environment(marker)  # neither gunicorn nor nginx was started


# What /tmp holds besides the requests' uploads and answers: Keras' home, torch's caches, serve.py's runtime files.
TMP_OTHER_MIB = 256


@pytest.mark.parametrize("manifest, device", [(MANIFEST, "cpu"), (GPU_MANIFEST, "cuda")], ids=["cpu", "gpu"])
def test_manifest_spool_fits_the_tmp_volume_and_holds_the_workers_slots(manifest, device):
    env = environment(manifest)
    settings = Settings(**{name.lower(): value for name, value in env.items()})
    assert settings.spool_mb == Settings().spool_mb  # the manifests keep the default
    [tmp] = [volume for volume in documents(manifest)["Deployment"]["spec"]["template"]["spec"]["volumes"]
             if volume["name"] == "tmp"]
    assert settings.spool_mb + TMP_OTHER_MIB <= parse_gibibytes(tmp["emptyDir"]["sizeLimit"]) * 1024
    plan = serve.spool_plan(settings, settings.threads_for(device))
    assert plan.held_requests >= plan.work_slots > 0
    assert plan.disk_bytes(settings.max_upload_bytes) <= settings.spool_mb * MEBIBYTE
    assert f"nginx takes {plan.held_requests} at once (the worker's {plan.work_slots} slots among them)" \
        in manifest.read_text()


@pytest.mark.parametrize("doc", ["deployment.md", "load.md"])
def test_docs_quote_the_spool_refusal_as_nginx_words_it_with_the_defaults(doc):
    held = serve.spool_plan(Settings(), Settings().threads_for("cpu")).held_requests
    message = serve.JSON_ERRORS["spool_full"][1].format(held_requests=serve.image_requests(held), spool_mb=Settings().spool_mb)
    assert message in " ".join((ROOT / "docs" / doc).read_text().split())
