"""A worker's garbage collector (chatapi.worker): what requests leave in reference cycles is freed as requests go
on, so that a worker's memory stays flat however many it serves."""

from __future__ import annotations

import gc
import weakref
from collections import deque

import pytest

from chatapi.worker import GC_THRESHOLDS, collector_restore, collector_tune

# A request leaves some of its objects in reference cycles (only the collector frees them; reference counting
# frees the rest) and holds some while it is served, beside the other requests being served at the time.
CYCLES_PER_REQUEST = 200
IN_FLIGHT = 16


class _Node:
    """An object a request made in a reference cycle."""

    def __init__(self) -> None:
        self.me = self


def _serve(requests: int, watched: list[weakref.ref]) -> None:
    """What the collector sees of `requests` requests, IN_FLIGHT at a time; `watched` gets a reference to one
    object of each of the first half."""
    in_flight: deque[list[_Node]] = deque()
    for served in range(requests):
        objects = [_Node() for _ in range(CYCLES_PER_REQUEST)]
        if served < requests // 2:
            watched.append(weakref.ref(objects[0]))
        in_flight.append(objects)
        if len(in_flight) > IN_FLIGHT:
            in_flight.popleft()  # served: its objects are garbage now


@pytest.fixture
def worker_collector():
    """The collector as a worker sets it up at start; as it was afterwards (the live server's worker may have
    set it up already)."""
    tuned = gc.get_freeze_count() > 0
    collector_restore()
    collector_tune()
    yield
    collector_restore()
    if tuned:
        collector_tune()


def test_a_cycle_that_outlived_the_requests_around_it_is_freed_within_some_thousands_of_requests(worker_collector):
    # The objects of the requests in flight when the middle generation is collected reach the oldest one, which
    # only a full collection looks at: it must come, or a worker grows by what each request leaves there (the
    # benchmark's soak, before: +35% of memory from 10,000 to 100,000 requests).
    watched: list[weakref.ref] = []
    _serve(10_000, watched)
    assert gc.get_stats()[1]["collections"] > 0  # some were in the middle generation, if any was in flight
    left = sum(ref() is not None for ref in watched)
    assert left == 0, f"{left} of the first 5,000 requests' objects are still there after 10,000"


def test_the_collector_is_put_back_when_the_worker_stops(worker_collector):
    assert gc.get_freeze_count() > 0
    collector_restore()
    assert gc.get_threshold() != GC_THRESHOLDS
    assert gc.get_freeze_count() == 0
