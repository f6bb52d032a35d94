#!/usr/bin/env bash
# Build the Docker image, run it, and check /ready, /model/metadata and a real /model/predict against it;
# the same for the GPU image (Dockerfile.gpu), run on the CPU, with DOCKER_TEST_VARIANTS="cpu gpu" or gpu.
#
# Works on a bare Debian CI machine: installs docker.io if dockerd is missing, starts dockerd by hand when
# none is running (and stops it at the end), and, when no registry is reachable and python:3.11-slim is
# absent, builds a stand-in base image with debootstrap (Debian bookworm's Python is 3.11 too) under its own
# tag, passes it to the Dockerfile as BASE_IMAGE, and removes it at the end: a later plain `docker build`
# on this host never takes the stand-in for the official image.
#
# Environment: DOCKER_TEST_VARIANTS (images to test, in order: cpu = Dockerfile, gpu = Dockerfile.gpu; default
# cpu), IMAGE and GPU_IMAGE (tags to build), DOCKER_TEST_MODELS and DOCKER_TEST_GPU_MODELS (MODELS inside each
# container; empty = the image's default), READY_TIMEOUT_S (model loading), KEEP_STAND_IN=1 (keep the
# stand-in for the next run). The variants share one dockerd and one base image.
#
# The GPU image runs here without a GPU, as on any CI machine: its /model/metadata must say so (device kind
# cpu, backend pytorch: PyTorch on the CPU, the fallback of DEVICE=auto), and its predict goes through PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER_TEST_VARIANTS=${DOCKER_TEST_VARIANTS:-cpu}
IMAGE=${IMAGE:-max-image-super-resolution-generator:test}
GPU_IMAGE=${GPU_IMAGE:-max-image-super-resolution-generator:gpu-test}
OFFICIAL_BASE=python:3.11-slim
STAND_IN_BASE=max-image-super-resolution-generator-base:debootstrap
KEEP_STAND_IN=${KEEP_STAND_IN:-}
DOCKER_TEST_MODELS=${DOCKER_TEST_MODELS-}
DOCKER_TEST_GPU_MODELS=${DOCKER_TEST_GPU_MODELS-}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-600}
SAMPLE=${SAMPLE:-assets/test_examples/low_resolution/chelsea.png}

WORK=$(mktemp -d /tmp/docker-test.XXXXXX)
CONTAINER=""
DOCKERD_PID=""
BASE_IMAGE=""
BUILT_STAND_IN=""

log() { printf '[docker-test %s] %s\n' "$(date +%T)" "$*" >&2; }

