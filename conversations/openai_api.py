"""The OpenAI-compatible API (`/v1/chat/completions`, `/v1/models`), so any OpenAI SDK or tool can use chatapi.

Requests and responses are OpenAI's own, errors too (`{"error": {"message", "type", "param", "code"}}`
with OpenAI's status codes), so the official SDKs raise the exception classes they would against
OpenAI. Without `X-Conversation-Id` nothing is stored but the key's token usage; with it, the turn
and the reply join that conversation's tree (see services.openai_turn_prepare).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from adrf.views import APIView as AsyncAPIView
from django.conf import settings
from django.http import HttpResponseBase, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import AuthenticatedRequest
from accounts.limits import LimitHeadersMixin, Slot, limit_admit
from accounts.services import api_key_usage_record
from chatapi.db import ConnectionReleasing, db_work
from chatapi.errors import ApplicationError, BackendError, InvalidRequest, NotFound, exception_handler
from chatapi.idempotency import idempotent, mark_reply, replayed_reply
from chatapi.negotiation import StreamFriendlyNegotiation
from chatapi.schema import CONFLICT, event_stream
from conversations import generations, llm, services, streaming
from conversations.models import Message
from conversations.views import api_key_id

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# OpenAI's Chat Completions parameters that are passed to the backend as they are; others are dropped.
PASSTHROUGH = {
    "audio",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "reasoning_effort",
    "response_format",
    "seed",
    "service_tier",
    "stop",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "web_search_options",
}
_NUMBER_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_POSITIVE_INTS = ("max_tokens", "max_completion_tokens", "n")
STARTED = int(time.time())

# --- errors ---------------------------------------------------------------------------------


def _as_openai_error(exc: Exception) -> Exception:
    """The error OpenAI would give: an unknown model is a 404, a backend 429 a 429, a backend 400 a 400."""
    if isinstance(exc, InvalidRequest) and exc.code == "model_not_found":
        exc = NotFound(exc.message, code="model_not_found", param=exc.param)
    elif isinstance(exc, BackendError) and exc.code == "backend_rate_limited":
        exc.status_code, exc.type = 429, "rate_limit_error"
    elif isinstance(exc, BackendError) and exc.details.get("backend_status") in (400, 422):
        # The backend refused the request itself (context too long, a bad response_format, …): a client
        # error, and the backend's own words are the useful part, as they would be from OpenAI.
        message = str(exc.details.get("backend_message") or exc.message)
        exc = InvalidRequest(message, code="backend_rejected_request", headers=exc.headers)
    return exc


def _openai_body(error: dict[str, Any]) -> dict[str, Any]:
    return {
        "error": {"message": error["message"], "type": error["type"], "param": error["param"], "code": error["code"]}
    }


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """Errors in OpenAI's shape and with its statuses."""
    response = exception_handler(_as_openai_error(exc), context)
    response.data = _openai_body(response.data["error"])
    return response


def _stream_failed(failure: ApplicationError) -> HttpResponseBase:
    """The error response of a stream that failed before its first piece."""
    exc = _as_openai_error(failure)
    assert isinstance(exc, ApplicationError)
    error = {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    return JsonResponse(_openai_body(error), status=exc.status_code, headers=exc.headers)


# --- request --------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_text(value: Any, param: str) -> None:
    """No NUL characters (no database stores them) and no lone surrogates (not encodable) in any text."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(f"{param} must not contain NUL characters.", param=param)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"{param} must be valid Unicode text.", param=param) from None
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, dict):
                _check_text(part.get("text"), param)
            else:
                raise InvalidRequest(f"{param} parts must be objects.", param=param)


def validate_request(body: Any) -> tuple[str, list[dict[str, Any]], dict[str, Any], bool, bool]:
    """(model, messages, backend params, stream, include_usage) from a Chat Completions body."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        if not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}.", param=f"messages[{i}].role"
            )
        content = message.get("content")
        if content is None and message["role"] != "assistant":
            raise InvalidRequest(f"messages[{i}].content is required.", param=f"messages[{i}].content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(
                f"messages[{i}].content must be a string or an array of parts.", param=f"messages[{i}].content"
            )
        _check_text(content, f"messages[{i}].content")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("model must be a string.", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean.", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise InvalidRequest("stream_options must be an object.", param="stream_options")
    params = {key: value for key, value in body.items() if key in PASSTHROUGH and value is not None}
    for key, (low, high) in _NUMBER_RANGES.items():
        if key in params and (not _number(params[key]) or not low <= params[key] <= high):
            raise InvalidRequest(f"{key} must be a number from {low:g} to {high:g}.", param=key)
    for key in _POSITIVE_INTS:
        if key in params and (not isinstance(params[key], int) or isinstance(params[key], bool) or params[key] < 1):
            raise InvalidRequest(f"{key} must be a whole number of at least 1.", param=key)
    if "seed" in params and (not isinstance(params["seed"], int) or isinstance(params["seed"], bool)):
        raise InvalidRequest("seed must be a whole number.", param="seed")
    stop = params.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4)
    ):
        raise InvalidRequest("stop must be a string or an array of up to 4 strings.", param="stop")
    return llm.model_resolve(model), messages, params, stream, bool(stream_options.get("include_usage"))


