"""A worker's set-up at start-up (chatapi.worker): a speed-up that never stops the service from starting."""

from __future__ import annotations

import os
import tempfile

import pytest

from chatapi import worker

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning workers to cores needs Linux and at least two CPU cores",
)


@pytest.fixture
def own_lock_files(tmp_path, monkeypatch) -> None:
    """Lock files of the test's own, so that no worker elsewhere on this machine holds a core."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_a_worker_that_may_not_be_pinned_stays_on_all_its_cores(own_lock_files, monkeypatch):
    everywhere = os.sched_getaffinity(0)
    allowed = os.sched_setaffinity

    def refuse_one_core(tid: int, cores: set[int]) -> None:  # as a sandbox might
        if len(cores) == 1:
            raise PermissionError(1, "Operation not permitted")
        allowed(tid, cores)

    monkeypatch.setattr(os, "sched_setaffinity", refuse_one_core)
    assert worker.pin_worker() is None  # and no exception, which would fail the server's start-up
    assert os.sched_getaffinity(0) == everywhere
    monkeypatch.setattr(os, "sched_setaffinity", allowed)
    # The refused core's lock was given back: a worker that may be pinned takes it.
    try:
        assert worker.pin_worker() == min(everywhere)
    finally:
        worker.unpin_worker()
    assert os.sched_getaffinity(0) == everywhere
