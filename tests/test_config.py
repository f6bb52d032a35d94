"""Settings are checked when read: a value a setting cannot take is refused at start, naming the setting."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import serve
from config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = [name for name, field in Settings.model_fields.items()
           if field.annotation in (int, float, int | None, float | None)]
FLOATS = [name for name, field in Settings.model_fields.items() if field.annotation is float]


def refused(**overrides: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        load_settings(**overrides)
    return caught.value


@pytest.mark.parametrize("name", NUMBERS)
def test_every_numeric_setting_refuses_a_negative_value_naming_it(name):
    assert [error["loc"] for error in refused(**{name: -1}).errors()] == [(name,)]


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_every_time_refuses_infinity_and_nan(name, value):
    # An infinite time limit or wait would reach nginx's configuration as "inf" (and int(inf) fails there).
    assert [error["loc"] for error in refused(**{name: value}).errors()] == [(name,)]


@pytest.mark.parametrize("port", [0, 65536])
def test_port_outside_tcps_range_is_refused(port):
    assert refused(port=port).errors()[0]["loc"] == ("port",)


def test_log_level_must_be_a_level_name_in_any_case():
    assert load_settings(log_level="debug").log_level == "debug"
    assert "LOG_LEVEL must be one of DEBUG, INFO" in str(refused(log_level="LOUD"))


def test_serve_refuses_to_start_naming_each_setting_and_its_value():
    env = {"PATH": "/usr/bin:/bin", "PORT": "70000", "LOG_LEVEL": "loud", "QUEUE_WAIT_S": "inf"}
    done = subprocess.run([sys.executable, "serve.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    for line in ("PORT='70000'", "LOG_LEVEL='loud'", "QUEUE_WAIT_S='inf': Input should be a finite number"):
        assert line in done.stderr


def test_gunicorn_started_directly_refuses_to_start_naming_each_setting_and_its_value():
    env = {"PATH": "/usr/bin:/bin", "PORT": "0", "LOG_LEVEL": "loud"}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "--check-config", "-c", "gunicorn.conf.py", "app:app"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    for line in ("PORT='0'", "LOG_LEVEL='loud'"):
        assert line in done.stderr


@pytest.mark.parametrize("seconds, written", [(20.0, "20000ms"), (2.5, "2500ms"), (0.001, "1ms")])
def test_nginx_gets_the_client_timeout_in_whole_milliseconds(seconds, written):
    # nginx refuses a fraction of a second ("2.5s") and would not start at all.
    config = serve.nginx_config(Settings(client_timeout_s=seconds), Path("/run/s"), "/run/s/g.sock", 4)
    for directive in ("client_header_timeout", "client_body_timeout", "send_timeout", "keepalive_timeout"):
        assert f"{directive} {written};" in config


def test_nginx_takes_a_client_timeout_of_a_fraction_of_a_second(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    (tmp_path / "nginx.conf").write_text(serve.nginx_config(Settings(client_timeout_s=2.5), tmp_path,
                                                             str(tmp_path / "g.sock"), 4))
    checked = subprocess.run([nginx, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
