"""Limits held across real worker processes: two uvicorn workers sharing PostgreSQL and Redis (db 13).

Of 2N concurrent requests spread over both workers, exactly N pass a limit of N a minute; a worker killed
with SIGKILL mid-reply keeps its generation counted toward max_parallel only until its lease runs out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.fake_openai import FakeOpenAI
from tests.live import read_events
from tests.ops.test_serving import _serving

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = os.environ.get("CHATAPI_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("CHATAPI_TEST_LIMITS_REDIS", "redis://127.0.0.1:6379/13")
LEASE_SECONDS = 2


def _absent() -> str | None:
    try:
        import psycopg

        psycopg.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except Exception as exc:
        return f"PostgreSQL is not reachable at {POSTGRES}: {exc}"
    try:
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis is not reachable at {REDIS}: {exc}"
    return None


_why = _absent()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@dataclass
class Cluster:
    env: dict[str, str]
    urls: list[str]

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def session(self, *limits: str) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.manage('create_api_key', 'alice', *limits).strip()}"
        return session


@pytest.fixture(scope="module")
def cluster(fake_openai_server: FakeOpenAI) -> Iterator[Cluster]:
    import psycopg
    import redis

    name = f"chatapi_limits_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPI_", "OPENAI_", "DJANGO_", "REDIS_"))}
    env.update(
        {
            "DATABASE_URL": f"{POSTGRES}/{name}",
            "REDIS_URL": REDIS,
            "DEBUG": "true",
            "OPENAI_BASE_URL": fake_openai_server.url,
            "OPENAI_API_KEY": "sk-test-not-a-real-key",
            "CHATAPI_MODELS": ",".join(FakeOpenAI.models),
            "CHATAPI_BACKEND_MAX_RETRIES": "0",
            "CHATAPI_GENERATION_LEASE_SECONDS": str(LEASE_SECONDS),
        }
    )
    cluster = Cluster(env=env, urls=[])
    try:
        cluster.manage("migrate", "--noinput")
        cluster.manage("create_user", "alice")
        with _serving(env) as (first, _), _serving(env) as (second, _):
            cluster.urls = [first, second]
            yield cluster
    finally:
        redis.Redis.from_url(REDIS).flushdb()  # db 13: this test's own
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def backend(fake_openai_server: FakeOpenAI) -> FakeOpenAI:
    fake_openai_server.reset()
    return fake_openai_server


def test_exactly_n_of_2n_concurrent_requests_through_two_workers_pass(cluster, backend):
    n = 6
    session = cluster.session("--rpm", str(n))
    backend.hold()  # all of them in flight at once

    def ask(i: int) -> requests.Response:
        url = cluster.urls[i % 2]
        return session.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": f"{i}"}]})

    with ThreadPoolExecutor(2 * n) as pool:
        answers = [pool.submit(ask, i) for i in range(2 * n)]
        deadline = time.monotonic() + 20
        while sum(a.done() for a in answers) < n and time.monotonic() < deadline:
            time.sleep(0.02)  # the refused ones answer at once
        backend.release()
        statuses = sorted(a.result(timeout=30).status_code for a in answers)

    assert statuses == [200] * n + [429] * n
    assert len(backend.requests) == n


def test_a_killed_workers_generation_is_released_from_max_parallel_after_its_lease(cluster, backend):
    session = cluster.session("--max-parallel", "1")
    survivor = cluster.urls[0]
    backend.reply_with(" ".join(f"w{i}" for i in range(400)))
    backend.stream_slowly(0.1)
    with _serving(cluster.env) as (doomed_url, doomed):
        response = session.post(
            f"{doomed_url}/conversations/new", json={"prompt": "long", "stream": True}, stream=True, timeout=30
        )
        assert response.status_code == 200
        next(e for e in read_events(response) if not isinstance(e, str) and e.event == "delta")
        # Counted on every worker while it runs.
        assert session.post(f"{survivor}/api/ask", json={"content": "too soon"}, timeout=30).status_code == 429
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        killed_at = time.monotonic()

    backend.reset()
    statuses = []
    while time.monotonic() - killed_at < 4 * LEASE_SECONDS:
        status = session.post(f"{survivor}/api/ask", json={"content": "now?"}, timeout=30).status_code
        statuses.append(status)
        if status == 200:
            break
        time.sleep(0.2)
    assert statuses[-1] == 200, statuses
    assert time.monotonic() - killed_at <= LEASE_SECONDS + 1.5
