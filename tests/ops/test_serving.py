"""The README's newcomer path, for real: migrate, create a user and key, serve with uvicorn, talk HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_log(server: subprocess.Popen) -> str:
    """The end of what a server started by _serving wrote to stderr (for failure messages)."""
    log = getattr(server, "log", None)
    if log is None:
        return ""
    log.flush()
    log.seek(0)
    return log.read()[-5000:]


@contextmanager
def _serving(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """uvicorn serving chatapi with `env` until the block ends; yields (url, process) once it is healthy.
    Its stderr goes to a file (a pipe nobody reads would fill and stall it): `server_log(process)`."""
    port = _free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "chatapi.asgi:application", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
        server.log = log  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"uvicorn did not become healthy: {server_log(server)}")
                time.sleep(0.1)
            yield url, server
        finally:
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[dict[str, str], str]:
    """A fresh SQLite file, migrated, with a user and a key, and no backend (the echo model): (env, key)."""
    db = tmp_path_factory.mktemp("served") / "db.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPI_", "OPENAI_", "DJANGO_"))}
    env.update({"DATABASE_URL": f"sqlite:///{db}", "DEBUG": "true"})

    def manage(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    manage("migrate", "--noinput")
    manage("create_user", "alice", "--email", "alice@example.com")
    return env, manage("create_api_key", "alice", "--name", "laptop").strip()


@pytest.fixture(scope="module")
def served(site) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """uvicorn serving chatapi on the fresh site; yields (url, key, process)."""
    env, key = site
    with _serving(env) as (url, server):
        yield url, key, server


def test_a_branching_conversation_over_http_with_the_echo_model(served):
    url, key, server = served
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {key}"

    first = s.post(f"{url}/conversations/new", json={"prompt": "Hello there"}, timeout=10)
    assert first.status_code == 201, f"{first.text}\n{server_log(server)}"
    reply = first.json()["response"]
    assert reply["model"] == "echo"
    assert "offline" in reply["message"] and "Hello there" in reply["message"]
    cid = reply["conversation_id"]

    second = s.post(f"{url}/conversations/{cid}/ask", data={"prompt": "And again"}, timeout=10)  # a form post
    assert second.status_code == 201, second.text
    branch = s.post(f"{url}/conversations/{cid}/ask", json={"prompt": "Edited", "parent_id": reply["id"]}, timeout=10)
    assert branch.status_code == 201

    messages = s.get(f"{url}/conversations/{cid}/messages", timeout=10).json()
    assert [m["message"] for m in messages][::2] == ["Hello there", "Edited"]
    assert len(s.get(f"{url}/conversations/{cid}/messages?all=true", timeout=10).json()) == 6

    assert s.delete(f"{url}/conversations/{cid}", timeout=10).status_code == 204
    assert s.get(f"{url}/conversations/{cid}", timeout=10).status_code == 404


def test_bare_authorization_header_and_401_over_http(served):
    url, key, _ = served
    assert requests.get(f"{url}/conversations", headers={"Authorization": key}, timeout=10).status_code == 200
    response = requests.get(f"{url}/conversations", timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["type"] == "authentication_error"


def test_on_sqlite_the_write_ahead_log_stays_between_requests(served, site):
    """The worker holds a connection open, so that the requests' own connections, closed after each, do
    not each end with SQLite folding its write-ahead log into the database and deleting it."""
    url, key, server = served
    env, _ = site
    wal = Path(env["DATABASE_URL"].removeprefix("sqlite:///") + "-wal")
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {key}"
    for _ in range(3):
        assert s.post(f"{url}/conversations/new", json={"prompt": "Hi"}, timeout=10).status_code == 201
        time.sleep(0.2)  # the reply is stored, its connection closed
        assert wal.exists(), server_log(server)
