"""A fast OpenAI-compatible fake backend for the benchmark: raw asyncio, keep-alive, chunked streams.

`python bench/fake_backend.py --port 9000 --chunks 50 --chunk-delay 0.02`. Non-streamed requests are
answered at once; streamed ones send `--chunks` content chunks `--chunk-delay` seconds apart (the
first at once), then usage and `[DONE]`. A model whose name ends in `-instant` streams the short reply
of a non-streamed request instead, word by word and at once: the service now streams every persisted
reply from the backend, streamed to its client or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import cast


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


REPLY = "A short benchmark reply."
INSTANT_PIECES = [word + " " for word in REPLY.split()[:-1]] + [REPLY.split()[-1]]


class Backend(asyncio.Protocol):
    chunks = 50
    chunk_delay = 0.02

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's: it writes
        self.buffer = b""
        self.busy = False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].decode("latin1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buffer) < head_end + 4 + length:
            return
        body = self.buffer[head_end + 4 : head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length :]
        method, path, _ = head.split(" ", 2)
        if method == "GET" and path.startswith("/v1/models"):
            self.transport.write(
                _response("200 OK", b'{"object":"list","data":[{"id":"bench-model","object":"model"}]}')
            )
        elif method == "POST" and path.startswith("/v1/chat/completions"):
            request = json.loads(body)
            if request.get("stream"):
                self.busy = True
                asyncio.get_running_loop().create_task(self._stream(request))
                return
            self.transport.write(_response("200 OK", self._completion(request)))
        else:
            self.transport.write(_response("404 Not Found", b'{"error":{"message":"not found"}}'))
        if self.buffer:
            self._next()

    @staticmethod
    def _completion(request: dict) -> bytes:
        words = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
        return json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", "bench-model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": REPLY},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": words, "completion_tokens": 4, "total_tokens": words + 4},
            }
        ).encode()

    async def _stream(self, request: dict) -> None:
        write = self.transport.write
        write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        model = request.get("model", "bench-model")
        head = '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"' + model + '","choices":'

        def chunk(payload: str) -> None:
            data = f"data: {payload}\n\n".encode()
            write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        if model.endswith("-instant"):
            pieces, delay = INSTANT_PIECES, 0.0
        else:
            pieces, delay = [f"tok{i} " for i in range(self.chunks)], self.chunk_delay
        try:
            for i, piece in enumerate(pieces):
                if self.transport.is_closing():
                    return
                chunk(head + '[{"index":0,"delta":{"content":' + json.dumps(piece) + '},"finish_reason":null}]}')
                if i < len(pieces) - 1 and delay:
                    await asyncio.sleep(delay)
            chunk(head + '[{"index":0,"delta":{},"finish_reason":"stop"}]}')
            if (request.get("stream_options") or {}).get("include_usage"):
                usage = f'{{"prompt_tokens":10,"completion_tokens":{len(pieces)},"total_tokens":{10 + len(pieces)}}}'
                chunk(head + '[],"usage":' + usage + "}")
            chunk("[DONE]")
            write(b"0\r\n\r\n")
        finally:
            self.busy = False
        if self.buffer:
            self._next()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--chunk-delay", type=float, default=0.02)
    args = parser.parse_args()
    Backend.chunks, Backend.chunk_delay = args.chunks, args.chunk_delay
    server = await asyncio.get_running_loop().create_server(Backend, args.host, args.port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(ImportError):  # no uvloop on Windows (requirements.txt)
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):  # the benchmark stops it with SIGINT
        asyncio.run(main())