cleanup() {
    local status=$?
    if [ -n "$CONTAINER" ]; then
        if [ "$status" -ne 0 ]; then
            log "container log (last 60 lines):"
            docker logs --tail 60 "$CONTAINER" >&2 || true
        fi
        docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    fi
    if [ -n "$BUILT_STAND_IN" ] && [ -z "$KEEP_STAND_IN" ]; then
        docker rmi -f "$STAND_IN_BASE" >/dev/null 2>&1 || true
    fi
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the dockerd this script started"
        kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    log "installing $*"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Runs in a subshell that becomes dockerd (or sudo), so that $! is the process to stop at the end.
start_dockerd() {
    # dockerd and its containerd must not keep the caller's descriptors open (a flock would stay held).
    local fd
    for fd in /proc/self/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    if [ "$(id -u)" -eq 0 ]; then exec dockerd; else exec sudo dockerd; fi
}

ensure_docker() {
    command -v dockerd >/dev/null || apt_install docker.io
    if docker info >/dev/null 2>&1; then
        return
    fi
    log "starting dockerd"
    (start_dockerd) >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 1
    done
    cat "$WORK/dockerd.log" >&2
    log "dockerd did not start"
    exit 1
}

# A Debian bookworm root filesystem with Python 3.11 and pip, trusting the same CAs as this machine
# (so that pip can reach PyPI through a TLS-inspecting proxy), imported under the base image's tag.
build_stand_in_base() {
    log "$OFFICIAL_BASE is absent and cannot be pulled: building a stand-in with debootstrap as $STAND_IN_BASE"
    command -v debootstrap >/dev/null || apt_install debootstrap
    local root="$WORK/rootfs"
    as_root debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$root" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
    if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
        as_root cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    fi
    as_root chroot "$root" update-ca-certificates >/dev/null
    as_root rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    as_root tar -C "$root" -c . | docker import - "$STAND_IN_BASE" >/dev/null
    as_root rm -rf "$root"
    BUILT_STAND_IN=1
}

# Sets BASE_IMAGE: the official image when present or pullable, else the stand-in (kept from a run with
# KEEP_STAND_IN=1, or built now).
ensure_base_image() {
    BASE_IMAGE=$OFFICIAL_BASE
    docker image inspect "$OFFICIAL_BASE" >/dev/null 2>&1 && return
    timeout 120 docker pull -q "$OFFICIAL_BASE" >/dev/null 2>&1 && return
    BASE_IMAGE=$STAND_IN_BASE
    docker image inspect "$STAND_IN_BASE" >/dev/null 2>&1 && return
    build_stand_in_base
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_until_ready() {
    local url=$1 deadline=$((SECONDS + READY_TIMEOUT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" != "true" ]; then
            log "the container exited"
            return 1
        fi
        if curl -fsS -o "$WORK/ready.json" "$url/ready" 2>/dev/null; then
            log "ready: $(cat "$WORK/ready.json")"
            return 0
        fi
        sleep 2
    done
    log "not ready within ${READY_TIMEOUT_S} s: $(curl -sS "$url/ready" || true)"
    return 1
}

# Width and height from a PNG's IHDR chunk (no imaging library needed on the host).
png_size() {
    python3 - "$1" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read(24)
if data[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit(f"not a PNG: {data[:8]!r}")
print(*struct.unpack(">II", data[16:24]))
PY
}

# "KIND/BACKEND NAME" of /model/metadata's device, e.g. "cpu/pytorch Intel(R) Xeon(R) ...".
device_of() {
    python3 - "$1" <<'PY'
import json, sys
device = json.load(open(sys.argv[1]))["device"]
print(f"{device['kind']}/{device['backend']} {device.get('name', '')}")
PY
}

# check_service URL [KIND/BACKEND]: the second argument, when given, is what /model/metadata's device must say.
check_service() {
    local url=$1 expected_device=${2-}
    wait_until_ready "$url"

    curl -fsS "$url/model/metadata" >"$WORK/metadata.json"
    grep -q '"max-image-super-resolution-generator"' "$WORK/metadata.json" \
        || { log "unexpected metadata: $(cat "$WORK/metadata.json")"; return 1; }
    if [ -n "$expected_device" ]; then
        local device
        device=$(device_of "$WORK/metadata.json") || { log "no device in the metadata: $(cat "$WORK/metadata.json")"; return 1; }
        [ "${device%% *}" = "$expected_device" ] \
            || { log "metadata says device $device, expected $expected_device"; return 1; }
        log "metadata ok: device $device"
    else
        log "metadata ok"
    fi

    local status
    status=$(curl -sS -o "$WORK/out.png" -w '%{http_code}' -F "image=@$SAMPLE" "$url/model/predict")
    [ "$status" = 200 ] || { log "predict answered $status: $(head -c 500 "$WORK/out.png")"; return 1; }
    read -r in_w in_h < <(png_size "$SAMPLE")
    read -r out_w out_h < <(png_size "$WORK/out.png")
    if [ "$out_w" -ne $((in_w * 4)) ] || [ "$out_h" -ne $((in_h * 4)) ]; then
        log "predict returned ${out_w}x${out_h} for a ${in_w}x${in_h} input"
        return 1
    fi
    log "predict ok: ${in_w}x${in_h} -> ${out_w}x${out_h} PNG"
    curl -fsS "$url/health" >/dev/null
    log "health ok"
    curl -fsS -o "$WORK/metrics.txt" "$url/metrics"
    grep -q '^superres_http_requests_total{.*route="/model/predict".*status="200"} 1.0$' "$WORK/metrics.txt" \
        || { log "/metrics does not count the predict: $(grep superres_http_requests_total "$WORK/metrics.txt")"; return 1; }
    log "metrics ok"
}

# build_and_check VARIANT: build the variant's image, run it read-only on a free port, check it, remove it.
build_and_check() {
    local variant=$1 dockerfile image models expected_device="" started=$SECONDS
    case "$variant" in
        cpu) dockerfile=Dockerfile image=$IMAGE models=$DOCKER_TEST_MODELS ;;
        # No GPU here: DEVICE=auto falls back to the CPU, through PyTorch (the only runtime in that image).
        gpu) dockerfile=Dockerfile.gpu image=$GPU_IMAGE models=$DOCKER_TEST_GPU_MODELS expected_device=cpu/pytorch ;;
        *) log "unknown variant $variant (cpu or gpu)"; exit 2 ;;
    esac
    log "[$variant] building $image from $dockerfile on $BASE_IMAGE"
    local previous
    previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
    docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -f "$dockerfile" -t "$image" . >"$WORK/build-$variant.log" 2>&1 \
        || { tail -40 "$WORK/build-$variant.log" >&2; exit 1; }
    # The tag's previous build, now untagged, would stay on disk (6.5 GB for the GPU image): remove it.
    if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
        docker rmi "$previous" >/dev/null 2>&1 || true
    fi
    log "[$variant] built in $((SECONDS - started)) s; $(docker image inspect -f '{{.Size}}' "$image" \
        | awk '{printf "%.2f GB", $1 / 1e9}')"

    local port env_args=()
    port=$(free_port)
    [ -n "$models" ] && env_args=(-e "MODELS=$models")
    # Read-only root with a writable /tmp, as the Kubernetes manifest runs it.
    CONTAINER=$(docker run -d --read-only --tmpfs /tmp -p "127.0.0.1:$port:5000" "${env_args[@]}" "$image")
    log "[$variant] container ${CONTAINER:0:12} on port $port"
    local loading=$SECONDS
    check_service "http://127.0.0.1:$port" "$expected_device"
    log "[$variant] ready and checked in $((SECONDS - loading)) s; memory $(docker stats --no-stream \
        --format '{{.MemUsage}}' "$CONTAINER")"
    docker rm -f "$CONTAINER" >/dev/null
    CONTAINER=""
    log "[$variant] passed in $((SECONDS - started)) s"
}

main() {
    local started=$SECONDS variant
    ensure_docker
    ensure_base_image
    for variant in $DOCKER_TEST_VARIANTS; do
        build_and_check "$variant"
    done
    log "passed ($DOCKER_TEST_VARIANTS) in $((SECONDS - started)) s"
}

main "$@"
