"""Database work awaited from the event loop: a request's, or a reply's being stored."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection

from chatapi.worker import on_worker_start, on_worker_stop

P = ParamSpec("P")
R = TypeVar("R")


def db_work(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`function` as a coroutine function, run in the thread of the request or generation that awaits it
    (asgiref's ThreadSensitiveContext: one per request under Django's ASGI handler, and one per
    generation), so that one waiting for a row lock stalls no other.

    The connection goes back afterwards (to psycopg's pool on PostgreSQL): a request or a reply waiting
    for the model holds none meanwhile. Inside a transaction of the caller's (a test's), it stays.
    """

    @wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        finally:
            if not connection.in_atomic_block:
                close_old_connections()

    return sync_to_async(run)


class ConnectionReleasing:
    """For async DRF views (adrf): the database connection that authentication took in the request's thread
    goes back once the checks are done, so that a request waiting for the model holds none."""

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        try:
            super().initial(request, *args, **kwargs)  # type: ignore[misc]
        finally:
            if not connection.in_atomic_block:
                close_old_connections()


def statistics_refresh() -> None:
    """SQLite: fresh statistics for its query planner (ANALYZE, sampled by analysis_limit: milliseconds).

    SQLite keeps none by itself and Django never asks for them; without them the planner guesses that an owner
    has a handful of conversations, so the list filtered by a tag read every one of the owner's conversations
    instead of the tag's. PostgreSQL's autovacuum keeps its own. Run when a worker starts and after an import.
    """
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA analysis_limit=1000")
        cursor.execute("ANALYZE")


@on_worker_start
async def _statistics_at_start() -> None:
    await db_work(statistics_refresh)()


# SQLite: a connection the worker holds open for its life (see wal_hold).
_held: list[sqlite3.Connection] = []


def wal_hold() -> None:
    """SQLite in WAL mode: hold one connection open, so that the write-ahead log outlives the others.

    A request, and a reply being stored, open a connection and close it when done (their threads do not
    outlive them). When the last connection to a database closes, SQLite checkpoints the log into the
    database and deletes it with its shared-memory file, and the next connection makes them again: with
    one connection held, a request's connection opens and closes without either (0.57 -> 0.07 ms to open one
    and write a row, 0.43 -> 0.01 ms to close it, measured on this machine).
    """
    name = str(connection.settings_dict["NAME"])
    if connection.vendor != "sqlite" or _held or name == ":memory:" or name.startswith("file:"):
        return  # (a database in memory, as Django's tests make on SQLite, has no log)
    held = sqlite3.connect(name, check_same_thread=False)
    held.execute("SELECT count(*) FROM sqlite_master").fetchall()  # opens the database file and its log
    _held.append(held)


def wal_release() -> None:
    while _held:
        _held.pop().close()


@on_worker_start
async def _wal_at_start() -> None:
    wal_hold()


@on_worker_stop
async def _wal_at_stop() -> None:
    wal_release()
