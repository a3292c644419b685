"""What an ask costs before chatapi's own code: the floor under issue 12's CPU bar, measured in one process.

    .venv/bin/python bench/floor.py                   # PostgreSQL (postgres://postgres@127.0.0.1:5432/chatapi_floor)
    .venv/bin/python bench/floor.py --sqlite

A persisted ask (POST /conversations/{id}/ask, not streamed) is made of three kinds of work, each measured
here on its own as CPU time of this process per ask (time.process_time), with nothing else in the process:

- `orm`: the statements an ask issues, written as plainly as the ORM says them: the key and its user, then in
  one transaction the conversation locked, its branch (the recursive CTE, by the project's own selector), the
  prompt and the reply inserted and the conversation moved on, then in another the reply stored and the key's
  usage counted. Three units, each giving its connection back as chatapi's db_work does (to psycopg's pool on
  PostgreSQL).
- `services`: the same three units through chatapi's own functions (api_key_authenticate,
  conversation_ask_prepare with reply_begin, reply_finish): what chatapi's code adds to the ORM's.
- `sdk`: the backend call through the `openai` SDK: a streamed chat completion from the benchmark's fake
  backend (another process), read to its end.
- `django`: a request with an API key through Django's ASGI handler and the project's middleware to the
  smallest view (GET /healthz, which does not look the key up), called in-process: no server, no socket.

The sum of `orm`, `sdk` and `django` is a floor: an ask cannot cost less while it goes through Django's handler,
the ORM and the SDK. The service's figure (bench/run.py) is for the whole process under uvicorn, with its
threads, event loop and sockets besides.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run as bench  # noqa: E402  (bench/run.py: the stack, the fake backend)


def per_call_ms(call: Callable[[], Any], n: int, rounds: int) -> tuple[float, float]:
    """Median and spread (max − min) over `rounds` of the CPU milliseconds of this process per call."""
    for _ in range(max(n // 10, 5)):
        call()
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(n):
            call()
        results.append((time.process_time() - started) / n * 1000)
    return statistics.median(results), max(results) - min(results)


def measure(n: int, rounds: int) -> dict[str, tuple[float, float]]:
    import django

    django.setup()
    from django.db import close_old_connections, transaction
    from django.db.models import F
    from django.utils import timezone

    from accounts.models import APIKey
    from accounts.services import api_key_authenticate
    from chatapi.asgi import django_application
    from conversations import llm, selectors, services
    from conversations.models import Conversation, Message

    raw_key = os.environ["FLOOR_KEY"]
    lookup_id = APIKey.objects.get(name="bench").lookup_id
    user = APIKey.objects.get(name="bench").user
    conversation = Conversation.objects.create(owner=user, title="floor", model=bench.INSTANT)
    root = Message.objects.create(conversation=conversation, role="user", content="hello", depth=0)

    def unit(work: Callable[[], Any]) -> Any:
        try:
            return work()
        finally:
            close_old_connections()

    def orm_ask() -> None:
        key = unit(lambda: APIKey.objects.select_related("user").get(lookup_id=lookup_id))

        def store() -> Message:
            with transaction.atomic():
                locked = Conversation.objects.select_for_update().get(pk=conversation.pk, owner=key.user)
                # The recursive CTE, the one statement the ORM cannot say: the project's own.
                path, _ = selectors.message_context_get(conversation=locked, leaf_id=root.pk, budget=100_000)
                prompt = Message.objects.create(
                    conversation=locked, parent=path[-1], role="user", content="How are you?", depth=1
                )
                reply = Message.objects.create(
                    conversation=locked, parent=prompt, role="assistant", status="in_progress", depth=2
                )
                Conversation.objects.filter(pk=locked.pk).update(current_node=reply, updated_at=timezone.now())
            return reply

        reply = unit(store)

        def finish() -> None:
            with transaction.atomic():
                Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
                Message.objects.filter(pk=reply.pk, status="in_progress").update(
                    content="A short benchmark reply.", status="completed", token_count=5, total_tokens=15
                )
                keys = APIKey.objects.select_for_update().filter(pk=key.pk)
                keys.values_list("budget_period", "budget_window", "tpm_window").get()
                keys.update(request_count=F("request_count") + 1, total_tokens=F("total_tokens") + 15)

        unit(finish)

    def services_ask() -> None:
        key = unit(lambda: api_key_authenticate(raw_key=raw_key))

        def store() -> tuple[services.ReplyJob, Message]:
            with transaction.atomic():
                locked = selectors.conversation_get_for_user(user=key.user, conversation_id=conversation.pk, lock=True)
                job = services.conversation_ask_prepare(
                    conversation=locked, locked=True, prompt="How are you?", parent_id=root.pk
                )
                return job, services.reply_begin(job=job)

        job, reply = unit(store)
        job.api_key_id = key.pk
        unit(
            lambda: services.reply_finish(
                job=job,
                content="A short benchmark reply.",
                model=bench.INSTANT,
                ending="stop",
                usage=llm.Usage(10, 5, 15),
                last_event_id=8,
                attachments=[],
            )  # fmt: skip
        )

    loop = asyncio.new_event_loop()

    async def sdk_call() -> None:
        stream = await sdk.chat.completions.create(
            model=bench.INSTANT, messages=[{"role": "user", "content": "How are you?"}], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        async for _ in stream:
            pass

    async def make_client() -> Any:
        return llm.async_client()  # the service's own client: one per event loop

    sdk = loop.run_until_complete(make_client())

    async def healthz() -> None:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": "/healthz", "raw_path": b"/healthz", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {raw_key}".encode())],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        sent: list[Mapping[str, Any]] = []
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client never goes away
            raise AssertionError

        async def send(message: Mapping[str, Any]) -> None:
            sent.append(message)

        await django_application(scope, receive, send)
        assert sent[0]["status"] == 200, sent

    results = {
        "orm": per_call_ms(orm_ask, n, rounds),
        "services": per_call_ms(services_ask, n, rounds),
        "sdk": per_call_ms(lambda: loop.run_until_complete(sdk_call()), n, rounds),
        "django": per_call_ms(lambda: loop.run_until_complete(healthz()), n, rounds),
    }
    loop.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432/chatapi_floor")
    parser.add_argument("-n", type=int, default=300, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if "FLOOR_KEY" in os.environ:  # the child: the stack is up and this process has its settings
        results = measure(args.n, args.rounds)
        floor = sum(results[part][0] for part in ("orm", "sdk", "django"))
        what = {
            "orm": "the ask's statements, plain ORM",
            "services": "the same through chatapi's services",
            "sdk": "a streamed completion through the SDK",
            "django": "GET /healthz through Django's handler",
        }
        for part, (median, spread) in results.items():
            print(f"{part:<9} {median:6.2f} ms CPU per ask (spread {spread:.2f})  {what[part]}")
        print(f"{'floor':<9} {floor:6.2f} ms CPU per ask: orm + sdk + django")
        return
    with tempfile.TemporaryDirectory(prefix="chatapi-floor-") as tmp:
        if args.sqlite:
            database_url = f"sqlite:///{tmp}/floor.sqlite3"
        else:
            import psycopg

            base, _, name = args.pg_url.rpartition("/")
            with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                connection.execute(f'CREATE DATABASE "{name}"')
            database_url = args.pg_url
        with bench.stack(database_url, {}) as stack:
            env = {**stack.env, "FLOOR_KEY": stack.key, "DJANGO_SETTINGS_MODULE": "chatapi.settings"}
            env["PYTHONPATH"] = str(bench.ROOT)
            child = [bench.PYTHON, __file__, "-n", str(args.n), "--rounds", str(args.rounds)]
            code = subprocess.run(child, env=env, cwd=bench.ROOT).returncode
        if not args.sqlite:
            with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    raise SystemExit(code)


if __name__ == "__main__":
    main()
