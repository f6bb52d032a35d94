"""The deployment files: the Kubernetes manifest (validated offline), the Dockerfile (hadolint) and the docs' table."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from config import Settings
from scripts import settings_table
from tests.conftest import ROOT

MANIFEST = ROOT / "max-image-super-resolution-generator.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOYMENT_DOCS = ROOT / "docs" / "deployment.md"
TOOLS = Path(sys.executable).parent


def documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def container() -> dict:
    [only] = documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


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


def test_memory_request_is_each_workers_budget_and_the_pods_other_processes():
    env = {item["name"]: item["value"] for item in container()["env"]}
    workers, budget = int(env["WORKERS"]), int(env["MEMORY_BUDGET_MB"])
    request = parse_gibibytes(container()["resources"]["requests"]["memory"]) * 1024
    assert request == workers * budget + POD_OVERHEAD_MIB


def parse_gibibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(Gi|Mi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


def test_dockerfile_passes_hadolint():
    result = subprocess.run([TOOLS / "hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_uses_only_the_classic_builder_and_runs_nginx_and_gunicorn_as_non_root():
    text = DOCKERFILE.read_text()
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
    assert {".venv", ".git", "tests"} <= ignored


def test_deployment_docs_hold_the_configuration_table_of_every_setting():
    # scripts/settings_table.py prints the table from config.Settings; the docs must hold it unchanged.
    assert settings_table.table() in DEPLOYMENT_DOCS.read_text()
    assert all(f"| `{name.upper()}` |" in settings_table.table() for name in Settings.model_fields)


def test_termination_grace_period_leaves_ten_seconds_after_the_shutdown_grace():
    pod = documents()["Deployment"]["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in container()["env"]}
    grace = int(env.get("SHUTDOWN_GRACE_S", Settings().shutdown_grace_s))
    assert pod["terminationGracePeriodSeconds"] == grace + 10
