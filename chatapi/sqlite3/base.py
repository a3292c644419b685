"""Django's SQLite backend, with the writers of one process taking turns on a lock of their own.

SQLite lets one writer in at a time. The others wait in its busy handler, which sleeps in steps of
up to 100 ms whether or not the lock came free meanwhile, so under a burst of writes (a few hundred
streams starting at once) most of the time went in sleeping. Here the threads of one process queue
on a plain lock, taken before `BEGIN IMMEDIATE` (or around a single write outside a transaction)
and released at commit or rollback, and go the moment it is free. Other processes still meet in
SQLite's busy handler, as before.

Also: the translation of a query's `%s` placeholders into SQLite's `?` (a regular expression run on
every execution) is remembered per query text.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from django.db.backends.sqlite3 import base

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_write_lock = threading.Lock()


@lru_cache(maxsize=1024)
def _qmark(query: str) -> str:
    return base.FORMAT_QMARK_REGEX.sub("?", query).replace("%%", "%")


class SQLiteCursorWrapper(base.SQLiteCursorWrapper):
    wrapper: DatabaseWrapper

    def convert_query(self, query: str, *, param_names: Any = None) -> str:
        if param_names is None:
            return _qmark(query)
        return super().convert_query(query, param_names=param_names)

    def execute(self, query: str, params: Any = None) -> Any:
        if self.wrapper.write_lock_held or not query.lstrip()[:7].upper().startswith(_WRITES):
            return super().execute(query, params)
        with self.wrapper.write_turn():
            return super().execute(query, params)

    def executemany(self, query: str, param_list: Any) -> Any:
        if self.wrapper.write_lock_held:
            return super().executemany(query, param_list)
        with self.wrapper.write_turn():
            return super().executemany(query, param_list)


class _Turn:
    def __init__(self, wrapper: DatabaseWrapper) -> None:
        self.wrapper = wrapper

    def __enter__(self) -> None:
        self.wrapper.write_lock_acquire()

    def __exit__(self, *exc: object) -> None:
        self.wrapper.write_lock_release()


class DatabaseWrapper(base.DatabaseWrapper):
    write_lock_held = False

    def write_lock_acquire(self) -> None:
        # Bounded by the busy timeout: past it, go on and let SQLite decide, as without this lock.
        self.write_lock_held = _write_lock.acquire(timeout=self.settings_dict["OPTIONS"].get("timeout", 5))

    def write_lock_release(self) -> None:
        if self.write_lock_held:
            self.write_lock_held = False
            _write_lock.release()

    def write_turn(self) -> _Turn:
        return _Turn(self)

    def create_cursor(self, name: str | None = None) -> SQLiteCursorWrapper:
        cursor = self.connection.cursor(factory=SQLiteCursorWrapper)
        cursor.wrapper = self
        return cursor

    # Django's private hooks from here on, which django-stubs leave out: hence the ignores.
    def _start_transaction_under_autocommit(self) -> None:
        self.write_lock_acquire()
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]
        except BaseException:
            self.write_lock_release()
            raise

    def _set_autocommit(self, autocommit: bool) -> None:
        try:
            super()._set_autocommit(autocommit)  # type: ignore[misc]
        finally:
            if autocommit:  # the transaction is over (committed or rolled back)
                self.write_lock_release()

    def _close(self) -> None:
        try:
            super()._close()  # type: ignore[misc]
        finally:
            self.write_lock_release()
