"""Search, list, export and import timings on a large history: 100,000 messages in 2,000 conversations of one
user, and the import of a generated ChatGPT export of 100 MB.

    .venv/bin/python bench/history.py                 # SQLite, in a temporary file
    .venv/bin/python bench/history.py --pg            # PostgreSQL (postgres://postgres@127.0.0.1:5432/chatapi_bench_history)
    .venv/bin/python bench/history.py --import-mb 20  # a smaller import (0: none)

The history is stored as it would have been made: conversations started over 18 months, oldest first, each
message a few seconds (a reply) or minutes (the next prompt) after the one before it, and now and then hours or
days later (the user came back to it); a conversation's `updated_at` is its last message's time.

Requests go through the whole Django stack in process (authentication, views, serializers), without a
server: what is measured is the database work and the service's own code, in production mode (DEBUG off;
DEBUG=true measures debug mode). Prints p50/p95 in ms, and the p50 of the process's CPU time a request
(steadier on a shared machine; on PostgreSQL without the server's part). The export goes through Django's ASGI
handler (AsyncClient), as it is served, and is read chunk by chunk; messages/s is of wall time, with the
process's CPU time beside it. The import runs in a process of its own (`import_conversations`), whose peak
RSS is compared with that of the same process before it read anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg", action="store_true")
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=50, help="per conversation")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--pg-db", default="chatapi_bench_history", help="the PostgreSQL database (dropped first)")
    parser.add_argument("--import-mb", type=float, default=100, help="size of the generated ChatGPT export (0: none)")
    parser.add_argument("--skip-search", action="store_true", help="only export and import")
    parser.add_argument("--no-statistics", action="store_true", help="SQLite: no ANALYZE after the load")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="chatapi-bench-history-")
    if args.pg:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {args.pg_db}")
            admin.execute(f"CREATE DATABASE {args.pg_db}")
        os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.pg_db}"
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{work}/db.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatapi.settings")
    os.environ.update({"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "CHATAPI_MODELS": "echo", "REDIS_URL": ""})
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    # Production mode, as served: in debug mode Django keeps the SQL of every query (the import's INSERTs of
    # 500 messages each included), which was a third of the import's CPU. DEBUG=true measures that mode.
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", "bench-history-" + "x" * 40)

    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone
    from rest_framework.test import APIClient

    from accounts.services import api_key_create, user_create
    from conversations.models import Conversation, ConversationTag, Message

    call_command("migrate", verbosity=0)
    user = user_create(username="bench", email="bench@example.com")
    key = api_key_create(user=user)[1]

    rng = random.Random(1)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "qu", "li", "de", "fa"]
    vocabulary = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(5000)]
    english = [
        "the",
        "running",
        "cat",
        "dog",
        "house",
        "model",
        "python",
        "database",
        "search",
        "index",
        "query",
        "result",
        "answer",
    ]
    weights = [1 / (i + 1) for i in range(len(vocabulary))]  # Zipf-like: some words are everywhere

    started = time.perf_counter()
    now = timezone.now()
    clock = random.Random(2)  # the times: a generator of their own, so that the texts stay those of earlier runs
    starts = sorted(clock.uniform(30, 540) for _ in range(args.conversations))  # days ago: 18 months of use
    for c in range(args.conversations):
        t = now - timedelta(days=starts[-1 - c])
        times = []
        for m in range(args.messages):
            times.append(min(t, now))
            if m % 2 == 0:  # the reply comes in seconds
                t += timedelta(seconds=clock.uniform(3, 60))
            elif clock.random() < 0.05:  # the user comes back to it hours or days later
                t += timedelta(hours=clock.uniform(1, 24 * 7))
            else:  # the next prompt: reading, then typing
                t += timedelta(seconds=clock.expovariate(1 / 120))
        conversation = Conversation.objects.create(
            owner=user,
            title=" ".join(rng.choices(vocabulary, weights, k=4)),
            pinned=c % 50 == 0,
            created_at=times[0],
            updated_at=times[-1],
        )
        messages, parent = [], None
        for m in range(args.messages):
            words = rng.choices(vocabulary, weights, k=30) + rng.sample(english, 2)
            rng.shuffle(words)
            parent = Message(
                conversation=conversation,
                parent=parent,
                role=Message.Role.USER if m % 2 == 0 else Message.Role.ASSISTANT,
                content=" ".join(words),
                created_at=times[m],
            )
            messages.append(parent)
        Message.objects.bulk_create(messages)
        if c % 3 == 0:
            ConversationTag.objects.create(conversation=conversation, name="work")
    print(f"made {Message.objects.count()} messages in {time.perf_counter() - started:.0f} s")
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # what autovacuum would do after such a load: fresh statistics
            cursor.execute("ANALYZE")
    elif not args.no_statistics:
        from chatapi.db import statistics_refresh

        statistics_refresh()  # what a worker does when it starts

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    def timed(path: str, params: dict[str, str]) -> tuple[float, float, float, int]:
        samples, cpu = [], []
        total = 0
        for _ in range(args.repeat):
            began, began_cpu = time.perf_counter(), time.process_time()
            response = client.get(path, params)
            samples.append((time.perf_counter() - began) * 1000)
            cpu.append((time.process_time() - began_cpu) * 1000)
            assert response.status_code == 200, response.content
            total = int(response["X-Total-Count"])
        samples.sort()
        return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], statistics.median(cpu), total

    rare, middling, common = vocabulary[-1], vocabulary[200], vocabulary[0]
    cases = [
        ("search rare word", "/conversations/search", {"q": rare}),
        ("search middling word", "/conversations/search", {"q": middling}),
        ("search common word", "/conversations/search", {"q": common}),
        ("search stemmed English word", "/conversations/search", {"q": "runs"}),
        ("search phrase", "/conversations/search", {"q": f'"{common} {vocabulary[1]}"'}),
        ("search two words -one", "/conversations/search", {"q": f"{middling} {vocabulary[50]} -{common}"}),
        ("search with tag filter", "/conversations/search", {"q": middling, "tag": "work"}),
        ("list", "/conversations", {}),
        ("list tag+pinned filters", "/conversations", {"tag": "work", "pinned": "false", "archived": "all"}),
    ]
    if not args.skip_search:
        print(f"{'case':32} {'p50 ms':>8} {'p95 ms':>8} {'CPU p50':>8} {'matches':>8}")
        for name, path, params in cases:
            p50, p95, cpu, total = timed(path, params)
            print(f"{name:32} {p50:8.1f} {p95:8.1f} {cpu:8.1f} {total:8}")

    count = Message.objects.count()
    for fmt in ("chatgpt", "ndjson"):
        wall, cpu, size, chunks = asyncio.run(export_timed(key, fmt))
        print(
            f"export {fmt:8} {count} messages in {wall:.2f} s: {count / wall:,.0f} messages/s "
            f"(CPU {cpu:.2f} s: {count / cpu:,.0f} messages/s of CPU), {size / 1e6:.1f} MB in {chunks} chunks"
        )

    if args.import_mb:
        source = Path(work) / "conversations.json"
        made = chatgpt_export_write(source, int(args.import_mb * 1_000_000), rng, vocabulary, weights)
        print(
            f"generated a ChatGPT export of {source.stat().st_size / 1e6:.1f} MB: {made[0]} conversations, "
            f"{made[1]} messages"
        )
        user_create(username="importer", email="importer@example.com")
        result = subprocess.run(
            [sys.executable, "-c", IMPORT_SCRIPT, str(source)],
            cwd=ROOT,
            env=os.environ,
            capture_output=True,
            text=True,
            check=True,
        )
        report = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"import of {source.stat().st_size / 1e6:.0f} MB: {report['seconds']:.1f} s (CPU {report['cpu']:.1f} s), "
            f"{report['result']['imported']} conversations; peak RSS {report['rss_before_mb']:.0f} MB before, "
            f"{report['rss_peak_mb']:.0f} MB peak: growth {report['rss_peak_mb'] - report['rss_before_mb']:.0f} MB"
        )


async def export_timed(key: str, fmt: str) -> tuple[float, float, int, int]:
    """The whole export through Django's ASGI handler, read chunk by chunk: wall and CPU seconds, bytes, chunks."""
    from django.test import AsyncClient

    client = AsyncClient()
    began, cpu = time.perf_counter(), time.process_time()
    response = await client.get("/conversations/export", {"format": fmt}, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.content
    size = chunks = 0
    async for chunk in response.streaming_content:  # type: ignore[attr-defined]
        size += len(chunk)
        chunks += 1
    return time.perf_counter() - began, time.process_time() - cpu, size, chunks


# Run in a process of its own, so that its peak RSS is the import's alone.
IMPORT_SCRIPT = """
import json, resource, sys, time
import django
django.setup()
from accounts.models import User
from conversations import transfer
user = User.objects.get(username="importer")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
began, cpu = time.perf_counter(), time.process_time()
with open(sys.argv[1], "rb") as upload:
    result = transfer.import_file(owner=user, upload=upload)
print(json.dumps({
    "seconds": time.perf_counter() - began,
    "cpu": time.process_time() - cpu,
    "rss_before_mb": before,
    "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "result": result.as_dict(),
}))
"""


def chatgpt_export_write(
    path: Path, size: int, rng: random.Random, vocabulary: list[str], weights: list[float]
) -> tuple[int, int]:
    """A ChatGPT export of about `size` bytes, written a conversation at a time: each with the empty root and
    hidden system message ChatGPT's have, 10 to 60 messages, a regenerated reply now and then (a branch)."""
    conversations = messages = 0
    t = 1_700_000_000.0
    with path.open("w") as out:
        out.write("[")
        while out.tell() < size:
            cid = f"bench-{conversations}"
            mapping: dict[str, dict] = {"root": {"id": "root", "message": None, "parent": None, "children": ["sys"]}}
            mapping["sys"] = _chatgpt_node("sys", "root", "system", "", t, hidden=True)
            parent = "sys"
            for m in range(rng.randint(10, 60)):
                t += 7.5
                role = "user" if m % 2 == 0 else "assistant"
                text = " ".join(rng.choices(vocabulary, weights, k=rng.randint(20, 120)))
                key = f"{cid}-{m}"
                mapping[key] = _chatgpt_node(key, parent, role, text, t)
                mapping[parent]["children"].append(key)
                messages += 1
                if role == "assistant" and rng.random() < 0.1:  # a regenerated reply: a sibling branch
                    sibling = f"{key}-b"
                    mapping[sibling] = _chatgpt_node(sibling, parent, role, text[::-1], t + 1)
                    mapping[parent]["children"].append(sibling)
                    messages += 1
                parent = key
            conversation = {
                "title": " ".join(rng.choices(vocabulary, weights, k=4)),
                "create_time": t - 1000,
                "update_time": t,
                "mapping": mapping,
                "moderation_results": [],
                "current_node": parent,
                "plugin_ids": None,
                "conversation_id": cid,
                "conversation_template_id": None,
                "gizmo_id": None,
                "is_archived": False,
                "default_model_slug": "gpt-4o",
                "id": cid,
            }
            out.write(("," if conversations else "") + json.dumps(conversation))
            conversations += 1
        out.write("]")
    return conversations, messages


def _chatgpt_node(key: str, parent: str, role: str, text: str, t: float, hidden: bool = False) -> dict:
    metadata: dict = {"is_visually_hidden_from_conversation": True} if hidden else {}
    if role == "assistant":
        metadata = {"model_slug": "gpt-4o", "finish_details": {"type": "stop", "stop_tokens": [200002]}}
    return {
        "id": key,
        "message": {
            "id": key,
            "author": {"role": role, "name": None, "metadata": {}},
            "create_time": t,
            "update_time": None,
            "content": {"content_type": "text", "parts": [text]},
            "status": "finished_successfully",
            "end_turn": True if role == "assistant" else None,
            "weight": 1.0,
            "metadata": metadata,
            "recipient": "all",
            "channel": None,
        },
        "parent": parent,
        "children": [],
    }


if __name__ == "__main__":
    main()
