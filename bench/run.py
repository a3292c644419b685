"""chatapi benchmark: the service under uvicorn (one worker) in front of a fast fake backend, on loopback.

    .venv/bin/python bench/run.py            # SQLite
    .venv/bin/python bench/run.py --pg       # PostgreSQL (postgres://postgres@127.0.0.1:5432/chatapi_bench)
    .venv/bin/python bench/run.py --quick    # fewer requests, for a smoke run

Prints a table and writes the numbers as JSON (default bench/results/latest.json) so that a later run
can be compared. Not part of the test suite: ratios in one run mean something, absolute numbers on a
shared machine less so.
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
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MODEL = "bench-model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far: what a request costs, however noisy the machine."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Stack:
    """The fake backend and the service, both running."""

    env: dict[str, str]
    service_url: str
    backend_url: str
    key: str
    service: subprocess.Popen
    backend: subprocess.Popen
    startup_seconds: float
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


@contextmanager
def stack(database_url: str, chunks: int, chunk_delay: float, settings: dict[str, str] | None = None):
    backend_port, service_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPI_", "OPENAI_", "DJANGO_"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{backend_port}/v1",
            "OPENAI_API_KEY": "bench-not-a-real-key",
            "CHATAPI_MODELS": MODEL,
            "CHATAPI_BACKEND_MAX_RETRIES": "0",
            "CHATAPI_LOG_LEVEL": "WARNING",
            **(settings or {}),
        }
    )
    manage(env, "migrate", "--noinput")
    manage(env, "create_user", "bench")
    key = manage(env, "create_api_key", "bench", "--name", "bench").strip()
    backend = subprocess.Popen(
        [PYTHON, str(ROOT / "bench" / "fake_backend.py"), "--port", str(backend_port), "--chunks", str(chunks),
         "--chunk-delay", str(chunk_delay)],
        preexec_fn=raise_fd_limit,
    )  # fmt: skip
    started = time.monotonic()
    service = subprocess.Popen(
        [PYTHON, "-m", "uvicorn", "chatapi.asgi:application", "--host", "127.0.0.1", "--port", str(service_port),
         "--workers", "1", "--no-access-log", "--log-level", "warning", "--backlog", "4096"],
        cwd=ROOT, env=env, preexec_fn=raise_fd_limit,
    )  # fmt: skip
    service_url = f"http://127.0.0.1:{service_port}"
    try:
        wait_healthy(service_url, service)
        startup = time.monotonic() - started
        yield Stack(env, service_url, f"http://127.0.0.1:{backend_port}", key, service, backend, startup)
    finally:
        for process in (service, backend):
            process.send_signal(signal.SIGINT)
        for process in (service, backend):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


class Client:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=120),
        )
        self.auth = {"Authorization": f"Bearer {stack.key}"}
        self.pid = stack.service.pid

    async def close(self) -> None:
        await self.session.close()

    async def new_conversation(self) -> tuple[str, str]:
        async with self.session.post(
            f"{self.stack.service_url}/conversations/new", json={"prompt": "hello"}, headers=self.auth
        ) as response:
            body = await response.json()
            assert response.status == 201, body
            return body["response"]["conversation_id"], body["response"]["id"]

    async def ask(self, conversation_id: str, parent_id: str) -> tuple[float, bool]:
        """A persisted non-streaming ask, always from the same parent so the thread depth stays the same."""
        started = time.perf_counter()
        async with self.session.post(
            f"{self.stack.service_url}/conversations/{conversation_id}/ask",
            json={"prompt": "How are you?", "parent_id": parent_id},
            headers=self.auth,
        ) as response:
            await response.read()
            return time.perf_counter() - started, response.status == 201

    async def v1(self, stream: bool = False, conversation_id: str | None = None) -> tuple[float, bool]:
        """`/v1/chat/completions` through the service: stateless, or stateful with X-Conversation-Id."""
        started = time.perf_counter()
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
        headers = {**self.auth, "X-Conversation-Id": conversation_id} if conversation_id else self.auth
        async with self.session.post(
            f"{self.stack.service_url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            await response.read()
            return time.perf_counter() - started, response.status == 200

    async def direct(self, stream: bool = False) -> tuple[float, bool]:
        started = time.perf_counter()
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
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

    async def stream_service(self, conversation_id: str, parent_id: str) -> tuple[float, float, bool]:
        """Time to the first `delta` event and to `completed`, through the service."""
        started = time.perf_counter()
        first = None
        completed = False
        async with self.session.post(
            f"{self.stack.service_url}/conversations/{conversation_id}/ask",
            json={"prompt": "Tell me a story", "parent_id": parent_id, "stream": True},
            headers=self.auth,
        ) as response:
            async for line in response.content:
                if first is None and line.startswith(b"event: delta"):
                    first = time.perf_counter() - started
                elif line.startswith(b"event: completed"):
                    completed = True
            ok = response.status == 200 and completed
            return first or float("nan"), time.perf_counter() - started, ok


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
    cpu = cpu_seconds(client.pid)
    for _ in range(n):  # interleaved, so that both see the same machine
        service.append((await client.ask(conversation_id, parent_id))[0])
        direct.append((await client.direct())[0])
    ms = 1000
    return {
        "requests": n,
        "service_cpu_ms_per_request": (cpu_seconds(client.pid) - cpu) / n * ms,
        "service_p50_ms": pct(service, 50) * ms,
        "service_p99_ms": pct(service, 99) * ms,
        "direct_p50_ms": pct(direct, 50) * ms,
        "direct_p99_ms": pct(direct, 99) * ms,
        "overhead_p50_ms": (pct(service, 50) - pct(direct, 50)) * ms,
        "overhead_p99_ms": (pct(service, 99) - pct(direct, 99)) * ms,
    }


async def scenario_v1(client: Client, n: int) -> dict[str, Any]:
    """The stateless OpenAI-compatible path side by side with the backend, then a stateful request."""
    out: dict[str, Any] = {}
    for stream in (False, True):
        for _ in range(20 if not stream else 2):
            await client.v1(stream)
            await client.direct(stream)
        service, direct = [], []
        cpu = cpu_seconds(client.pid)
        # A stream lasts a second (50 chunks, 20 ms apart): fewer of them.
        for _ in range(n if not stream else max(10, n // 10)):
            service.append((await client.v1(stream))[0])
            direct.append((await client.direct(stream))[0])
        name = "stream" if stream else "non_stream"
        out[f"{name}_service_cpu_ms_per_request"] = (cpu_seconds(client.pid) - cpu) / len(service) * 1000
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


async def scenario_throughput(client: Client, concurrency: int, total: int) -> dict[str, Any]:
    threads = [await client.new_conversation() for _ in range(concurrency)]
    await run_fixed(concurrency, concurrency * 4, lambda i: client.ask(*threads[i]))  # warm-up
    cpu = cpu_seconds(client.pid)
    latencies, errors, wall = await run_fixed(concurrency, total, lambda i: client.ask(*threads[i]))
    return {
        "concurrency": concurrency,
        "requests": total,
        "errors": errors,
        "service_cpu_ms_per_request": (cpu_seconds(client.pid) - cpu) / total * 1000,
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


async def scenario_held_streams(client: Client, count: int, pid: int) -> dict[str, Any]:
    threads = [await client.new_conversation() for _ in range(min(count, 50))]
    peak = rss_mb(pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    cpu = cpu_seconds(pid)
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
        "service_cpu_ms_per_stream": (cpu_seconds(pid) - cpu) / count * 1000,
        "errors": sum(1 for _, ok in outcomes if not ok),
        "total_p50_s": pct(totals, 50),
        "total_p99_s": pct(totals, 99),
        "wall_s": wall,
        "peak_rss_mb": peak,
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


async def measure(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    client = Client(stack)
    pid = stack.service.pid

    def wanted(name: str) -> bool:
        return not args.only or name in args.only

    results: dict[str, Any] = {"startup_to_healthy_s": stack.startup_seconds}
    try:
        await client.new_conversation()
        await asyncio.sleep(0.5)
        results["idle_rss_mb"] = rss_mb(pid)
        n = 100 if args.quick else 500
        if wanted("overhead"):
            print("… overhead of a non-streaming ask (concurrency 1)", flush=True)
            results["overhead_c1"] = await scenario_overhead(client, n)
        if wanted("v1"):
            print("… /v1/chat/completions (stateless, stream and not; one stateful)", flush=True)
            results["v1"] = await scenario_v1(client, n)
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
            results["held_streams"].append(await scenario_held_streams(client, count, pid))
            await asyncio.sleep(1)
    finally:
        await client.close()
    if wanted("queries"):
        print("… SQL queries per ask", flush=True)
        results["queries_per_ask"] = scenario_queries(stack.env)
    return results


def report(results: dict[str, Any]) -> str:
    rows = [
        ("start-up to healthy /healthz", f"{results['startup_to_healthy_s']:.2f} s"),
        ("idle worker RSS", f"{results['idle_rss_mb']:.0f} MB"),
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
                f"peak RSS {h['peak_rss_mb']:.0f} MB, service CPU {h['service_cpu_ms_per_stream']:.1f} ms a stream",
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
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["overhead", "v1", "throughput", "ttfb", "streams", "queries"],
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
    raise_fd_limit()

    tmp = Path(tempfile.mkdtemp(prefix="chatapi-bench-"))
    try:
        if args.pg:
            import psycopg

            base, _, name = args.pg_url.rpartition("/")
            with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
                connection.execute(f'CREATE DATABASE "{name}"')
            database_url = args.pg_url
        else:
            database_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        settings = dict(item.split("=", 1) for item in args.set)
        with stack(database_url, chunks=50, chunk_delay=0.02, settings=settings) as running:
            results = asyncio.run(measure(running, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results["meta"] = {
        "database": "postgresql" if args.pg else "sqlite",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
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
