# The service's image: gunicorn serving app:app with every model's weights installed by pip.
#   docker build -t max-image-super-resolution-generator .
#   docker run --stop-timeout 60 -p 5000:5000 max-image-super-resolution-generator
# BASE_IMAGE: scripts/docker-test.sh passes its own tag for a stand-in built offline, never python:3.11-slim.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The venv makes `python` and `pip` the same on the official image (/usr/local/bin/python) and on a
# Debian-based stand-in (/usr/bin/python3). KERAS_HOME points into /tmp so the root filesystem can be read-only.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_HOME=/tmp/.keras \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app

# nginx buffers every request and answer in front of gunicorn, so that slow or idle clients hold no thread (serve.py).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/*

COPY requirements.txt requirements-serving.txt requirements-nodeps.txt ./
RUN python -m venv /opt/venv \
    && python -m pip install --no-cache-dir -r requirements.txt \
    && python -m pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

# Code last, so that editing it does not reinstall the requirements. Owned by root: the service cannot change itself.
COPY . /app
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp superres

USER 10001:10001
EXPOSE 5000

# Slim images have no curl; the venv's python asks /health. Loading the models takes a while: start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '5000'), timeout=8)"]

# Every setting comes from the environment (see config.py and docs/deployment.md): PORT, WORKERS, MODELS ...
# serve.py runs nginx on PORT and gunicorn behind it, and forwards SIGTERM to both.
CMD ["python", "serve.py"]
