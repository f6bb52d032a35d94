# Two commands do everything on a fresh machine: `make run` and `make test`; `make run-gpu` is the third, for GPU hosts.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# The PyTorch path's own venv: the serving stack and torch, without TensorFlow, Keras or OpenVINO.
GPU_VENV := .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed

.PHONY: setup setup-dev setup-gpu nginx run run-gpu test test-fast bench-quality bench-speed bench-precision bench-memory bench-stages bench-load bench-hostile docker-test docker-test-gpu lint clean pictures docs-pictures

# Serving only: requirements.txt. The test tools (requirements-dev.txt) come with `make test`.
setup: $(STAMP)

$(STAMP): requirements.txt requirements-serving.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

setup-dev: $(DEV_STAMP)

# The tests run the PyTorch backend on the CPU too, beside the CPU path. triton (torch.compile's GPU compiler,
# unused here) is removed: its native library and TensorFlow's crash a process that imports both.
$(DEV_STAMP): $(STAMP) requirements-dev.txt requirements-torch.txt
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt -r requirements-torch.txt
	$(BIN)/pip uninstall --disable-pip-version-check -q -y triton
	touch $(DEV_STAMP)

setup-gpu: $(GPU_STAMP)

$(GPU_STAMP): requirements-serving.txt requirements-torch.txt requirements-nodeps.txt pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install --disable-pip-version-check -q -r requirements-serving.txt -r requirements-torch.txt
	$(GPU_VENV)/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(GPU_VENV)/bin/pip install --disable-pip-version-check -q --no-deps -e .
	touch $(GPU_STAMP)

# nginx in front of gunicorn (serve.py); nginx-light is installed with apt where it is missing (Debian, as root).
run: setup nginx
	$(BIN)/python serve.py

# The same service through PyTorch: every model on CUDA where PyTorch sees an NVIDIA GPU, else on the CPU
# (slower, same answers). DEVICE=cuda stops at start where no GPU is visible.
run-gpu: setup-gpu nginx
	$(GPU_VENV)/bin/python serve.py

nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { apt-get update -q && apt-get install -y -q nginx-light; }

test: setup-dev
	$(BIN)/python -m pytest

test-fast: setup-dev
	$(BIN)/python -m pytest -m "not slow"

# ruff on the code, hadolint on the Dockerfiles, strict schema validation of the manifests.
lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile Dockerfile.gpu
	$(BIN)/kubernetes-validate --strict --quiet max-image-super-resolution-generator.yaml max-image-super-resolution-generator-gpu.yaml

# Build the Docker image, run it, and check /ready, /model/metadata and a real /model/predict (docs/deployment.md).
docker-test:
	bash scripts/docker-test.sh

# The same for the GPU image (Dockerfile.gpu), run on this machine's CPU through PyTorch (docs/gpu.md).
docker-test-gpu:
	DOCKER_TEST_VARIANTS=gpu bash scripts/docker-test.sh

clean:
	rm -rf $(VENV) $(GPU_VENV) .pytest_cache .hypothesis

# PSNR/SSIM of every model on Set5, Set14 and BSD100 -> docs/benchmarks.md (about an hour on 2 cores).
# Options go through ARGS, e.g. make bench-quality ARGS="--models srgan --sets Set5".
bench-quality: setup-dev
	$(BIN)/python -m bench.quality $(ARGS)

# Speed and memory table against the targets (docs/benchmarks.md speed section), under the exclusive CPU lock.
bench-speed: setup-dev
	flock -x /tmp/cpu.lock $(BIN)/python -m bench.speed $(ARGS)

# bf16 against fp32 for every model (docs/benchmarks.md precision section): which models may run in bf16.
bench-precision: setup-dev
	flock -s /tmp/cpu.lock $(BIN)/python -m bench.precision $(ARGS)

# Each model's memory per window pixel, and a worker's peak RSS against MEMORY_BUDGET_MB (docs/speed.md).
bench-memory: setup-dev
	flock -s /tmp/cpu.lock $(BIN)/python -m bench.memory $(ARGS)

# Where a 500² request's time goes, and the PNG compression level's size/time trade (docs/speed.md).
bench-stages: setup-dev
	flock -x /tmp/cpu.lock $(BIN)/python -m bench.stages $(ARGS)

# docs/web-page.png: the browser test's screenshot of the page, on purpose (a plain test run writes it to a temporary folder).
docs-pictures: setup-dev
	WEB_SCREENSHOT=$(CURDIR)/docs/web-page.png $(BIN)/python -m pytest tests/test_web.py -k downloads -q

# docs/comparison.png: a crop of a sample photo as input, bicubic and every model side by side (a few minutes).
pictures: setup-dev
	flock /tmp/cpu.lock $(BIN)/python -m bench.pictures $(ARGS)

# Load test on loopback: starts gunicorn, 8 clients for 2 minutes, report -> docs/load.md.
# Options go through ARGS, e.g. make bench-load ARGS="--workers 2 --duration 60".
bench-load: setup-dev
	$(BIN)/python -m bench.load --report docs/load.md $(ARGS)

# 50 slow clients and the hostile inputs against gunicorn alone and behind nginx -> docs/load.md.
bench-hostile: setup-dev
	flock -x /tmp/cpu.lock $(BIN)/python -m bench.hostile --report docs/load.md $(ARGS)
