"""The service under uvicorn in a background thread of the test process, sharing its test database."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
import uvicorn


class LiveASGIServer:
    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config("chatapi.asgi:application", log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> LiveASGIServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    """Whether `condition()` came true within `timeout` seconds (it is asked every 20 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@dataclass
class Event:
    id: str | None
    event: str
    data: Any


def read_events(response: requests.Response) -> Iterator[Event | str]:
    """Server-sent events from a streaming `requests` response; comment lines come as plain strings."""
    fields: dict[str, str] = {}
    for raw in response.iter_lines(decode_unicode=True):
        line = raw if isinstance(raw, str) else raw.decode()
        if line.startswith(":"):
            yield line
            continue
        if not line:
            if fields:
                yield Event(fields.get("id"), fields.get("event", "message"), json.loads(fields.get("data", "null")))
                fields = {}
            continue
        key, _, value = line.partition(":")
        fields[key] = value[1:] if value.startswith(" ") else value
