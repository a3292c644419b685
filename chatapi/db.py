"""Database work awaited from the event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from chatapi.responses import ON_LOOP

P = ParamSpec("P")
R = TypeVar("R")


def db_work(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`function` as a coroutine function, run in the thread that does the event loop's database work.

    Under chatapi.asgi each call is treated like a request of its own: connections past
    CHATAPI_DB_CONN_MAX_AGE or broken are dropped before and after it, as request_started and
    request_finished do for the view threads; otherwise that thread's connection would never be checked
    nor renewed. Anywhere else (Django's test client, which finishes responses in its own thread) the
    work runs in the caller's thread, whose connections are the caller's business.
    """

    @wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        if not ON_LOOP.get():
            return function(*args, **kwargs)
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(run)
