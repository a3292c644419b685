"""Limits held across real worker processes: two uvicorn workers sharing PostgreSQL and Redis (db 13).

Of 2N concurrent requests spread over both workers, exactly N pass a limit of N a minute; a worker killed
with SIGKILL mid-reply keeps its generation counted toward max_parallel only until its lease runs out.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from tests.cluster import LEASE_SECONDS, manage, services_absent, worker_site
from tests.fake_openai import FakeOpenAI
from tests.live import read_events
from tests.ops.test_serving import _serving

REDIS = os.environ.get("CHATAPI_TEST_LIMITS_REDIS", "redis://127.0.0.1:6379/13")

_why = services_absent(REDIS)
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@dataclass
class Cluster:
    env: dict[str, str]
    urls: list[str]

    def manage(self, *args: str) -> str:
        return manage(self.env, *args)

    def session(self, *limits: str) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.manage('create_api_key', 'alice', *limits).strip()}"
        return session


ADMIN_KEY = "operator-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def cluster(fake_openai_server: FakeOpenAI) -> Iterator[Cluster]:
    with (
        worker_site(fake_openai_server, redis_url=REDIS, name="limits") as env,
        _serving({**env, "CHATAPI_ADMIN_KEY": ADMIN_KEY, "CHATAPI_ADMIN_MAX_FAILURES": "4"}) as (first, _),
        _serving({**env, "CHATAPI_ADMIN_KEY": ADMIN_KEY, "CHATAPI_ADMIN_MAX_FAILURES": "4"}) as (second, _),
    ):
        yield Cluster(env=env, urls=[first, second])


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


def test_failed_admin_keys_are_counted_across_workers(cluster):
    """The operator endpoints' failed admin_key attempts from one address, spread over both workers, add up:
    past the limit either worker refuses even the right key; another address is not held back."""

    def add(url: str, key: str, address: str) -> requests.Response:
        # uvicorn takes the client's address from X-Forwarded-For when the proxy (here: loopback) is trusted.
        return requests.post(
            f"{url}/admin/users/add", json={"admin_key": key}, headers={"X-Forwarded-For": address}, timeout=30
        )

    if 60 - time.time() % 60 < 10:  # all of it within one minute's window
        time.sleep(60 - time.time() % 60)
    guesser = f"10.9.{os.getpid() % 256}.{int(time.time()) % 256}"
    statuses = [add(cluster.urls[i % 2], "guess", guesser).status_code for i in range(4)]
    assert statuses == [401] * 4
    for url in cluster.urls:
        refused = add(url, ADMIN_KEY, guesser)
        assert refused.status_code == 429
        assert refused.json()["error"].startswith("Too many failed admin_key attempts")
        assert add(url, ADMIN_KEY, "10.8.0.1").status_code == 200


def test_any_worker_shows_the_requests_counted_by_the_others(cluster, backend):
    session = cluster.session("--rpm", "10")
    if 60 - time.time() % 60 < 5:  # all of it within one minute's window
        time.sleep(60 - time.time() % 60)
    for _ in range(3):
        asked = session.post(f"{cluster.urls[0]}/api/ask", json={"content": "count me"}, timeout=30)
        assert asked.status_code == 200

    listed = session.get(f"{cluster.urls[1]}/conversations", timeout=30)

    assert listed.status_code == 200
    assert listed.headers["x-ratelimit-limit-requests"] == "10"
    assert listed.headers["x-ratelimit-remaining-requests"] == "7"
    assert asked.headers["x-ratelimit-remaining-requests"] == "7"
