"""chatapi benchmark: the service under uvicorn in front of a fast fake backend, on loopback.

    .venv/bin/python bench/run.py                             # SQLite, one worker
    .venv/bin/python bench/run.py --pg                        # PostgreSQL (postgres://postgres@127.0.0.1:5432/chatapi_bench)
    .venv/bin/python bench/run.py --pg --workers 2 --redis    # production: two workers sharing PostgreSQL and Redis
    .venv/bin/python bench/run.py --quick                     # fewer requests, for a smoke run
    .venv/bin/python bench/run.py --pg --workers 2 --redis --only soak --soak 100000   # memory over many requests

Prints a table and writes the numbers as JSON (default bench/results/latest.json) so that a later run
can be compared. Not part of the test suite: ratios in one run mean something, absolute numbers on a
shared machine less so. The service's CPU time is that of all its processes (uvicorn's supervisor and
its workers), its memory that of each worker. With several workers, the resume scenario runs on two
single-worker services (uvicorn's workers share one socket: which one a connection reaches cannot be
chosen), each stream resumed through the one not generating it, so from Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The model of the streams: the fake backend sends 50 chunks 20 ms apart, about a second.
MODEL = "bench-model"
# The model of everything else: the fake backend streams its short reply at once (fake_backend.py), as it
# answers a non-streamed request, since the service streams every persisted reply from the backend.
INSTANT = "bench-instant"
CHUNKS, CHUNK_DELAY = 50, 0.02
# The limited key's limits: all of them, so that every check runs (the Redis script, the slot held while the
# reply is generated and released after it), and so high that none is ever reached.
LIMITS = ["--rpm", "2000000000", "--tpm", "2000000000", "--max-parallel", "100000", "--budget-tokens", "2000000000",
          "--budget-period", "month"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:  # it exited
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far: what a request costs, however noisy the machine."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listed:
                found.extend(int(child) for child in listed.read().split())
    except FileNotFoundError:
        pass
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as line:
            return line.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Service:
    """A uvicorn process serving chatapi: the worker itself, or with --workers N a supervisor and N workers."""

    url: str
    process: subprocess.Popen
    workers: int
    startup_seconds: float = 0.0

    def worker_pids(self) -> list[int]:
        if self.workers == 1:
            return [self.process.pid]
        # uvicorn spawns its workers with multiprocessing (spawn_main); multiprocessing's resource tracker is not one.
        return [pid for pid in children(self.process.pid) if "spawn_main" in cmdline(pid)]

    def cpu_seconds(self) -> float:
        """The CPU time of the supervisor and all its descendants, workers included."""
        pids, seen = [self.process.pid], 0
        while seen < len(pids) < 100:
            pids.extend(children(pids[seen]))
            seen += 1
        return sum(cpu_seconds(pid) for pid in pids)

    def worker_rss_mb(self) -> list[float]:
        return [rss_mb(pid) for pid in self.worker_pids()]


@dataclass
class Stack:
    """The fake backend and the database the services run on."""

    env: dict[str, str]
    backend_url: str
    key: str
    backend: subprocess.Popen
    # Keys of the same user with every limit, and with all but max_parallel (none of them ever reached): what
    # limits cost (scenario_limits), with the slot released after each reply and without.
    limited_key: str = ""
    counted_key: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 30) -> float:
    import urllib.request

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit("the service exited during start-up")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.01)
    raise SystemExit("the service did not become healthy")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def stack(database_url: str, settings: dict[str, str]) -> Iterator[Stack]:
    """The database migrated with a user and a key, and the fake backend running."""
    backend_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPI_", "OPENAI_", "DJANGO_", "REDIS_"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{backend_port}/v1",
            "OPENAI_API_KEY": "bench-not-a-real-key",
            "CHATAPI_MODELS": f"{MODEL},{INSTANT}",
            "CHATAPI_BACKEND_MAX_RETRIES": "0",
            "CHATAPI_LOG_LEVEL": "WARNING",
            **settings,
        }
    )
    manage(env, "migrate", "--noinput")
    manage(env, "create_user", "bench")
    key = manage(env, "create_api_key", "bench", "--name", "bench").strip()
    limited_key = manage(env, "create_api_key", "bench", "--name", "bench-limited", *LIMITS).strip()
    counted_key = manage(env, "create_api_key", "bench", "--name", "bench-counted", *LIMITS[:4]).strip()
    backend = subprocess.Popen(
        [PYTHON, str(ROOT / "bench" / "fake_backend.py"), "--port", str(backend_port), "--chunks", str(CHUNKS),
         "--chunk-delay", str(CHUNK_DELAY)],
        preexec_fn=raise_fd_limit,
    )  # fmt: skip
    try:
        yield Stack(env, f"http://127.0.0.1:{backend_port}", key, backend, limited_key, counted_key)
    finally:
        stop(backend)


@contextmanager
def serve(stack: Stack, workers: int) -> Iterator[Service]:
    """uvicorn with `workers` worker processes (one: no supervisor) on a port of its own."""
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [PYTHON, "-m", "uvicorn", "chatapi.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--no-access-log", "--log-level", "warning", "--backlog", "4096"],
        cwd=ROOT, env=stack.env, preexec_fn=raise_fd_limit,
    )  # fmt: skip
    service = Service(f"http://127.0.0.1:{port}", process, workers)
    try:
        wait_healthy(service.url, process)
        service.startup_seconds = time.monotonic() - started
        # With several workers /healthz answers as soon as one does: wait until all of them are up and idle.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cpu = service.cpu_seconds()
            time.sleep(0.2)
            if len(service.worker_pids()) == workers and service.cpu_seconds() - cpu < 0.02:
                break
        yield service
    finally:
        stop(process)


class Client:
    """Requests to one service (`url`: another one's for the resume scenario) and to the backend directly."""

    def __init__(self, stack: Stack, service: Service) -> None:
        self.stack = stack
        self.service = service
        self.url = service.url
        timeout = aiohttp.ClientTimeout(total=120)
        # Idle connections are closed before uvicorn's keep-alive timeout (5 s) would close them under a request.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=3), timeout=timeout
        )
        # A new connection for every request: a client coming back after losing its stream.
        self.fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True), timeout=timeout)
        self.auth = {"Authorization": f"Bearer {stack.key}"}

    async def close(self) -> None:
        await self.session.close()
        await self.fresh.close()

    async def new_conversation(self, url: str | None = None) -> tuple[str, str]:
        async with self.session.post(
            f"{url or self.url}/conversations/new", json={"prompt": "hello", "model": INSTANT}, headers=self.auth
        ) as response:
            body = await response.json()
            assert response.status == 201, body
            return body["response"]["conversation_id"], body["response"]["id"]

    async def ask(self, conversation_id: str, parent_id: str, key: str | None = None) -> tuple[float, bool]:
        """A persisted non-streaming ask, always from the same parent so the thread depth stays the same."""
        started = time.perf_counter()
        async with self.session.post(
            f"{self.url}/conversations/{conversation_id}/ask",
            json={"prompt": "How are you?", "parent_id": parent_id},
            headers={"Authorization": f"Bearer {key}"} if key else self.auth,
        ) as response:
            await response.read()
            return time.perf_counter() - started, response.status == 201

    async def get(self, path: str) -> tuple[float, bool]:
        started = time.perf_counter()
        async with self.session.get(f"{self.url}{path}", headers=self.auth) as response:
            await response.read()
            return time.perf_counter() - started, response.status == 200

    async def v1(self, stream: bool = False, conversation_id: str | None = None) -> tuple[float, bool]:
        """`/v1/chat/completions` through the service: stateless, or stateful with X-Conversation-Id."""
        started = time.perf_counter()
        # A stateful request is a persisted reply, streamed from the backend: the instant model, as for an ask.
        model = INSTANT if conversation_id else MODEL
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
        headers = {**self.auth, "X-Conversation-Id": conversation_id} if conversation_id else self.auth
        async with self.session.post(f"{self.url}/v1/chat/completions", json=body, headers=headers) as response:
            await response.read()
            return time.perf_counter() - started, response.status == 200

    async def responses(self, stream: bool, previous: str | None) -> tuple[float, bool, str]:
        """A stored `/v1/responses` turn (the instant model, as a persisted reply), after `previous` if given:
        its time, whether it completed, and its id."""
        started = time.perf_counter()
        body: dict[str, Any] = {"model": INSTANT, "input": "hello", "stream": stream}
        if previous:
            body["previous_response_id"] = previous
        async with self.session.post(f"{self.url}/v1/responses", json=body, headers=self.auth) as response:
            if not stream:
                answer = await response.json()
                ok = response.status == 200 and answer.get("status") == "completed"
                return time.perf_counter() - started, ok, answer.get("id", "")
            rid, completed = "", False
            async for line in response.content:
                if not rid and line.startswith(b"data: "):
                    rid = json.loads(line[6:])["response"]["id"]  # response.created's
                elif line.startswith(b"event: response.completed"):
                    completed = True
            return time.perf_counter() - started, response.status == 200 and completed, rid

    async def direct(self, stream: bool = False, model: str = MODEL) -> tuple[float, bool]:
        started = time.perf_counter()
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
        async with self.session.post(f"{self.stack.backend_url}/v1/chat/completions", json=body) as response:
            await response.read()
            return time.perf_counter() - started, response.status == 200

    async def stream_direct(self) -> tuple[float, float, bool]:
        """Time to the first content chunk and to the end, straight from the backend."""
        started = time.perf_counter()
        first = None
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": True}
        async with self.session.post(f"{self.stack.backend_url}/v1/chat/completions", json=body) as response:
            async for line in response.content:
                if first is None and b'"content"' in line:
                    first = time.perf_counter() - started
            return first or float("nan"), time.perf_counter() - started, response.status == 200

    async def stream_service(
        self, conversation_id: str, parent_id: str, model: str = MODEL
    ) -> tuple[float, float, bool]:
        """Time to the first `delta` event and to `completed`, through the service."""
        started = time.perf_counter()
        first = None
        completed = False
        async with self.session.post(
            f"{self.url}/conversations/{conversation_id}/ask",
            json={"prompt": "Tell me a story", "parent_id": parent_id, "stream": True, "model": model},
            headers=self.auth,
        ) as response:
            async for line in response.content:
                if first is None and line.startswith(b"event: delta"):
                    first = time.perf_counter() - started
                elif line.startswith(b"event: completed"):
                    completed = True
            ok = response.status == 200 and completed
            return first or float("nan"), time.perf_counter() - started, ok

    async def stream_and_hang_up(
        self, url: str, conversation_id: str, parent_id: str, deltas: int, model: str = MODEL
    ) -> tuple[str, int]:
        """Start a streamed ask, read its first `deltas` deltas and close the connection: the reply's id and the
        id of the last event read."""
        async with self.session.post(
            f"{url}/conversations/{conversation_id}/ask",
            json={"prompt": "Tell me a story", "parent_id": parent_id, "stream": True, "model": model},
            headers=self.auth,
        ) as response:
            assert response.status == 200, await response.text()
            reply_id, last, seen = "", 0, 0
            async for line in response.content:
                if line.startswith(b"id: "):
                    last = int(line[4:])
                elif line.startswith(b"event: delta"):
                    seen += 1
                elif line.startswith(b"data: ") and not reply_id:
                    reply_id = json.loads(line[6:])["response_id"]  # the `created` event's
                if seen >= deltas and line == b"\n":
                    break
            response.close()
            return reply_id, last

    async def resume(self, url: str, conversation_id: str, reply_id: str, after: int) -> tuple[float, int, bool]:
        """GET the reply's stream after `after` on a new connection, to its end: the time from connecting to the
        first event, the deltas read, and whether the ids followed `after` without a gap up to `completed`."""
        started = time.perf_counter()
        first = float("nan")
        ids: list[int] = []
        deltas, completed = 0, False
        async with self.fresh.get(
            f"{url}/conversations/{conversation_id}/messages/{reply_id}/stream",
            headers={**self.auth, "Last-Event-ID": str(after)},
        ) as response:
            async for line in response.content:
                if line.startswith(b"id: "):
                    if not ids:
                        first = time.perf_counter() - started
                    ids.append(int(line[4:]))
                elif line.startswith(b"event: delta"):
                    deltas += 1
                elif line.startswith(b"event: completed"):
                    completed = True
            in_order = ids == list(range(after + 1, after + 1 + len(ids)))
            return first, deltas, response.status == 200 and completed and in_order


