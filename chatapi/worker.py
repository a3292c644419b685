"""A worker process set up for speed when it starts, and put back when it stops (chatapi.asgi's lifespan).

**A CPU core of its own** (`CHATAPI_PIN_CPU`, on by default). A worker runs Python on one core at a
time (the GIL), but its threads (the event loop, the view threads, the database's) hand the GIL to
each other at every query and every socket wait, thousands of times a second. When the kernel
spreads these threads over several cores, each hand-over wakes a thread on another core; kept on one
core, it is an ordinary switch. In the benchmark (one worker, two cores), pinned, the same asks cost
about 40% less CPU and the worker served 1.6 to 1.8 times as many.

A worker takes the first core that no other worker of the same user holds: a lock file per core in
the temporary directory, released when the worker stops (or dies). With more workers than cores,
the ones left over are not pinned and the kernel places them.

**A garbage collector that keeps out of the way.** What start-up made lives as long as the worker, so
it is frozen out of every collection (`gc.freeze`), and the youngest generation is collected every
20,000 new container objects instead of 700: a request makes hundreds, and reference counting frees
most of them anyway. In the benchmark, asks cost about 5% less CPU and streams 8-15% less.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile

logger = logging.getLogger(__name__)

GC_THRESHOLDS = (20_000, 20, 100)  # Python's own: (700, 10, 10)


def worker_started(*, pin: bool) -> None:
    """Set this process up as a worker: on a core of its own if `pin`, and with the collector tuned."""
    if pin:
        pin_worker()
    if _GC.before is None:
        _GC.before = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


def worker_stopping() -> None:
    """Undo worker_started: the core is free for another worker, the collector as it was."""
    unpin_worker()
    if _GC.before is not None:
        gc.set_threshold(*_GC.before)
        gc.unfreeze()
        _GC.before = None


class _GC:
    before: tuple[int, int, int] | None = None  # the thresholds before worker_started


class _Pin:
    """The core this process holds, the lock file that holds it, and the cores it ran on before."""

    core: int | None = None
    lock_fd: int | None = None
    before: set[int] = set()


def pin_worker() -> int | None:
    """Keep this process on a core no other chatapi worker holds; the core, or None if not pinned."""
    if _Pin.core is not None or not hasattr(os, "sched_setaffinity"):
        return _Pin.core
    import fcntl  # where there is sched_setaffinity (Linux), there is fcntl

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        return None
    for core in sorted(allowed):
        try:
            fd = os.open(_lock_path(core), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            _set_all({core})
        except OSError as exc:  # not allowed here (a sandbox, say): pinning is a speed-up, never a failure
            _set_all(allowed, quietly=True)
            os.close(fd)
            logger.warning("Worker %d could not be pinned to CPU core %d: %s", os.getpid(), core, exc)
            return None
        _Pin.core, _Pin.lock_fd, _Pin.before = core, fd, allowed
        logger.info("Worker %d runs on CPU core %d (CHATAPI_PIN_CPU).", os.getpid(), core)
        return core
    logger.info(
        "No CPU core is free for worker %d (each is held by another chatapi worker, or its lock file in %s "
        "could not be opened): it is not pinned.",
        os.getpid(),
        tempfile.gettempdir(),
    )
    return None


def unpin_worker() -> None:
    """Undo pin_worker: the process may run on its cores of before again, and the core is free."""
    if _Pin.core is None or _Pin.lock_fd is None:
        return
    _set_all(_Pin.before, quietly=True)
    os.close(_Pin.lock_fd)  # releases the lock
    _Pin.core, _Pin.lock_fd = None, None


def _lock_path(core: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"chatapi-{os.getuid()}-cpu{core}.lock")


def _set_all(cores: set[int], *, quietly: bool = False) -> None:
    """Every thread of this process on `cores`; with `quietly`, a thread that cannot be moved is left."""
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, cores)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
        except OSError:
            if not quietly:
                raise


def _threads() -> list[int]:
    """This process's threads: on Linux, an affinity is a thread's own, so each is pinned."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
