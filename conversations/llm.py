"""The one module that talks to the model backend.

With OPENAI_API_KEY and/or OPENAI_BASE_URL set, requests go through the `openai` SDK to OpenAI or
any OpenAI-compatible server. The model named `echo` is a built-in offline development aid (like
Django's console e-mail backend): it answers without any backend, so the service works on a fresh
machine with no key. SDK and transport errors leave this module as chatapi's own exceptions.

Answers are the backend's JSON as plain dicts (the SDK's `cast_to=object`): building the SDK's
pydantic objects cost ten times more CPU per streamed chunk than everything else on the way, and
the service only reads a few fields of them or forwards them as they are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai
from django.conf import settings

from chatapi.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
)
from chatapi.worker import on_worker_stop

logger = logging.getLogger(__name__)

ECHO_MODEL = "echo"
ECHO_NOTICE = "[echo: offline development model, no LLM backend configured]"
# An OpenAI-compatible server without auth (vLLM, Ollama, …) still needs some key for the SDK.
PLACEHOLDER_API_KEY = "not-needed"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class Completion:
    content: str
    model: str
    finish_reason: str  # "stop" or "length"
    usage: Usage | None


@dataclass(frozen=True)
class ToolCall:
    """A function the model called, with its arguments as the JSON text it wrote."""

    name: str
    arguments: str


@dataclass(frozen=True)
class StreamChunk:
    """A piece of a streamed reply: text (`delta`), or the end (`finish_reason`, with usage if known, and the
    functions the model called, if it was offered tools and called any)."""

    delta: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


ChatMessages = list[dict[str, Any]]
# A `chat.completion` or `chat.completion.chunk` object, as the backend's JSON.
Payload = dict[str, Any]


def available_models() -> list[str]:
    return list(settings.CHATAPI_MODELS)


def default_model() -> str:
    return settings.CHATAPI_DEFAULT_MODEL


def model_resolve(name: str | None, *, param: str = "model") -> str:
    """The model a request means: `auto`/empty is the default; an unknown name is a 400."""
    name = (name or "").strip()
    if not name or name == "auto":
        return default_model()
    if name not in settings.CHATAPI_MODELS:
        raise InvalidRequest(
            f"Unknown model {name!r}. Available: {', '.join(settings.CHATAPI_MODELS)}.",
            code="model_not_found",
            param=param,
        )
    return name


def _config() -> tuple[str, str, float, int]:
    if not (settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL):
        raise BackendUnavailable(
            "No model backend is configured: set OPENAI_API_KEY and/or OPENAI_BASE_URL.",
            code="backend_not_configured",
        )
    return (
        settings.OPENAI_BASE_URL,
        settings.OPENAI_API_KEY or PLACEHOLDER_API_KEY,
        float(settings.CHATAPI_BACKEND_TIMEOUT),
        int(settings.CHATAPI_BACKEND_MAX_RETRIES),
    )


# An async client's connection pool belongs to one event loop: one client per loop and configuration.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)
# Per loop, the task that closes its clients when it is cancelled: at worker stop, or when the loop ends
# (an event loop that ends cancels its tasks: Django's test client runs each async view in one of its own).
_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def async_client() -> openai.AsyncOpenAI:
    config = _config()
    loop = asyncio.get_running_loop()
    per_loop = _async_clients.get(loop)
    if per_loop is None:
        per_loop = _async_clients[loop] = {}
        _closers[loop] = loop.create_task(_close_at_the_end(per_loop))
    if config not in per_loop:
        base_url, api_key, timeout, max_retries = config
        # aiohttp as the transport: far less CPU per streamed event than the default one.
        per_loop[config] = openai.AsyncOpenAI(
            base_url=base_url or None,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            http_client=openai.DefaultAioHttpClient(timeout=timeout),
        )
    return per_loop[config]


async def _close_at_the_end(clients: dict[tuple, openai.AsyncOpenAI]) -> None:
    try:
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        for client in list(clients.values()):
            await client.close()
        clients.clear()


@on_worker_stop
async def async_clients_close() -> None:
    """Close this event loop's backend clients (at worker stop)."""
    loop = asyncio.get_running_loop()
    closer = _closers.pop(loop, None)
    _async_clients.pop(loop, None)
    if closer is not None:
        closer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closer