async def run_fixed(concurrency: int, total: int, make_call) -> tuple[list[float], int, float]:
    """`total` calls with `concurrency` in flight; returns latencies, errors, wall time."""
    latencies: list[float] = []
    errors = 0
    remaining = total

    async def worker(index: int) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            try:
                latency, ok = await make_call(index)
            except (TimeoutError, aiohttp.ClientError):
                errors += 1
                continue
            latencies.append(latency)
            errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def scenario_overhead(client: Client, n: int) -> dict[str, Any]:
    conversation_id, parent_id = await client.new_conversation()
    for _ in range(20):  # warm up both paths
        await client.ask(conversation_id, parent_id)
        await client.direct()
    service, direct = [], []
    cpu = client.service.cpu_seconds()
    for _ in range(n):  # interleaved, so that both see the same machine
        service.append((await client.ask(conversation_id, parent_id))[0])
        direct.append((await client.direct())[0])
    ms = 1000
    return {
        "requests": n,
        "service_cpu_ms_per_request": (client.service.cpu_seconds() - cpu) / n * ms,
        "service_p50_ms": pct(service, 50) * ms,
        "service_p99_ms": pct(service, 99) * ms,
        "direct_p50_ms": pct(direct, 50) * ms,
        "direct_p99_ms": pct(direct, 99) * ms,
        "overhead_p50_ms": (pct(service, 50) - pct(direct, 50)) * ms,
        "overhead_p99_ms": (pct(service, 99) - pct(direct, 99)) * ms,
    }


