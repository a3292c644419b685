"""A small but real OpenAI-compatible HTTP server on loopback, for the test suite.

It speaks `POST /v1/chat/completions` (plain and streamed, with tool calls), `POST /v1/images/generations`,
`POST /v1/audio/speech` and `GET /v1/models` over real HTTP, so the service under test talks to it through
the real `openai` SDK. Tests script it: queue replies, make it fail with an HTTP status, or make it hang
past the service's timeout. Offered tools, it calls them as a chat model would: `generate_image` when the
prompt asks for a picture, `text_to_speech` when it asks for something said out loud.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG (8-bit RGB, a red-and-blue checkerboard), made as the format says: signature, IHDR, one
    zlib-compressed IDAT of filtered scanlines, IEND, each chunk with its CRC."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + b"".join(b"\xff\x00\x00" if (x + y) % 2 == 0 else b"\x00\x00\xff" for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no CRC, no padding, joint stereo: 144 * 128000 / 44100 = 417 bytes.
MP3_FRAME_HEADER = b"\xff\xfb\x90\x64"
MP3_FRAME_BYTES = 417


def silent_mp3(frames: int = 4) -> bytes:
    """Real MP3 bytes: `frames` whole MPEG audio frames whose side information and main data are zero (silence)."""
    return (MP3_FRAME_HEADER + bytes(MP3_FRAME_BYTES - len(MP3_FRAME_HEADER))) * frames


@dataclass
class ScriptedReply:
    content: str
    finish_reason: str = "stop"
    usage: bool = True
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (function name, arguments as JSON text)


@dataclass
class MediaFailure:
    status: int
    message: str
    code: str | None = None


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
    image_requests: list[dict[str, Any]] = field(default_factory=list)
    speech_requests: list[dict[str, Any]] = field(default_factory=list)
    media_failures: dict[str, MediaFailure] = field(default_factory=dict)  # by "images" or "speech"
    refuse_tools: bool = False


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

    def call_tool(self, name: str, arguments: dict[str, Any] | str, *, text: str = "") -> None:
        """Queue a reply that calls a tool (after `text`, if any); `arguments` as a dict, or raw JSON text."""
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
        with self.lock:
            self.state.replies.append(ScriptedReply(text, "tool_calls", True, [(name, raw)]))

    def refuse_media(self, endpoint: str, status: int, message: str, code: str | None = None) -> None:
        """Make `images` or `speech` requests fail as OpenAI's do (content policy, unknown model)."""
        with self.lock:
            self.state.media_failures[endpoint] = MediaFailure(status, message, code)

    def refuse_tools(self) -> None:
        """Answer requests that offer tools with a 400, as a model without tool support does."""
        with self.lock:
            self.state.refuse_tools = True

    @property
    def image_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.state.image_requests)

    @property
    def speech_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.state.speech_requests)

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
        return _intent(body, last_user) or ScriptedReply(f"Reply {n} to: {last_user}")

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


_PICTURE = re.compile(r"\b(?:picture|image|photo|drawing|draw)\b(?:\s+of)?\s*(?P<what>.*)", re.IGNORECASE | re.DOTALL)
_OUT_LOUD = re.compile(r"\b(?:out loud|aloud)\b\s*:?\s*(?P<what>.*)", re.IGNORECASE | re.DOTALL)


def _intent(body: dict[str, Any], prompt: str) -> ScriptedReply | None:
    """What a chat model offered tools does with `prompt`: asked for a picture, it calls generate_image; asked
    to say something out loud, text_to_speech with the words after the colon."""
    offered = {tool.get("function", {}).get("name") for tool in body.get("tools") or []}
    picture, out_loud = _PICTURE.search(prompt), _OUT_LOUD.search(prompt)
    if "text_to_speech" in offered and out_loud and out_loud["what"].strip():
        return ScriptedReply("", "tool_calls", True, [("text_to_speech", json.dumps({"text": out_loud["what"]}))])
    if "generate_image" in offered and picture:
        what = picture["what"].strip() or prompt
        return ScriptedReply("", "tool_calls", True, [("generate_image", json.dumps({"prompt": what}))])
    return None


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
        path = self.path.rstrip("/")
        if path in ("/v1/images/generations", "/v1/audio/speech"):
            self._media(path, json.loads(raw or b"{}"))
            return
        if path != "/v1/chat/completions":
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
        if body.get("tools") and state.refuse_tools:
            error = {"message": f"{model} does not support tools", "type": "invalid_request_error", "code": None}
            self._send_json(400, {"error": error})
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
                        "message": {
                            "role": "assistant",
                            "content": reply.content or None,
                            **({"tool_calls": _tool_calls(reply)} if reply.tool_calls else {}),
                        },
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
        for call in _tool_calls(reply):
            # As OpenAI streams a call: its id and name first, then its arguments in pieces.
            arguments = call["function"]["arguments"]
            first = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            events.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [first]}}]})
            middle = len(arguments) // 2
            for part in (arguments[:middle], arguments[middle:]):
                piece = {"index": call["index"], "function": {"arguments": part}}
                events.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]})
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

    def _media(self, path: str, body: dict[str, Any]) -> None:
        """`/v1/images/generations` (a real PNG as b64_json) and `/v1/audio/speech` (real MP3 bytes)."""
        fake = self.fake
        endpoint = "images" if path.endswith("generations") else "speech"
        with fake.lock:
            getattr(fake.state, f"{'image' if endpoint == 'images' else 'speech'}_requests").append(body)
            failure = fake.state.media_failures.get(endpoint)
        if failure is not None:
            error = {"message": failure.message, "type": "invalid_request_error", "code": failure.code}
            self._send_json(failure.status, {"error": error})
            return
        model = str(body.get("model", ""))
        if endpoint == "images":
            if model.startswith("gpt-image") and "response_format" in body:  # as OpenAI's GPT image models
                error = {"message": "Unknown parameter: 'response_format'.", "type": "invalid_request_error"}
                self._send_json(400, {"error": {**error, "code": "unknown_parameter"}})
                return
            image = base64.b64encode(tiny_png()).decode()
            self._send_json(200, {"created": int(time.time()), "data": [{"b64_json": image}]})
            return
        audio = silent_mp3()
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        self.send_header("Content-Length", str(len(audio)))
        self.end_headers()
        self.wfile.write(audio)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _tool_calls(reply: ScriptedReply) -> list[dict[str, Any]]:
    return [
        {"index": i, "id": f"call_fake{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(reply.tool_calls)
    ]
