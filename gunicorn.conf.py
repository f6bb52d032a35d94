"""gunicorn settings, taken from the same typed settings as the app (see config.py)."""
from config import load_settings

_settings = load_settings()

bind = f"0.0.0.0:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
timeout = _settings.timeout_s
graceful_timeout = 30
# Each worker imports the app itself and so loads its own models once, after the fork:
# TensorFlow's thread pools do not survive a fork.
preload_app = False
accesslog = None
loglevel = _settings.log_level.lower()