async def scenario_limits(client: Client, rounds: int) -> dict[str, Any]:
    """What a key's limits cost: the same ask with a key with every limit (`limited`: the Redis script before
    it, its max_parallel slot released after it), with rpm and tpm only (`counted`: the script alone) and with
    none, interleaved in batches of 10 so that all see the same machine, each batch's service CPU time counted
    to its key."""
    conversation_id, parent_id = await client.new_conversation()
    stack = client.stack
    keys = {"unlimited": stack.key, "limited": stack.limited_key, "counted": stack.counted_key}
    for _ in range(20):  # warm up every path
        for key in keys.values():
            await client.ask(conversation_id, parent_id, key)
    cpu = dict.fromkeys(keys, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in keys}
    # Per round: (a limited key's batch − the unlimited key's) CPU, per ask.
    differences: dict[str, list[float]] = {"limited": [], "counted": []}
    failed = 0
    order = list(keys.items())
    for round_ in range(max(2, rounds)):
        batch = {}
        # Each round in another order, so that no key always follows the same one.
        for name, key in order[round_ % 3 :] + order[: round_ % 3]:
            before = client.service.cpu_seconds()
            for _ in range(10):
                latency, ok = await client.ask(conversation_id, parent_id, key)
                latencies[name].append(latency)
                failed += not ok
            batch[name] = client.service.cpu_seconds() - before
            cpu[name] += batch[name]
        for name, values in differences.items():
            values.append((batch[name] - batch["unlimited"]) / 10 * 1000)
    out: dict[str, Any] = {"requests_per_key": len(latencies["limited"]), "failed": failed}
    for name in keys:
        out[f"{name}_cpu_ms_per_ask"] = cpu[name] / len(latencies[name]) * 1000
        out[f"{name}_p50_ms"] = pct(latencies[name], 50) * 1000
    for name, values in differences.items():
        prefix = "limits" if name == "limited" else "counted_limits"
        out[f"{prefix}_cpu_ms_per_ask"] = out[f"{name}_cpu_ms_per_ask"] - out["unlimited_cpu_ms_per_ask"]
        # How far that difference can be trusted on this machine: the standard error of the rounds' differences.
        out[f"{prefix}_cpu_ms_per_ask_stderr"] = statistics.stdev(values) / len(values) ** 0.5
    out["limits_p50_ms"] = out["limited_p50_ms"] - out["unlimited_p50_ms"]
    return out


