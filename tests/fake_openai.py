"""A small but real OpenAI-compatible HTTP server on loopback, for the test suite.

It speaks `POST /v1/chat/completions` (plain and streamed) and `GET /v1/models` over real HTTP, so
the service under test talks to it through the real `openai` SDK. Tests script it: queue replies,
make it fail with an HTTP status, or make it hang past the service's timeout.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ScriptedReply:
    content: str
    finish_reason: str = "stop"
    usage: bool = True


@dataclass
class Failure:
    status: int
    remaining: int | None  # None: every request fails
    retry_after: str | None = None


@dataclass
class _State:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    replies: deque[ScriptedReply] = field(default_factory=deque)
    failure: Failure | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    break_after: int | None = None  # streamed chunks before the connection is cut
    gate: threading.Event | None = None  # when set, requests wait at it until release()
    waiting: int = 0  # requests waiting at the gate
    streams_cut_by_client: int = 0


def _count_tokens(text: str) -> int:
    return len(text.split())


class FakeOpenAI:
    """Start with `FakeOpenAI().start()`; `url` is the base URL to give the SDK."""

    models = ("test-model", "test-model-2")

    def __init__(self) -> None:
        self.state = _State()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- control ---------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an IPv4 address, bound above
        return f"http://{host}:{port}/v1"

    def reset(self) -> None:
        self.release()
        with self.lock:
            self.state = _State()

    def reply_with(self, *contents: str, finish_reason: str = "stop", usage: bool = True) -> None:
        """Queue replies, used in order; after them the default reply comes back."""
        with self.lock:
            self.state.replies.extend(ScriptedReply(c, finish_reason, usage) for c in contents)

    def fail(self, status: int, *, times: int | None = None, retry_after: str | None = None) -> None:
        with self.lock:
            self.state.failure = Failure(status, times, retry_after)

    def hang(self, seconds: float) -> None:
        """Wait this long before answering (to go past the service's timeout)."""
        with self.lock:
            self.state.delay = seconds

    def hold(self) -> None:
        """Keep every request waiting (as a model still generating) until release()."""
        with self.lock:
            self.state.gate = threading.Event()

    def release(self) -> None:
        with self.lock:
            gate, self.state.gate = self.state.gate, None
        if gate is not None:
            gate.set()

    @property
    def waiting(self) -> int:
        """How many requests are being held (see hold())."""
        with self.lock:
            return self.state.waiting

    def stream_slowly(self, seconds_between_chunks: float) -> None:
        with self.lock:
            self.state.chunk_delay = seconds_between_chunks

    def cut_streams_after(self, chunks: int) -> None:
        """Drop the connection after this many content chunks, as a crashing backend would."""
        with self.lock:
            self.state.break_after = chunks

    @property
    def streams_cut_by_client(self) -> int:
        """How many streams the client (the service) closed before the end."""
        with self.lock:
            return self.state.streams_cut_by_client

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat completion requests received, oldest first."""
        with self.lock:
            return list(self.state.requests)

    @property
    def last_messages(self) -> list[dict[str, str]]:
        """The `messages` (role and content) of the last chat completion request."""
        return [{"role": m["role"], "content": m["content"]} for m in self.requests[-1]["messages"]]

    # --- behaviour -------------------------------------------------------------------------

    def _next_reply(self, body: dict[str, Any]) -> ScriptedReply:
        with self.lock:
            if self.state.replies:
                return self.state.replies.popleft()
            n = len(self.state.requests)
        last_user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        return ScriptedReply(f"Reply {n} to: {last_user}")

    def _take_failure(self, state: _State) -> Failure | None:
        """The failure scripted for a request that came in under `state`: one still being answered when
        a test ends does not take the failures the next test scripts."""
        with self.lock:
            failure = state.failure
            if failure is None:
                return None
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    state.failure = None
            return failure


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet in test output
        pass

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.fake.models]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        body = json.loads(raw or b"{}")
        fake = self.fake
        with fake.lock:
            state = fake.state
            fake.state.requests.append(body)
            fake.state.headers.append(dict(self.headers))
            delay = fake.state.delay
            gate = fake.state.gate
            if gate is not None:
                fake.state.waiting += 1
        if gate is not None:
            gate.wait(timeout=30)
            with fake.lock:
                fake.state.waiting -= 1
        if delay:
            time.sleep(delay)
        failure = fake._take_failure(state)
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            error = {"message": f"fake failure {failure.status}", "type": "server_error", "code": None}
            self._send_json(failure.status, {"error": error}, headers)
            return
        model = body.get("model", "")
        if model not in fake.models:
            error = {"message": f"The model `{model}` does not exist", "type": "invalid_request_error"}
            self._send_json(404, {"error": {**error, "code": "model_not_found"}})
            return
        reply = fake._next_reply(body)
        prompt_tokens = sum(_count_tokens(str(m.get("content", ""))) for m in body.get("messages", []))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": _count_tokens(reply.content),
            "total_tokens": prompt_tokens + _count_tokens(reply.content),
        }
        created = int(time.time())
        if body.get("stream"):
            self._stream(body, reply, usage, created)
            return
        self._send_json(
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.content},
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": usage if reply.usage else None,
            },
        )

    def _stream(self, body: dict[str, Any], reply: ScriptedReply, usage: dict[str, int], created: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")  # so that a cut stream is an error, not an end
        self.send_header("Connection", "close")
        self.end_headers()
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": body["model"]}
        pieces = [word + " " for word in reply.content.split(" ")]
        pieces[-1] = pieces[-1].rstrip(" ")
        events: list[dict[str, Any]] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
        events += [{**base, "choices": [{"index": 0, "delta": {"content": piece}}]} for piece in pieces if piece]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]})
        if (body.get("stream_options") or {}).get("include_usage") and reply.usage:
            events.append({**base, "choices": [], "usage": usage})
        state = self.fake.state
        try:
            for n, event in enumerate(events):
                if state.break_after is not None and n > state.break_after:
                    self.connection.shutdown(socket.SHUT_RDWR)  # no [DONE], no clean end
                    break
                self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())
                if state.chunk_delay:
                    time.sleep(state.chunk_delay)
            else:
                self._write_chunk(b"data: [DONE]\n\n")
                self._write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            with self.fake.lock:
                state.streams_cut_by_client += 1
        self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
