"""The view threads' pool: the next job goes to the thread that became idle last.

`ThreadPoolExecutor` hands a job to whichever idle thread its queue wakes, which in practice is the one
that has been idle longest. Under light load every request then lands on a thread that has not run for
a while: its stack and its objects have left the CPU's caches, and its SQLite connection has missed the
other threads' writes, so that connection has to read its pages again. Here the thread that finished
last, the one most likely still in the caches, takes the next job; threads that stay idle stay asleep.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_Job = tuple[Future, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Worker:
    __slots__ = ("job", "wake")

    def __init__(self, job: _Job) -> None:
        self.job: _Job | None = job
        # Held while the worker waits for a job; released (by submit, or at shutdown) to wake it.
        self.wake = threading.Lock()
        self.wake.acquire()


class LifoThreadPool(Executor):
    """At most `max_workers` threads, started as needed; jobs that find every thread busy wait their turn."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "pool") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # the one that became idle last at the end
        self._backlog: deque[_Job] = deque()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        job = (future, fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._idle:
                worker = self._idle.pop()
                worker.job = job
                worker.wake.release()
            elif len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work,
                    args=(_Worker(job),),
                    name=f"{self._prefix}_{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._backlog.append(job)
        return future

    def _work(self, worker: _Worker) -> None:
        while True:
            job, worker.job = worker.job, None
            if job is None:
                return  # shut down
            future, fn, args, kwargs = job
            del job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs
            with self._lock:
                if self._backlog:
                    worker.job = self._backlog.popleft()
                    continue
                if self._shutdown:
                    return
                self._idle.append(worker)
            worker.wake.acquire()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new jobs; the idle threads end now, the busy ones after the jobs waiting their turn (cancelled
        first with `cancel_futures`)."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._backlog:
                    self._backlog.popleft()[0].cancel()
            idle, self._idle = self._idle, []
            for worker in idle:
                worker.job = None
                worker.wake.release()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()
