"""On SQLite, the writers of one process take turns on a lock (chatapi.sqlite3) that is always given back."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, connections, transaction

from chatapi.sqlite3.base import DatabaseWrapper
from conversations import services
from conversations.models import Conversation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def sqlite_only() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the write lock is part of chatapi's SQLite backend; PostgreSQL has row locks")


def in_thread(work) -> threading.Thread:
    def run() -> None:
        try:
            work()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_failed_transaction_gives_the_write_turn_back(user):
    with pytest.raises(RuntimeError), transaction.atomic():
        Conversation.objects.create(owner=user, title="rolled back")
        raise RuntimeError("the request failed halfway")
    wrapper = connections["default"]
    assert isinstance(wrapper, DatabaseWrapper)  # chatapi's SQLite backend
    assert not wrapper.write_lock_held
    # Were the lock still held, this writer would wait for the whole busy timeout (20 s).
    writer = in_thread(lambda: Conversation.objects.create(owner=user, title="next"))
    writer.join(timeout=5)
    assert not writer.is_alive()
    assert list(Conversation.objects.values_list("title", flat=True)) == ["next"]


def test_many_threads_asking_at_once_all_get_their_turn(user):
    conversation = services.conversation_create(owner=user)
    errors: list[BaseException] = []

    def ask_five_times(worker: int) -> None:
        for turn in range(5):
            try:
                job = services.conversation_ask_prepare(conversation=conversation, prompt=f"{worker}/{turn}")
                async_to_sync(services.reply_generate)(job=job)
            except BaseException as exc:  # reported below, with the assertion
                errors.append(exc)

    threads = [in_thread(lambda worker=worker: ask_five_times(worker)) for worker in range(8)]
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert conversation.messages.count() == 8 * 5 * 2