# --- responses ------------------------------------------------------------------------------


def _usage_dict(usage: llm.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _finish_reason(finish_details: str | None) -> str:
    """OpenAI's finish_reason for a stored reply: `length` when cut at its limit, else `stop` (a cancelled
    reply stopped too; OpenAI has no word for it)."""
    return "length" if finish_details == Message.Finish.LENGTH else "stop"


def _completion_from_reply(reply: Message) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{reply.pk.hex}",
        "object": "chat.completion",
        "created": int(reply.created_at.timestamp()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(reply.finish_details),
            }
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens or 0,
            "completion_tokens": reply.completion_tokens or 0,
            "total_tokens": reply.total_tokens or 0,
        },
    }


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _error_data(exc: ApplicationError) -> bytes:
    return _data({"error": {"message": exc.message, "type": exc.type, "param": None, "code": exc.code}})


_record_usage = db_work(api_key_usage_record)


async def stateless_chunks(
    *,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    include_usage: bool,
    key_id: Any,
    slot: Slot | None = None,
) -> AsyncGenerator[bytes, None]:
    """The backend's chunks forwarded as they come; only the key's usage is recorded. `slot` (the key's
    max_parallel) is released when it ends."""
    usage: llm.Usage | None = None
    text: list[str] = []
    chunks = llm.chat_completion_chunks(model=model, messages=messages, params=params)
    last: Any = None
    try:
        async for chunk in chunks:
            last = chunk
            chunk_usage = llm.usage_of(chunk)
            if chunk_usage is not None:
                usage = chunk_usage
                if not chunk.get("choices"):
                    continue  # sent below, and only when asked for
            text.append(llm.delta_text(chunk))
            if not include_usage:
                chunk.pop("usage", None)
            yield _data(chunk)
        if usage is None:
            usage = llm.estimate_usage(messages, "".join(text))
        if slot is not None:  # free before the client can see the end, so that it may ask again at once
            await slot.release()
        if include_usage and last is not None:
            yield _data(
                {
                    "id": last.get("id"),
                    "object": "chat.completion.chunk",
                    "created": last.get("created"),
                    "model": last.get("model"),
                    "choices": [],
                    "usage": _usage_dict(usage),
                }
            )
        yield DONE
    except BackendError as exc:
        if last is None:
            raise  # nothing sent yet: an ordinary error response (streaming.primed_stream)
        yield _error_data(exc)
    finally:
        await chunks.aclose()
        try:
            if key_id is not None:
                final = usage or llm.estimate_usage(messages, "".join(text))
                await _record_usage(
                    api_key_id=key_id, prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens
                )
        finally:
            if slot is not None:
                await slot.release()


async def stateful_chunks(
    reply: Message, *, include_usage: bool, generation: generations.Generation | None = None
) -> AsyncGenerator[bytes, None]:
    """A stored reply's generation as `chat.completion.chunk` events, from the start and live to its end, from
    any worker. `generation`: the one this request started, whose failure before any text is raised instead
    (an ordinary error response: streaming.primed_stream; the turn is stored either way). Without it (a
    repeat of the request, by its Idempotency-Key) the same chunks are sent again, the text of a reply whose
    event log has expired in one piece."""
    base = {
        "id": f"chatcmpl-{reply.pk.hex}",
        "object": "chat.completion.chunk",
        "created": int(reply.created_at.timestamp()),
        "model": reply.model,
    }
    started = False
    sent = ""
    try:
        async with aclosing(generations.reply_events(reply, after=1)) as events:
            async for event in events:
                if event is None:
                    continue
                if not started:
                    if event.name == "error" and generation is not None:
                        try:
                            await generations.generation_outcome(generation)
                        except ApplicationError as exc:
                            exc.headers = {**exc.headers, "X-Conversation-Id": str(generation.job.conversation.pk)}
                            raise
                    started = True
                    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    yield _data({**base, "choices": [role]})
                if event.name == "delta":
                    sent += event.data["delta"]
                    piece = {"index": 0, "delta": {"content": event.data["delta"]}, "finish_reason": None}
                    yield _data({**base, "choices": [piece]})
                elif event.name == "completed":
                    stored = event.data["response"]
                    rest = stored["message"][len(sent) :] if stored["message"].startswith(sent) else ""
                    if rest:  # the deltas are gone from the log: the stored text
                        piece = {"index": 0, "delta": {"content": rest}, "finish_reason": None}
                        yield _data({**base, "choices": [piece]})
                    finish = {"index": 0, "delta": {}, "finish_reason": _finish_reason(stored["finish_details"])}
                    yield _data({**base, "model": stored["model"], "choices": [finish]})
                    if include_usage and stored["usage"] is not None:
                        yield _data({**base, "model": stored["model"], "choices": [], "usage": stored["usage"]})
                    yield DONE
                elif event.name == "error":
                    error = event.data["error"]
                    yield _data(
                        {
                            "error": {
                                "message": error["message"],
                                "type": error["type"],
                                "param": None,
                                "code": error["code"],
                            }
                        }
                    )
    finally:
        if generation is not None and settings.CHATAPI_STOP_ON_DISCONNECT:
            generation.stop("interrupted")