def estimate_tokens(text: str) -> int:
    """Tokens in `text` when the backend does not say: about four characters a token."""
    return (len(text) + 3) // 4


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: count the text ones
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def estimate_usage(messages: ChatMessages, reply: str) -> Usage:
    prompt = sum(estimate_tokens(_text(m.get("content"))) for m in messages)
    completion = estimate_tokens(reply)
    return Usage(prompt, completion, prompt + completion)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_of(payload: Payload) -> Usage | None:
    """The token usage a completion or chunk reports, if any."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(
        _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), _count(usage.get("total_tokens"))
    )


def first_choice(payload: Payload) -> dict[str, Any] | None:
    """The first choice of a completion or chunk (None for a usage-only chunk)."""
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def _part_text(part: Any) -> str:
    """The text of a message or delta (`content` that is not a string counts as none)."""
    content = part.get("content") if isinstance(part, dict) else None
    return content if isinstance(content, str) else ""


def message_text(completion: Payload) -> str:
    choice = first_choice(completion)
    return _part_text(choice.get("message")) if choice else ""


def delta_text(chunk: Payload) -> str:
    choice = first_choice(chunk)
    return _part_text(choice.get("delta")) if choice else ""


def _echo_text(messages: ChatMessages) -> str:
    prompt = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    turns = sum(1 for m in messages if m.get("role") == "user")
    return f"{ECHO_NOTICE} You said: {prompt}" + (f" (turn {turns})" if turns > 1 else "")


def _echo_completion(messages: ChatMessages) -> Payload:
    content = _echo_text(messages)
    usage = estimate_usage(messages, content)
    return {
        "id": f"chatcmpl-echo-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ECHO_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
    }


async def _echo_chunks(messages: ChatMessages) -> AsyncGenerator[Payload, None]:
    completion = _echo_completion(messages)
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": ECHO_MODEL,
    }
    words = completion["choices"][0]["message"]["content"].split(" ")
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
    for i, word in enumerate(words):
        piece = word if i == len(words) - 1 else word + " "
        yield {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        await asyncio.sleep(0)
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield {**base, "choices": [], "usage": completion["usage"]}


def _deadline() -> asyncio.Timeout:
    """CHATAPI_BACKEND_TIMEOUT as the deadline of a whole backend call, the SDK's retries included (each
    attempt alone is bounded by the same figure). For a stream, the call ends when it starts; after that
    the same figure bounds each silence between two pieces."""
    return asyncio.timeout(settings.CHATAPI_BACKEND_TIMEOUT)


def _timeout_error() -> BackendTimeout:
    return BackendTimeout(f"The model backend did not answer within {settings.CHATAPI_BACKEND_TIMEOUT:g} s.")


def _refused(exc: BaseException) -> bool:
    """Whether a "timeout" was really a refused connection: the aiohttp transport the SDK ships reports
    every failed connect (refused, no route, unknown host) as a connect timeout."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__
    return False


def translate_error(exc: openai.OpenAIError, *, model: str) -> BackendError:
    """An SDK/transport error as the project's exception (502 answered with an error, 503 unreachable, 504 timeout)."""
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return _timeout_error()
    if isinstance(exc, openai.APIConnectionError):
        return BackendUnavailable("The model backend could not be reached.")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        backend_message = exc.message
        details: dict[str, Any] = {"backend_status": status, "backend_message": backend_message}
        if status == 429:
            retry_after = exc.response.headers.get("retry-after")
            headers = {"Retry-After": retry_after} if retry_after else {}
            return BackendUnavailable(
                "The model backend is over capacity or quota (429); try again later.",
                code="backend_rate_limited",
                details=details,
                headers=headers,
            )
        if status == 404:
            return BackendError(
                f"The model backend does not know the model {model!r}.", code="backend_model_not_found", details=details
            )
        said = exc.body.get("message") if isinstance(exc.body, dict) else None
        if 400 <= status < 500 and isinstance(said, str) and said:
            # The backend refused this request (a model without tool support, say): its words say what to change.
            return BackendError(f"The model backend refused the request (HTTP {status}): {said}", details=details)
        return BackendError(f"The model backend answered with HTTP {status}.", details=details)
    logger.warning("Unexpected error from the model backend: %r", exc)
    return BackendError("The model backend failed.", details={"backend_message": str(exc)})


