"""The view threads' pool (chatapi.pool): the thread that became idle last takes the next job."""

from __future__ import annotations

import threading
import time

import pytest

from chatapi.pool import LifoThreadPool


def _busy_threads(pool: LifoThreadPool, count: int) -> tuple[list[threading.Event], list]:
    """`count` jobs holding a thread each until their event is set; their futures give the thread's ident."""
    started = threading.Barrier(count + 1)
    gates = [threading.Event() for _ in range(count)]

    def hold(gate: threading.Event) -> int:
        started.wait(timeout=5)
        gate.wait(timeout=5)
        return threading.get_ident()

    futures = [pool.submit(hold, gate) for gate in gates]
    started.wait(timeout=5)
    return gates, futures


def _idle_after(future) -> int:
    ident = future.result(timeout=5)
    time.sleep(0.05)  # the thread is back among the idle ones
    return ident


def test_the_thread_that_finished_last_takes_the_next_job():
    pool = LifoThreadPool(max_workers=4)
    try:
        gates, futures = _busy_threads(pool, 3)
        finished = []
        for index in (1, 0, 2):  # the threads finish in this order
            gates[index].set()
            finished.append(_idle_after(futures[index]))
        assert len(set(finished)) == 3
        # Jobs one after another all go to the thread that finished last.
        for _ in range(5):
            assert pool.submit(threading.get_ident).result(timeout=5) == finished[-1]
    finally:
        pool.shutdown()


def test_no_more_threads_than_allowed_and_waiting_jobs_run_in_order():
    pool = LifoThreadPool(max_workers=2)
    try:
        gates, futures = _busy_threads(pool, 2)
        order: list[int] = []
        waiting = [pool.submit(order.append, n) for n in range(5)]
        time.sleep(0.05)
        assert order == []  # both threads are busy: the jobs wait
        for gate in gates:
            gate.set()
        for future in waiting:
            future.result(timeout=5)
        assert order == [0, 1, 2, 3, 4]
        idents = {future.result() for future in futures}
        idents |= {pool.submit(threading.get_ident).result(timeout=5) for _ in range(10)}
        assert len(idents) == 2
    finally:
        pool.shutdown()


def test_a_failing_job_gives_its_exception_to_its_future_and_the_thread_goes_on():
    pool = LifoThreadPool(max_workers=1)
    try:
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(timeout=5)
        assert pool.submit(sum, [1, 2]).result(timeout=5) == 3
    finally:
        pool.shutdown()


def test_shutdown_runs_the_waiting_jobs_then_ends_every_thread():
    pool = LifoThreadPool(max_workers=1)
    gates, _ = _busy_threads(pool, 1)
    done: list[int] = []
    waiting = pool.submit(done.append, 1)
    gates[0].set()
    pool.shutdown(wait=True)
    assert waiting.done() and done == [1]
    assert not any(thread.is_alive() for thread in pool._threads)
    with pytest.raises(RuntimeError):
        pool.submit(sum, [1])


def test_shutdown_can_cancel_the_waiting_jobs():
    pool = LifoThreadPool(max_workers=1)
    gates, _ = _busy_threads(pool, 1)
    waiting = pool.submit(sum, [1])
    releaser = threading.Timer(0.1, gates[0].set)
    releaser.start()
    pool.shutdown(wait=True, cancel_futures=True)
    assert waiting.cancelled()