async def _replay(request: Request, reply_id: uuid.UUID) -> HttpResponseBase:
    """A repeat of a streamed stateful completion (same Idempotency-Key, same body): its reply's chunks from
    the start, as the first request got them."""
    include_usage = validate_request(request.data)[4]
    reply = await db_work(replayed_reply)(reply_id)
    return await _event_stream(stateful_chunks(reply, include_usage=include_usage), str(reply.conversation_id))


def _internal_error(_chunks_sent: int) -> bytes:
    """The last chunk of a stream broken by a bug (OpenAI's chunks carry no sequence number)."""
    return _data({"error": {"message": "Internal server error.", "type": "server_error", "param": None, "code": None}})


async def _event_stream(content: AsyncGenerator[bytes, None], conversation_id: str | None = None) -> HttpResponseBase:
    response = await streaming.primed_stream(
        content, on_failure=_stream_failed, content_type="text/event-stream", on_error=_internal_error
    )
    if conversation_id is not None:
        response["X-Conversation-Id"] = conversation_id
    return response


# --- views ----------------------------------------------------------------------------------


class OpenAIView(APIView):
    """The /v1 views: JSON in, OpenAI's error body out."""

    parser_classes = [JSONParser]
    content_negotiation_class = StreamFriendlyNegotiation

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response]:
        return openai_exception_handler


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
                },
                "description": 'Content parts, e.g. `{"type": "text", "text": "…"}`.',
            },
        ],
        "nullable": True,
    }
)
class OpenAIContentField(serializers.JSONField):
    """A message's `content`: text or an array of content parts; `null` only in an assistant message."""


@extend_schema_field(
    {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}],
        "nullable": True,
    }
)
class OpenAIStopField(serializers.JSONField):
    """`stop`: a string or up to 4 strings."""


# What validate_request accepts, for the schema (the view validates by hand, with OpenAI's error messages).
# Parameters that are null are dropped, as if they were not sent.
class OpenAIMessage(serializers.Serializer):
    role = serializers.ChoiceField(choices=sorted(ROLES))
    content = OpenAIContentField(help_text="A string, or an array of content parts (`null` only for `assistant`).")


class ChatCompletionRequest(serializers.Serializer):
    model = serializers.CharField(
        required=False, allow_null=True, help_text='A model of GET /v1/models; omitted or "auto": the default.'
    )
    messages = serializers.ListField(child=OpenAIMessage(), min_length=1)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = serializers.DictField(required=False, allow_null=True, help_text='`{"include_usage": true}`')
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    stop = OpenAIStopField(required=False)
    seed = serializers.IntegerField(required=False, allow_null=True)
    presence_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    user = serializers.CharField(required=False, allow_null=True)
    response_format = serializers.DictField(required=False, allow_null=True)