def _body(model: str, messages: ChatMessages, params: dict[str, Any] | None) -> dict[str, Any]:
    return {**(params or {}), "model": model, "messages": messages}


async def chat_completion(*, model: str, messages: ChatMessages, params: dict[str, Any] | None = None) -> Payload:
    """The backend's `chat.completion` for `messages`, as its JSON; `params` are sent as they are."""
    if model == ECHO_MODEL:
        return _echo_completion(messages)
    try:
        # The SDK's generic `post` (its documented way to send a body as is): the same transport, retries
        # and errors as `chat.completions.create`, without re-walking the already plain message dicts.
        async with _deadline():
            completion = await async_client().post(
                "/chat/completions", body=_body(model, messages, params), cast_to=object
            )
    except TimeoutError as exc:
        raise _timeout_error() from exc
    except openai.OpenAIError as exc:
        raise translate_error(exc, model=model) from exc
    if not isinstance(completion, dict) or first_choice(completion) is None:
        raise BackendError("The model backend returned no choices.", code="backend_empty_response")
    return completion


async def complete(*, model: str, messages: ChatMessages, params: dict[str, Any] | None = None) -> Completion:
    """One reply to `messages` (system first, oldest first); usage estimated if the backend gives none."""
    response = await chat_completion(model=model, messages=messages, params=params)
    choice = first_choice(response) or {}
    content = _part_text(choice.get("message"))
    finish = "length" if choice.get("finish_reason") == "length" else "stop"
    usage = usage_of(response) or estimate_usage(messages, content)
    return Completion(content=content, model=str(response.get("model") or model), finish_reason=finish, usage=usage)


