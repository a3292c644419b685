"""Settings come from the environment, strictly; production mode refuses to start without a real secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_check(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPI_", "OPENAI_", "DJANGO_"))}
    base.pop("SECRET_KEY", None)
    base.pop("DEBUG", None)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_debug_off_without_secret_key_refuses_to_start():
    result = run_check(DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_debug_off_with_a_placeholder_secret_key_refuses_to_start():
    result = run_check(DEBUG="false", SECRET_KEY="django-insecure-changeme")
    assert result.returncode != 0
    assert "not a real secret" in result.stderr


def test_debug_off_with_a_real_secret_key_starts():
    result = run_check(DEBUG="false", SECRET_KEY="k" * 20 + "7Hq2vN9xLp4RtY8wZc3B5mKd")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DEBUG", "maybe", "DEBUG must be a boolean"),
        ("CHATAPI_BACKEND_TIMEOUT", "soon", "CHATAPI_BACKEND_TIMEOUT must be a number"),
        ("CHATAPI_BACKEND_MAX_RETRIES", "-1", "CHATAPI_BACKEND_MAX_RETRIES must be at least 0"),
        ("CHATAPI_DEFAULT_MODEL", "not-offered", "is not in CHATAPI_MODELS"),
        ("CHATAPI_DEFAULT_RPM", str(10**30), "CHATAPI_DEFAULT_RPM must be at most 2147483647"),
        ("CHATAPI_MEDIA_STORAGE_OPTIONS", "bucket=media", "CHATAPI_MEDIA_STORAGE_OPTIONS must be a JSON object"),
        ("CHATAPI_MEDIA_STORAGE_OPTIONS", '["media"]', "CHATAPI_MEDIA_STORAGE_OPTIONS must be a JSON object"),
        ("CHATAPI_TOOLS_ON_CONVERSATIONS", "sometimes", "CHATAPI_TOOLS_ON_CONVERSATIONS must be a boolean"),
        ("CHATAPI_TTS_MAX_CHARS", "10", "CHATAPI_TTS_MAX_CHARS must be at least 100"),
    ],
)
def test_bad_values_are_errors_not_defaults(name, value, message):
    result = run_check(**{name: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_models_and_backend_come_from_the_environment():
    script = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.CHATAPI_MODELS, s.CHATAPI_DEFAULT_MODEL, s.CHATAPI_BACKEND_TIMEOUT, s.DATABASES['default']['ENGINE'])"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPI_", "OPENAI_"))}
    env = {
        **base,
        "DJANGO_SETTINGS_MODULE": "chatapi.settings",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "CHATAPI_MODELS": "llama3, qwen2",
        "CHATAPI_BACKEND_TIMEOUT": "12.5",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/whatever",
    }
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['llama3', 'qwen2'] llama3 12.5 django.db.backends.postgresql"


def _one_line_naming(result: subprocess.CompletedProcess[str], name: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chatapi: bad setting:") and name in lines[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [("CHATAPI_BACKEND_TIMEOUT", "soon"), ("DATABASE_URL", "nosuchdb://x/y"), ("CHATAPI_SSE_PING_SECONDS", "often")],
)
def test_a_bad_setting_stops_manage_py_with_one_line_naming_it(name, value):
    _one_line_naming(run_check(**{name: value}), name)


def test_a_bad_setting_stops_the_server_with_one_line_naming_it():
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPI_", "OPENAI_", "DJANGO_"))}
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "chatapi.asgi:application", "--port", "0", "--log-level", "critical"],
        cwd=ROOT,
        env={**base, "CHATAPI_SSE_PING_SECONDS": "often"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    _one_line_naming(result, "CHATAPI_SSE_PING_SECONDS")


def test_debug_off_with_a_short_admin_key_refuses_to_start():
    secret = "k" * 20 + "7Hq2vN9xLp4RtY8wZc3B5mKd"
    result = run_check(DEBUG="false", SECRET_KEY=secret, CHATAPI_ADMIN_KEY="letmein")
    assert result.returncode != 0
    assert "CHATAPI_ADMIN_KEY is too easy to guess" in result.stderr
    assert "letmein" not in result.stderr
    assert run_check(DEBUG="false", SECRET_KEY=secret, CHATAPI_ADMIN_KEY="x" * 16).returncode == 0