class ChatCompletionResponse(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = serializers.ListField(child=serializers.DictField())
    usage = serializers.DictField()


class OpenAIErrorDetail(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class OpenAIError(serializers.Serializer):
    error = OpenAIErrorDetail()


OPENAI_ERRORS = {
    status: OpenApiResponse(OpenAIError, description=description)
    for status, description in [
        (400, "Invalid request."),
        (401, "No API key, or an unknown, revoked or expired one."),
        (404, "Unknown model, or unknown conversation in X-Conversation-Id."),
        (429, "The backend is over capacity or quota."),
        (502, "The model backend answered with an error."),
        (503, "No model backend reachable."),
        (504, "The model backend timed out."),
    ]
}


CHAT_COMPLETION_200 = (
    "A `chat.completion` object; with `stream`, `text/event-stream`: `data:` lines of `chat.completion.chunk` "
    'objects as the reply is generated, then `data: [DONE]`. With `stream_options: {"include_usage": true}` the '
    "last chunk before `[DONE]` has `choices: []` and `usage`. A failure after the first chunk ends the stream "
    "with a `data:` line holding an OpenAI error body; a failure before it is an ordinary error response."
)


class ChatCompletionsView(LimitHeadersMixin, OpenAIView, ConnectionReleasing, AsyncAPIView):
    @extend_schema(
        operation_id="openai_chat_completions",
        request=ChatCompletionRequest,
        parameters=[
            OpenApiParameter(
                "X-Conversation-Id",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="A conversation id, or `new`: store the turn and the reply in that conversation.",
            ),
            OpenApiParameter(
                "X-Conversation-Id",
                OpenApiTypes.UUID,
                OpenApiParameter.HEADER,
                response=True,
                description="The conversation the turn was stored in (only when the request named one).",
            ),
        ],
        responses={
            # One description for both: OpenAPI has one per status.
            (200, "application/json"): OpenApiResponse(ChatCompletionResponse, description=CHAT_COMPLETION_200),
            (200, "text/event-stream"): event_stream(["message"], description=CHAT_COMPLETION_200),
            **OPENAI_ERRORS,
            409: OpenApiResponse(OpenAIError, description=f"With X-Conversation-Id. {CONFLICT}"),
        },
        description=(
            "OpenAI's Chat Completions. With `stream`, `chat.completion.chunk` events and `data: [DONE]`. "
            "With `X-Conversation-Id` (an id or `new`), `messages` holds only the new turn: the service "
            "prepends the conversation's branch and system prompt, stores the turn and the reply, and "
            "answers with the header `X-Conversation-Id`."
        ),
    )
    @idempotent(replay_stream=_replay)
    async def post(self, request: AuthenticatedRequest) -> HttpResponseBase:
        model, messages, params, stream, include_usage = validate_request(request.data)
        key_id = api_key_id(request)
        conversation_id = request.headers.get("X-Conversation-Id", "").strip()
        slot = await limit_admit(request)  # a refused request (429) stores nothing and calls nothing
        if conversation_id:
            generation, reply = await generations.generation_begin(
                lambda: services.openai_turn_prepare(
                    owner=request.user, conversation_id=conversation_id, messages=messages, model=model, params=params
                ),
                api_key_id=key_id,
                slot=slot,
            )
            cid = str(generation.job.conversation.pk)
            if stream:
                mark_reply(request, reply.pk)  # a repeat with its Idempotency-Key gets this reply's chunks
                content = stateful_chunks(reply, include_usage=include_usage, generation=generation)
                return await _event_stream(content, cid)
            try:
                reply = await generations.generation_outcome(generation)
            except ApplicationError as exc:
                # The turn is stored: the client needs the conversation's id to retry in it.
                exc.headers = {**exc.headers, "X-Conversation-Id": cid}
                raise
            return Response(_completion_from_reply(reply), headers={"X-Conversation-Id": cid})
        try:
            if stream:
                content = stateless_chunks(
                    model=model, messages=messages, params=params, include_usage=include_usage, key_id=key_id, slot=slot
                )
                response = await _event_stream(content)
                slot = None  # the stream holds it now, and releases it when it ends
                return response
            return await self._stateless(model=model, messages=messages, params=params, key_id=key_id)
        finally:
            if slot is not None:
                await slot.release()

    async def _stateless(
        self, *, model: str, messages: list[dict[str, Any]], params: dict[str, Any], key_id: Any
    ) -> Response:
        body = await llm.chat_completion(model=model, messages=messages, params=params)
        usage = llm.usage_of(body)
        if usage is None:
            usage = llm.estimate_usage(messages, llm.message_text(body))
            body["usage"] = _usage_dict(usage)
        if key_id is not None:
            await _record_usage(
                api_key_id=key_id, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )
        return Response(body)


class ModelOutput(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListOutput(serializers.Serializer):
    object = serializers.CharField()
    # A declared field: DRF's metaclass takes it off the class, so Serializer.data stays; the stubs don't know.
    data = ModelOutput(many=True)  # type: ignore[assignment]


def _model(name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": STARTED,
        "owned_by": "chatapi" if name == llm.ECHO_MODEL else "system",
    }


class ModelListView(OpenAIView):
    @extend_schema(operation_id="openai_models_list", responses={200: ModelListOutput, **OPENAI_ERRORS})
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [_model(name) for name in settings.CHATAPI_MODELS]})


class ModelDetailView(OpenAIView):
    @extend_schema(
        operation_id="openai_models_retrieve",
        parameters=[OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.PATH)],
        responses={200: ModelOutput, **OPENAI_ERRORS},
    )
    def get(self, request: Request, model: str) -> Response:
        if model not in settings.CHATAPI_MODELS:
            raise NotFound(f"The model {model!r} does not exist.", code="model_not_found", param="model")
        return Response(_model(model))
