"""Real worker processes for tests: a PostgreSQL database of their own, Redis, the fake backend, and uvicorn."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("CHATAPI_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
LEASE_SECONDS = 2


def services_absent(redis_url: str) -> str | None:
    """Why tests of real workers cannot run here (PostgreSQL or Redis does not answer), or None."""
    try:
        import psycopg

        psycopg.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except Exception as exc:
        return f"PostgreSQL is not reachable at {POSTGRES}: {exc}"
    try:
        import redis

        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis is not reachable at {redis_url}: {exc}"
    return None


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def worker_site(fake: FakeOpenAI, *, redis_url: str, name: str) -> Iterator[dict[str, str]]:
    """A migrated PostgreSQL database of its own with the user `alice`, Redis (whose db it flushes at the
    end: give each test module its own) and the fake backend: the environment for workers to serve it."""
    import psycopg
    import redis

    database = f"chatapi_{name}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPI_", "OPENAI_", "DJANGO_", "REDIS_"))}
    env.update(
        {
            "DATABASE_URL": f"{POSTGRES}/{database}",
            "REDIS_URL": redis_url,
            "DEBUG": "true",
            "OPENAI_BASE_URL": fake.url,
            "OPENAI_API_KEY": "sk-test-not-a-real-key",
            "CHATAPI_MODELS": ",".join(FakeOpenAI.models),
            "CHATAPI_BACKEND_MAX_RETRIES": "0",
            "CHATAPI_GENERATION_LEASE_SECONDS": str(LEASE_SECONDS),
        }
    )
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "create_user", "alice")
        yield env
    finally:
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
