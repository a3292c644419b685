"""Strict parsing of settings from environment variables (a bad value is an error, not a default)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingError(ImproperlyConfigured):
    """A setting from the environment (or .env) is missing or wrong; the message names it."""


@contextmanager
def exit_on_setting_error() -> Iterator[None]:
    """Around loading the settings at start-up: a bad setting ends the process with one line naming it
    and what is wrong (exit status 2), not a traceback."""
    try:
        yield
    except SettingError as exc:
        print(f"chatapi: bad setting: {exc}", file=sys.stderr)
        sys.exit(2)


def load_dotenv(path: Path) -> None:
    """Read KEY=VALUE lines from `path` into os.environ; the real environment wins."""
    if not path.is_file():
        return
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ")
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"{path}:{lineno}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(key.strip(), value)


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingError(f"{name} must be a boolean (true/false, 1/0, yes/no, on/off), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingError(f"{name} must be a whole number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingError(f"{name} must be at most {maximum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingError(f"{name} must be a number, got {raw!r}") from None
    if value <= minimum:
        raise SettingError(f"{name} must be greater than {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_sizes(name: str, default: dict[str, int]) -> dict[str, int]:
    """`name=size` pairs, comma-separated (`gpt-4o-mini=128000,llama3.2=8192`); `*=size` is the default."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return dict(default)
    sizes = dict(default)
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, sep, value = item.rpartition("=")
        if not sep or not key.strip():
            raise SettingError(f"{name} must be model=size pairs separated by commas, got {item!r}")
        try:
            size = int(value.strip())
        except ValueError:
            raise SettingError(f"{name}: the size of {key.strip()!r} must be a whole number, got {value!r}") from None
        if size < 256:
            raise SettingError(f"{name}: the size of {key.strip()!r} must be at least 256 tokens, got {size}")
        sizes[key.strip()] = size
    return sizes


def env_choice(name: str, default: str, choices: list[str]) -> str:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise SettingError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def env_json_object(name: str) -> dict[str, object]:
    """A JSON object (`{"bucket_name": "media"}`); empty or unset is `{}`."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SettingError(f"{name} must be a JSON object, got {raw!r}: {exc}") from None
    if not isinstance(value, dict):
        raise SettingError(f"{name} must be a JSON object, got {raw!r}")
    return value
