"""Search and list timings on a large history: 100,000 messages in 2,000 conversations of one user.

    .venv/bin/python bench/history.py                 # SQLite, in a temporary file
    .venv/bin/python bench/history.py --pg            # PostgreSQL (postgres://postgres@127.0.0.1:5432/chatapi_bench_history)

Requests go through the whole Django stack in process (authentication, views, serializers), without a
server: what is measured is the database work and the service's own code. Prints p50/p95 in ms.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg", action="store_true")
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=50, help="per conversation")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="chatapi-bench-history-")
    if args.pg:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS chatapi_bench_history")
            admin.execute("CREATE DATABASE chatapi_bench_history")
        os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/chatapi_bench_history"
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{work}/db.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatapi.settings")
    os.environ.update({"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "CHATAPI_MODELS": "echo", "REDIS_URL": ""})
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")

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
    for c in range(args.conversations):
        conversation = Conversation.objects.create(
            owner=user, title=" ".join(rng.choices(vocabulary, weights, k=4)), pinned=c % 50 == 0
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
                created_at=now,
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

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    def timed(path: str, params: dict[str, str]) -> tuple[float, float, int]:
        samples = []
        total = 0
        for _ in range(args.repeat):
            began = time.perf_counter()
            response = client.get(path, params)
            samples.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, response.content
            total = int(response["X-Total-Count"])
        samples.sort()
        return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], total

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
    print(f"{'case':32} {'p50 ms':>8} {'p95 ms':>8} {'matches':>8}")
    for name, path, params in cases:
        p50, p95, total = timed(path, params)
        print(f"{name:32} {p50:8.1f} {p95:8.1f} {total:8}")


if __name__ == "__main__":
    main()