async def chat_completion_chunks(
    *, model: str, messages: ChatMessages, params: dict[str, Any] | None = None
) -> AsyncGenerator[Payload, None]:
    """The backend's `chat.completion.chunk`s, as their JSON, as they arrive; the last carries usage if known.

    Closing the iterator early (client gone) closes the backend request, so generation stops there too.
    """
    if model == ECHO_MODEL:
        async for echoed in _echo_chunks(messages):
            yield echoed
        return
    body = {**_body(model, messages, params), "stream": True, "stream_options": {"include_usage": True}}
    try:
        async with _deadline():
            response = await async_client().post(
                "/chat/completions",
                body=body,
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
    except TimeoutError as exc:
        raise _timeout_error() from exc
    except openai.OpenAIError as exc:
        raise translate_error(exc, model=model) from exc
    try:
        async for chunk in response:
            if isinstance(chunk, dict):
                yield chunk
    except (openai.APITimeoutError, httpx2.TimeoutException) as exc:
        raise _timeout_error() from exc
    except (openai.APIConnectionError, httpx2.HTTPError) as exc:
        # The backend was reached and had started answering: its connection ended before the stream did.
        raise BackendError(
            "The model backend's stream was cut off before it ended.", code="backend_stream_broken"
        ) from exc
    except openai.OpenAIError as exc:
        raise translate_error(exc, model=model) from exc
    finally:
        await response.close()


async def stream(
    *, model: str, messages: ChatMessages, params: dict[str, Any] | None = None
) -> AsyncGenerator[StreamChunk, None]:
    """The reply's text piece by piece; the last chunk says how it ended, with usage (estimated if need be)."""
    finish_reason: str | None = None
    usage: Usage | None = None
    model_name = model
    text: list[str] = []
    calls: dict[int, list[str]] = {}  # by index: the name, then the pieces of the arguments
    chunks = chat_completion_chunks(model=model, messages=messages, params=params)
    try:
        async for chunk in chunks:
            if chunk.get("model"):
                model_name = str(chunk["model"])
            usage = usage_of(chunk) or usage
            choice = first_choice(chunk)
            if choice is not None:
                delta = choice.get("delta")
                piece = _part_text(delta)
                if piece:
                    text.append(piece)
                    yield StreamChunk(delta=piece)
                if isinstance(delta, dict) and delta.get("tool_calls"):
                    _tool_call_pieces(delta["tool_calls"], calls)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
    finally:
        await chunks.aclose()
    yield StreamChunk(
        finish_reason="length" if finish_reason == "length" else "stop",
        usage=usage or estimate_usage(messages, "".join(text)),
        model=model_name,
        tool_calls=tuple(ToolCall(parts[0], "".join(parts[1:])) for _, parts in sorted(calls.items())),
    )


def _tool_call_pieces(pieces: Any, calls: dict[int, list[str]]) -> None:
    """Add a delta's pieces of tool calls to `calls`: the first piece of a call names its function, the
    following ones carry more of its arguments (OpenAI's streamed `tool_calls`)."""
    if not isinstance(pieces, list):
        return
    for position, piece in enumerate(pieces):
        if not isinstance(piece, dict):
            continue
        index = piece.get("index")
        function = piece.get("function")
        if not isinstance(function, dict):
            function = {}
        parts = calls.setdefault(index if isinstance(index, int) else position, [""])
        name, arguments = function.get("name"), function.get("arguments")
        if isinstance(name, str) and name:
            parts[0] = name
        if isinstance(arguments, str):
            parts.append(arguments)


# --- images and speech --------------------------------------------------------------------------

# The GPT image models always answer in base64 and refuse `response_format`; older image models (and the
# compatible servers that mimic them) answer with a URL unless asked for b64_json.
_ALWAYS_BASE64 = ("gpt-image", "chatgpt-image")


def _refusal(exc: openai.OpenAIError, *, what: str, model: str) -> BackendError:
    """An images or speech endpoint's error: as translate_error, but a refusal (content policy, unknown model)
    says the backend's own words, which tell the user what to change."""
    error = translate_error(exc, model=model)
    if isinstance(exc, openai.APIStatusError) and type(error) is BackendError:
        code = exc.code if isinstance(exc.code, str) and exc.code else "backend_refused"
        said = exc.body.get("message") if isinstance(exc.body, dict) else None
        error = BackendError(
            f"The {what} model {model!r} refused the request: {said or exc.message}", code=code, details=error.details
        )
    return error


async def image_generate(*, prompt: str) -> bytes:
    """An image of `prompt` from CHATAPI_IMAGE_MODEL, as the bytes of its file (PNG unless the model says
    otherwise)."""
    model = settings.CHATAPI_IMAGE_MODEL
    options: dict[str, Any] = {}
    if not model.startswith(_ALWAYS_BASE64):
        options["response_format"] = "b64_json"
    if settings.CHATAPI_IMAGE_SIZE:
        options["size"] = settings.CHATAPI_IMAGE_SIZE
    try:
        async with _deadline():
            answer = await async_client().images.generate(model=model, prompt=prompt, n=1, **options)
    except TimeoutError as exc:
        raise _timeout_error() from exc
    except openai.OpenAIError as exc:
        raise _refusal(exc, what="image", model=model) from exc
    encoded = answer.data[0].b64_json if answer.data else None
    if not encoded:
        raise BackendError("The image model answered without an image (b64_json).", code="backend_empty_response")
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise BackendError("The image model's answer is not base64.", code="backend_bad_image") from None


async def speech_create(*, text: str) -> bytes:
    """`text` spoken by CHATAPI_TTS_MODEL with CHATAPI_TTS_VOICE, as MP3."""
    model = settings.CHATAPI_TTS_MODEL
    try:
        async with _deadline():
            answer = await async_client().audio.speech.create(
                model=model, voice=settings.CHATAPI_TTS_VOICE, input=text, response_format="mp3"
            )
            return answer.content
    except TimeoutError as exc:
        raise _timeout_error() from exc
    except openai.OpenAIError as exc:
        raise _refusal(exc, what="speech", model=model) from exc