async def scenario_v1(client: Client, n: int) -> dict[str, Any]:
    """The stateless OpenAI-compatible path side by side with the backend, then a stateful request."""
    out: dict[str, Any] = {}
    for stream in (False, True):
        for _ in range(20 if not stream else 2):
            await client.v1(stream)
            await client.direct(stream)
        service, direct = [], []
        cpu = client.service.cpu_seconds()
        # A stream lasts a second (50 chunks, 20 ms apart): fewer of them.
        for _ in range(n if not stream else max(10, n // 10)):
            service.append((await client.v1(stream))[0])
            direct.append((await client.direct(stream))[0])
        name = "stream" if stream else "non_stream"
        out[f"{name}_service_cpu_ms_per_request"] = (client.service.cpu_seconds() - cpu) / len(service) * 1000
        # A stream's total time is dominated by the backend's 50 × 20 ms: overhead is the difference.
        out[f"{name}_service_p50_ms"] = pct(service, 50) * 1000
        out[f"{name}_direct_p50_ms"] = pct(direct, 50) * 1000
        out[f"{name}_overhead_p50_ms"] = (pct(service, 50) - pct(direct, 50)) * 1000
        out[f"{name}_overhead_p99_ms"] = (pct(service, 99) - pct(direct, 99)) * 1000
    conversation_id, _ = await client.new_conversation()
    # One conversation growing by a turn a request (to 200 messages): the context grows with it.
    stateful = [(await client.v1(False, conversation_id))[0] for _ in range(min(n, 100))]
    out["stateful_p50_ms"] = pct(stateful, 50) * 1000
    # A new conversation each time: the same depth as the persisted ask above, to compare the two.
    stateful_new = [(await client.v1(False, "new"))[0] for _ in range(min(n, 100))]
    out["stateful_new_p50_ms"] = pct(stateful_new, 50) * 1000
    latencies, errors, wall = await run_fixed(16, 400 if n <= 100 else 2000, lambda i: client.v1(False))
    out["c16_req_per_s"] = len(latencies) / wall
    out["c16_errors"] = errors
    return out


# Chained turns a thread takes before a new one starts: both paths keep the same depth, turn for turn.
CHAIN = 20


async def scenario_responses(client: Client, n: int) -> dict[str, Any]:
    """A stored, chained `/v1/responses` turn (`previous_response_id`) next to the same turn through
    `/v1/chat/completions` with `X-Conversation-Id`, streamed and not, and the backend asked directly. Blocks of
    ten of each, in turn, so that all see the same machine; the service's CPU is taken per block. Issue 13's
    bar: the Responses overhead over the backend within 20 % of the chat completions one."""
    out: dict[str, Any] = {}
    for stream in (False, True):
        out.update(await _responses_vs_chat(client, n, stream))
    return out


async def _responses_vs_chat(client: Client, n: int, stream: bool) -> dict[str, Any]:
    thread = {"previous": "", "conversation": ""}

    async def responses_turn() -> float:
        latency, ok, thread["previous"] = await client.responses(stream, thread["previous"])
        assert ok, "a /v1/responses turn failed"
        return latency

    async def chat_turn() -> float:
        latency, ok = await client.v1(stream, thread["conversation"])
        assert ok, "a stateful /v1/chat/completions turn failed"
        return latency

    latencies: dict[str, list[float]] = {"responses": [], "chat": [], "direct": []}
    cpu = {"responses": 0.0, "chat": 0.0}
    for block in range(1 + max(1, n // 10)):  # the first block warms up
        if block * 10 % CHAIN == 0:  # a new thread on each path: both keep the same depth
            thread["previous"], (thread["conversation"], _) = "", await client.new_conversation()
        for path, turn in (("responses", responses_turn), ("chat", chat_turn)):
            before = client.service.cpu_seconds()
            times = [await turn() for _ in range(10)]
            if block:
                latencies[path].extend(times)
                cpu[path] += client.service.cpu_seconds() - before
        times = [(await client.direct(stream, INSTANT))[0] for _ in range(10)]
        latencies["direct"].extend(times if block else [])
    name = "stream" if stream else "non_stream"
    direct = pct(latencies["direct"], 50)
    out: dict[str, Any] = {f"{name}_direct_p50_ms": direct * 1000}
    for path in ("responses", "chat"):
        out[f"{name}_{path}_p50_ms"] = pct(latencies[path], 50) * 1000
        out[f"{name}_{path}_overhead_p50_ms"] = (pct(latencies[path], 50) - direct) * 1000
        out[f"{name}_{path}_cpu_ms_per_request"] = cpu[path] / len(latencies[path]) * 1000
    out[f"{name}_overhead_ratio"] = out[f"{name}_responses_overhead_p50_ms"] / out[f"{name}_chat_overhead_p50_ms"]
    out[f"{name}_cpu_ratio"] = out[f"{name}_responses_cpu_ms_per_request"] / out[f"{name}_chat_cpu_ms_per_request"]
    return out


async def scenario_throughput(client: Client, concurrency: int, total: int) -> dict[str, Any]:
    threads = [await client.new_conversation() for _ in range(concurrency)]
    await run_fixed(concurrency, concurrency * 4, lambda i: client.ask(*threads[i]))  # warm-up
    cpu = client.service.cpu_seconds()
    latencies, errors, wall = await run_fixed(concurrency, total, lambda i: client.ask(*threads[i]))
    return {
        "concurrency": concurrency,
        "requests": total,
        "errors": errors,
        "service_cpu_ms_per_request": (client.service.cpu_seconds() - cpu) / total * 1000,
        "req_per_s": len(latencies) / wall,
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
    }


async def scenario_ttfb(client: Client, concurrency: int, total: int) -> dict[str, Any]:
    """Time to a stream's first token: the service's first `delta` event against the backend's first content
    chunk. Each service stream follows a one-second direct one, so the service has been idle for about a
    second when it is asked, as at a user's next prompt."""
    threads = [await client.new_conversation() for _ in range(concurrency)]
    service_first: list[float] = []
    direct_first: list[float] = []
    errors = 0

    async def one(i: int) -> tuple[float, bool]:
        nonlocal errors
        first, _, ok = await client.stream_service(*threads[i])
        service_first.append(first)
        d_first, _, d_ok = await client.stream_direct()
        direct_first.append(d_first)
        errors += (not ok) + (not d_ok)
        return first, ok and d_ok

    await run_fixed(concurrency, concurrency, one)  # warm-up
    service_first.clear()
    direct_first.clear()
    errors = 0
    await run_fixed(concurrency, total, one)
    return {
        "concurrency": concurrency,
        "streams": total,
        "errors": errors,
        "service_ttfb_p50_ms": pct(service_first, 50) * 1000,
        "direct_ttfb_p50_ms": pct(direct_first, 50) * 1000,
        "ttfb_overhead_p50_ms": (pct(service_first, 50) - pct(direct_first, 50)) * 1000,
        "service_ttfb_p99_ms": pct(service_first, 99) * 1000,
    }


async def scenario_held_streams(client: Client, count: int) -> dict[str, Any]:
    threads = [await client.new_conversation() for _ in range(min(count, 50))]
    service = client.service
    peaks = service.worker_rss_mb()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peaks
        while not done.is_set():
            peaks = [max(peak, now) for peak, now in zip(peaks, service.worker_rss_mb(), strict=False)]
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    cpu = service.cpu_seconds()
    started = time.perf_counter()

    async def one(i: int) -> tuple[float, bool]:
        try:
            _, total, ok = await client.stream_service(*threads[i % len(threads)])
            return total, ok
        except (TimeoutError, aiohttp.ClientError):
            return float("nan"), False

    outcomes = await asyncio.gather(*(one(i) for i in range(count)))
    wall = time.perf_counter() - started
    done.set()
    await sampler
    totals = [t for t, ok in outcomes if ok]
    return {
        "streams": count,
        "service_cpu_ms_per_stream": (service.cpu_seconds() - cpu) / count * 1000,
        "errors": sum(1 for _, ok in outcomes if not ok),
        "total_p50_s": pct(totals, 50),
        "total_p99_s": pct(totals, 99),
        "wall_s": wall,
        "peak_rss_mb": max(peaks),  # the worker that grew most
        "peak_rss_mb_per_worker": peaks,
    }


# How a client loses its stream: after this many deltas, and comes back this much later, half-way through the reply.
RESUME_AFTER_DELTAS = 5
RESUME_PAUSE = 0.2


async def scenario_resume(client: Client, urls: list[str], concurrency: int, total: int) -> dict[str, Any]:
    """Streams started through urls[i % n], hung up on after a few deltas, and resumed a moment later with
    Last-Event-ID through the next url (the other worker when there are two, a stream of events from Redis):
    the time from connecting to the first event, and that nothing was lost."""
    threads = [await client.new_conversation() for _ in range(concurrency)]
    first: list[float] = []
    lost = 0
    count = 0

    async def one(i: int) -> tuple[float, bool]:
        nonlocal lost, count
        start_url, resume_url = urls[count % len(urls)], urls[(count + 1) % len(urls)]
        count += 1
        reply_id, last = await client.stream_and_hang_up(start_url, *threads[i], deltas=RESUME_AFTER_DELTAS)
        await asyncio.sleep(RESUME_PAUSE)
        latency, deltas, ok = await client.resume(resume_url, threads[i][0], reply_id, last)
        # Event 1 is `created`, 2 to CHUNKS + 1 the deltas: together the two streams carry all of them.
        if deltas != CHUNKS - (last - 1):
            lost += 1
            ok = False
        first.append(latency)
        return latency, ok

    await run_fixed(concurrency, concurrency, one)  # warm-up
    first.clear()
    lost = 0
    _, errors, wall = await run_fixed(concurrency, total, one)
    return {
        "concurrency": concurrency,
        "streams": total,
        "through": "the other worker" if len(urls) > 1 else "the same worker",
        "errors": errors,
        "lost_events": lost,
        "first_event_p50_ms": pct(first, 50) * 1000,
        "first_event_p95_ms": pct(first, 95) * 1000,
        "first_event_p99_ms": pct(first, 99) * 1000,
        "wall_s": wall,
    }


# One soak round: 20 requests of these kinds, in this proportion.
SOAK_MIX = ("ask",) * 9 + ("v1",) * 3 + ("list", "list", "messages", "messages", "new", "stateful", "stream", "resume")


async def scenario_soak(client: Client, total: int, concurrency: int, max_seconds: float) -> dict[str, Any]:
    """`total` mixed requests (SOAK_MIX: asks, stateless and stateful /v1, lists, streams and resumed streams of
    short replies) at `concurrency`, the workers' memory sampled every 10,000: a leak shows as a steady climb."""
    service = client.service
    checkpoints: list[dict[str, Any]] = []
    issued = done = errors = 0
    started = time.perf_counter()
    cpu = service.cpu_seconds()

    async def call(kind: str, thread: tuple[str, str]) -> tuple[bool, tuple[str, str]]:
        cid, parent = thread
        if kind == "ask":
            return (await client.ask(cid, parent))[1], thread
        if kind == "v1":
            return (await client.v1(False))[1], thread
        if kind == "list":
            return (await client.get("/conversations"))[1], thread
        if kind == "messages":
            return (await client.get(f"/conversations/{cid}/messages"))[1], thread
        if kind == "new":  # a fresh thread now and then, so that no thread grows without end
            return True, await client.new_conversation()
        if kind == "stateful":
            return (await client.v1(False, "new"))[1], thread
        if kind == "stream":
            return (await client.stream_service(cid, parent, model=INSTANT))[2], thread
        # "resume": a streamed short reply, hung up on after its first delta, then its stream again (two requests)
        reply_id, last = await client.stream_and_hang_up(client.url, cid, parent, deltas=1, model=INSTANT)
        return (await client.resume(client.url, cid, reply_id, last))[2], thread

    async def worker() -> None:
        nonlocal issued, done, errors
        thread = await client.new_conversation()
        while issued < total and time.perf_counter() - started < max_seconds:
            kind = SOAK_MIX[issued % len(SOAK_MIX)]
            issued += 1
            try:
                ok, thread = await call(kind, thread)
            except (TimeoutError, aiohttp.ClientError, AssertionError):
                ok = False
            errors += not ok
            done += 1
            if done % 10_000 == 0 or done == total:
                rss = service.worker_rss_mb()
                checkpoints.append({"requests": done, "s": time.perf_counter() - started, "rss_mb": rss})
                print(f"  {done} requests, {time.perf_counter() - started:.0f} s, RSS {rss} MB", flush=True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    if not checkpoints or checkpoints[-1]["requests"] != done:  # stopped by max_seconds
        checkpoints.append({"requests": done, "s": wall, "rss_mb": service.worker_rss_mb()})
    first = next((c for c in checkpoints if c["requests"] == 10_000), checkpoints[0] if checkpoints else None)
    last = checkpoints[-1] if checkpoints else None
    growth = sum(last["rss_mb"]) / sum(first["rss_mb"]) - 1 if first and last else float("nan")
    return {
        "requests": done,
        "errors": errors,
        "concurrency": concurrency,
        "wall_s": wall,
        "req_per_s": done / wall,
        "service_cpu_ms_per_request": (service.cpu_seconds() - cpu) / max(done, 1) * 1000,
        "checkpoints": checkpoints,
        "rss_growth_from_first_checkpoint": growth,
    }


def scenario_queries(env: dict[str, str]) -> dict[str, Any]:
    """SQL queries of one ask at thread depth 2 and 200, counted in-process against the benchmark database."""
    script = r"""
import json, os, django
os.environ["DJANGO_SETTINGS_MODULE"] = "chatapi.settings"
django.setup()
import datetime as dt
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from accounts.models import User
from accounts.services import api_key_create
from conversations.models import Conversation, Message

user = User.objects.get(username="bench")
key = api_key_create(user=user, name="queries")[1]
client = Client(HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_HOST="127.0.0.1")
client.get("/conversations")
# The key's first reply in a process reads its usage windows, later ones need no read: one ask before counting.
warm = Conversation.objects.create(owner=user, title="warm-up")
warmed = client.post(f"/conversations/{warm.pk}/ask", {"prompt": "hi"}, content_type="application/json")
assert warmed.status_code == 201, warmed.content
counts = {}
for depth in (2, 200):
    conversation = Conversation.objects.create(owner=user, title=f"depth {depth}")
    start, parent, messages = timezone.now() - dt.timedelta(hours=1), None, []
    for i in range(depth):
        message = Message(conversation=conversation, parent=parent, role="user" if i % 2 == 0 else "assistant",
                          content=f"m{i}", created_at=start + dt.timedelta(seconds=i))
        messages.append(message)
        parent = message
    Message.objects.bulk_create(messages)
    conversation.current_node = parent
    conversation.save()
    with CaptureQueriesContext(connection) as queries:
        response = client.post(
            f"/conversations/{conversation.pk}/ask", {"prompt": "hi"}, content_type="application/json"
        )
    assert response.status_code == 201, response.content
    counts[depth] = len(queries)
print(json.dumps(counts))
"""
    result = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"query count failed:\n{result.stderr}")
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    return {"depth_2": counts["2"], "depth_200": counts["200"], "equal": counts["2"] == counts["200"]}


async def measure(stack: Stack, service: Service, args: argparse.Namespace) -> dict[str, Any]:
    client = Client(stack, service)

    def wanted(name: str) -> bool:
        return not args.only or name in args.only

    results: dict[str, Any] = {"startup_to_healthy_s": service.startup_seconds}
    try:
        await client.new_conversation()
        await asyncio.sleep(0.5)
        results["idle_rss_mb_per_worker"] = service.worker_rss_mb()
        results["idle_rss_mb"] = max(results["idle_rss_mb_per_worker"])
        n = 100 if args.quick else 500
        if wanted("overhead"):
            print("… overhead of a non-streaming ask (concurrency 1)", flush=True)
            results["overhead_c1"] = await scenario_overhead(client, n)
        if wanted("limits"):
            print("… an ask with a key with limits and one without, interleaved", flush=True)
            results["limits"] = await scenario_limits(client, args.limits_rounds or max(2, n // 10))
        if wanted("v1"):
            print("… /v1/chat/completions (stateless, stream and not; one stateful)", flush=True)
            results["v1"] = await scenario_v1(client, n)
        if wanted("responses"):
            print("… /v1/responses chained, next to /v1/chat/completions with X-Conversation-Id", flush=True)
            results["responses"] = await scenario_responses(client, n)
        results["throughput"] = []
        for concurrency in (16, 64) if wanted("throughput") else ():
            print(f"… throughput at concurrency {concurrency}", flush=True)
            total = (400 if args.quick else 2000) if concurrency == 16 else (400 if args.quick else 3000)
            results["throughput"].append(await scenario_throughput(client, concurrency, total))
        results["ttfb"] = []
        for concurrency in (1, 16) if wanted("ttfb") else ():
            print(f"… time to first byte of a stream at concurrency {concurrency}", flush=True)
            total = (20 if args.quick else 50) if concurrency == 1 else (64 if args.quick else 160)
            results["ttfb"].append(await scenario_ttfb(client, concurrency, total))
        results["held_streams"] = []
        for count in args.streams if wanted("streams") else ():
            print(f"… {count} concurrent streams", flush=True)
            results["held_streams"].append(await scenario_held_streams(client, count))
            await asyncio.sleep(1)
        if wanted("resume") and service.workers == 1:  # with several, through two services: resume_across
            print("… streams hung up on and resumed", flush=True)
            results["resume"] = await scenario_resume(client, [service.url], *resume_load(args))
        if wanted("soak") and args.soak:
            print(f"… soak: {args.soak} mixed requests", flush=True)
            results["soak"] = await scenario_soak(client, args.soak, concurrency=32, max_seconds=args.soak_max_seconds)
    finally:
        await client.close()
    if wanted("queries"):
        print("… SQL queries per ask", flush=True)
        results["queries_per_ask"] = scenario_queries(stack.env)
    return results


def resume_load(args: argparse.Namespace) -> tuple[int, int]:
    """Concurrency and number of the resumed streams."""
    concurrency = args.resume_concurrency or (20 if args.quick else 50)
    return concurrency, concurrency * 5 if args.quick else concurrency * 10


async def resume_across(stack: Stack, services: list[Service], args: argparse.Namespace) -> dict[str, Any]:
    """The resume scenario through two single-worker services: uvicorn's --workers share one socket, so that
    which of them a connection reaches cannot be chosen. Each stream is resumed through the service that is
    not generating it."""
    client = Client(stack, services[0])
    try:
        return await scenario_resume(client, [service.url for service in services], *resume_load(args))
    finally:
        await client.close()


def report(results: dict[str, Any]) -> str:
    rows = [
        ("start-up to healthy /healthz", f"{results['startup_to_healthy_s']:.2f} s"),
        ("idle worker RSS", " + ".join(f"{mb:.0f}" for mb in results["idle_rss_mb_per_worker"]) + " MB"),
    ]
    if "overhead_c1" in results:
        o = results["overhead_c1"]
        rows.append(
            (
                "ask overhead, c=1 (service − direct)",
                f"p50 {o['overhead_p50_ms']:.2f} ms, p99 {o['overhead_p99_ms']:.2f} ms "
                f"(service p50 {o['service_p50_ms']:.2f} ms, direct p50 {o['direct_p50_ms']:.2f} ms; "
                f"service CPU {o['service_cpu_ms_per_request']:.2f} ms a request)",
            )
        )
    if "limits" in results:
        lim = results["limits"]
        rows.append(
            (
                "an ask's limits, c=1 (limited − unlimited key)",
                f"service CPU {lim['limits_cpu_ms_per_ask']:+.3f} ± {lim['limits_cpu_ms_per_ask_stderr']:.3f} ms "
                f"an ask with every limit, {lim['counted_limits_cpu_ms_per_ask']:+.3f} ± "
                f"{lim['counted_limits_cpu_ms_per_ask_stderr']:.3f} ms with rpm and tpm only "
                f"(unlimited {lim['unlimited_cpu_ms_per_ask']:.2f} ms); p50 {lim['limits_p50_ms']:+.2f} ms",
            )
        )
    if "v1" in results:
        v = results["v1"]
        rows.append(
            (
                "/v1 stateless overhead, c=1",
                f"p50 {v['non_stream_overhead_p50_ms']:.2f} ms, p99 {v['non_stream_overhead_p99_ms']:.2f} ms "
                f"(service p50 {v['non_stream_service_p50_ms']:.2f} ms, direct {v['non_stream_direct_p50_ms']:.2f} ms; "
                f"service CPU {v['non_stream_service_cpu_ms_per_request']:.2f} ms a request)",
            )
        )
        rows.append(
            (
                "/v1 stateless stream overhead, c=1",
                f"p50 {v['stream_overhead_p50_ms']:.2f} ms (whole stream: service {v['stream_service_p50_ms']:.0f} ms, "
                f"direct {v['stream_direct_p50_ms']:.0f} ms)",
            )
        )
        rows.append(("/v1 stateless throughput, c=16", f"{v['c16_req_per_s']:.0f} req/s, {v['c16_errors']} errors"))
        rows.append(
            (
                "/v1 stateful request, c=1",
                f"p50 {v['stateful_new_p50_ms']:.2f} ms in a new conversation, "
                f"{v['stateful_p50_ms']:.2f} ms in one growing to 200 messages",
            )
        )
    if "responses" in results:
        r = results["responses"]
        for name, label in (("non_stream", ""), ("stream", " stream")):
            rows.append(
                (
                    f"/v1/responses{label} vs chat, c=1",
                    f"overhead p50 {r[f'{name}_responses_overhead_p50_ms']:.2f} ms vs "
                    f"{r[f'{name}_chat_overhead_p50_ms']:.2f} ms (x{r[f'{name}_overhead_ratio']:.2f}); service CPU "
                    f"{r[f'{name}_responses_cpu_ms_per_request']:.2f} vs {r[f'{name}_chat_cpu_ms_per_request']:.2f} ms "
                    f"a request (x{r[f'{name}_cpu_ratio']:.2f}); direct p50 {r[f'{name}_direct_p50_ms']:.2f} ms",
                )
            )
    for t in results["throughput"]:
        rows.append(
            (
                f"ask throughput, c={t['concurrency']}",
                f"{t['req_per_s']:.0f} req/s, {t['errors']} errors, p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms "
                f"(service CPU {t['service_cpu_ms_per_request']:.2f} ms a request)",
            )
        )
    for t in results["ttfb"]:
        rows.append(
            (
                f"stream TTFB, c={t['concurrency']}",
                f"service p50 {t['service_ttfb_p50_ms']:.2f} ms, direct p50 {t['direct_ttfb_p50_ms']:.2f} ms "
                f"(+{t['ttfb_overhead_p50_ms']:.2f} ms), {t['errors']} errors",
            )
        )
    for h in results["held_streams"]:
        rows.append(
            (
                f"{h['streams']} concurrent streams (50 × 20 ms)",
                f"total p50 {h['total_p50_s']:.2f} s, p99 {h['total_p99_s']:.2f} s, {h['errors']} errors, "
                f"peak RSS {' + '.join(f'{mb:.0f}' for mb in h['peak_rss_mb_per_worker'])} MB, "
                f"service CPU {h['service_cpu_ms_per_stream']:.1f} ms a stream",
            )
        )
    if results.get("resume"):
        r = results["resume"]
        rows.append(
            (
                f"resumed stream, c={r['concurrency']}",
                f"first event p50 {r['first_event_p50_ms']:.2f} ms, p95 {r['first_event_p95_ms']:.2f} ms after "
                f"connecting, through {r['through']}; {r['errors']} errors, {r['lost_events']} with events lost",
            )
        )
    if "soak" in results:
        k = results["soak"]
        first, last = k["checkpoints"][0], k["checkpoints"][-1]
        rows.append(
            (
                f"soak, {k['requests']} mixed requests, c={k['concurrency']}",
                f"RSS {' + '.join(f'{mb:.0f}' for mb in first['rss_mb'])} MB after {first['requests']}, "
                f"{' + '.join(f'{mb:.0f}' for mb in last['rss_mb'])} MB after {last['requests']} "
                f"({k['rss_growth_from_first_checkpoint']:+.1%}); {k['req_per_s']:.0f} req/s, {k['errors']} errors, "
                f"service CPU {k['service_cpu_ms_per_request']:.2f} ms a request",
            )
        )
    if "queries_per_ask" in results:
        q = results["queries_per_ask"]
        rows.append(("SQL queries per ask, depth 2 / 200", f"{q['depth_2']} / {q['depth_200']}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", action="store_true", help="run the service on PostgreSQL instead of SQLite")
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432/chatapi_bench")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn --workers (several need --redis)")
    parser.add_argument("--redis", action="store_true", help="set REDIS_URL: the events and cancels go through Redis")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/13", help="a Redis database of its own: it is flushed"
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument(
        "--limits-rounds",
        type=int,
        metavar="N",
        help="rounds of 10 asks per key in the limits scenario (default 50, 10 --quick): CPU time is read in 10 ms "
        "ticks, so its difference per ask narrows only with many rounds (the result shows its standard error)",
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--resume-concurrency", type=int, help="streams resumed at once (default 50, 20 --quick)")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="also N mixed requests, memory sampled")
    parser.add_argument("--soak-max-seconds", type=float, default=1200, help="the soak stops there, whatever N")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["overhead", "limits", "v1", "responses", "throughput", "ttfb", "streams", "resume", "soak", "queries"],
        help="run only these scenarios",
    )
    parser.add_argument(
        "--set",
        metavar="NAME=VALUE",
        nargs="+",
        default=[],
        help="a setting for the service, e.g. --set CHATAPI_DB_POOL_MAX=40 (the environment's are not passed on)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    if args.workers > 1 and not args.redis:
        print("note: without --redis a stream cannot be resumed through another worker: no resume scenario")
    raise_fd_limit()
    load_before = os.getloadavg()

    tmp = Path(tempfile.mkdtemp(prefix="chatapi-bench-"))
    settings = dict(item.split("=", 1) for item in args.set)
    if args.redis:
        import redis

        settings.setdefault("REDIS_URL", args.redis_url)
        redis.Redis.from_url(settings["REDIS_URL"]).flushdb()
    try:
        if args.pg:
            import psycopg

            base, _, name = args.pg_url.rpartition("/")
            with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                connection.execute(f'CREATE DATABASE "{name}"')
            database_url = args.pg_url
        else:
            database_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        with stack(database_url, settings) as running:
            with serve(running, args.workers) as service:
                results = asyncio.run(measure(running, service, args))
            if (not args.only or "resume" in args.only) and args.workers > 1 and args.redis:
                print("… streams hung up on and resumed through the other of two single-worker services", flush=True)
                with serve(running, 1) as first, serve(running, 1) as second:
                    results["resume"] = asyncio.run(resume_across(running, [first, second], args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.redis:
            redis.Redis.from_url(settings["REDIS_URL"]).flushdb()

    results["meta"] = {
        "database": "postgresql" if args.pg else "sqlite",
        "workers": args.workers,
        "redis": args.redis,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        # The machine's load average (1, 5, 15 min) before and after: other work on it skews the latencies.
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "quick": args.quick,
        "settings": settings,
    }
    print()
    print(report(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {out}")


if __name__ == "__main__":
    main()
