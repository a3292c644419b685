"""OpenAI's Responses API (`/v1/responses…`) over the message tree: a stored response is an assistant message.

`resp_<hex>` is the reply's id, `previous_response_id` the assistant message a new turn follows (two
responses from one are sibling branches), `conversation` a `/conversations` id (`conv_<hex>`). A turn's
`instructions` and input are stored as the system and user messages above the reply, so they show in
`/conversations` too. Every stored response is a generation (conversations.generations): its typed
stream events are made from the generation's event log, numbered by a function of the log's event ids,
so that a stream resumes after any `sequence_number` from any worker. Errors are OpenAI's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from adrf.views import APIView as AsyncAPIView
from django.conf import settings
from django.http import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.authentication import AuthenticatedRequest
from accounts.limits import LimitHeadersMixin, limit_admit
from accounts.services import api_key_usage_record
from chatapi.db import ConnectionReleasing, db_work
from chatapi.errors import ApplicationError, InvalidRequest, NotFound
from chatapi.idempotency import idempotent, mark_reply, replayed_reply
from chatapi.ids import parse_uuid
from chatapi.schema import event_stream
from conversations import generations, llm, selectors, services, streaming
from conversations.events import Event
from conversations.models import Message
from conversations.openai_api import OPENAI_ERRORS, OpenAIError, OpenAIView
from conversations.services import TurnInput
from conversations.views import api_key_id

# --- ids ------------------------------------------------------------------------------------


def resp_id(pk: uuid.UUID) -> str:
    return f"resp_{pk.hex}"


def item_id(pk: uuid.UUID) -> str:
    return f"msg_{pk.hex}"


def conversation_id(pk: uuid.UUID) -> str:
    return f"conv_{pk.hex}"


def parse_id(value: object, prefix: str) -> uuid.UUID | None:
    """`<prefix><hex>` (or a bare UUID, as `/conversations` gives it) as a UUID; None if it is neither."""
    if isinstance(value, str) and value.startswith(prefix):
        value = value[len(prefix) :]
    return parse_uuid(value)


# --- requests -------------------------------------------------------------------------------

TEXT_PARTS = {"input_text", "output_text", "text"}
ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


@dataclass
class CreateRequest:
    model: str
    turn: list[TurnInput]
    instructions: str | None
    previous_id: uuid.UUID | None
    conversation_id: uuid.UUID | None
    store: bool
    stream: bool
    background: bool
    truncation: str
    params: dict[str, Any]  # for the backend
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the response object repeats


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a string.", param=param)
    if "\x00" in value:
        raise InvalidRequest(f"{param} must not contain NUL characters.", param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{param} must be valid Unicode text.", param=param) from None
    return value


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return _text(content, param)
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or an array of input_text parts.", param=param)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise InvalidRequest(f"{param}[{j}] must be an object.", param=f"{param}[{j}]")
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in TEXT_PARTS:  # (an object is no type: not even hashable)
            raise InvalidRequest(
                f"{param}[{j}].type {kind!r} is not supported: only text (input_text) content is.",
                code="unsupported_content_type",
                param=f"{param}[{j}].type",
            )
        texts.append(_text(part.get("text"), f"{param}[{j}].text"))
    return "".join(texts)


def items_parse(value: Any, *, param: str = "input", most: int | None = None) -> list[TurnInput]:
    """Items sent to the Responses or Conversations API (`input`, `items`): message items with text content
    (or, for `input`, a string: one user message). Any other item or content type is a 400 naming it."""
    if isinstance(value, str) and param == "input":
        return [TurnInput("user", _text(value, param))]
    if not isinstance(value, list) or not value:
        kind = "a string or a non-empty array of items" if param == "input" else "a non-empty array of items"
        raise InvalidRequest(f"{param} must be {kind}.", param=param)
    if most is not None and len(value) > most:
        raise InvalidRequest(f"{param} holds at most {most} items at a time.", param=param)
    turn = []
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object.", param=where)
        kind = item.get("type", "message")
        if kind != "message":
            raise InvalidRequest(
                f"{where}.type {kind!r} is not supported: only message items are.",
                code="unsupported_item_type",
                param=f"{where}.type",
            )
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(f"{where}.role must be one of {', '.join(sorted(ROLES))}.", param=f"{where}.role")
        turn.append(TurnInput(ROLES[role], _content_text(item.get("content"), f"{where}.content")))
    return turn


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a boolean.", param=name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be a number from {low:g} to {high:g}.", param=name)
    return value


def metadata_parse(value: Any, param: str = "metadata") -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()
        )
    ):
        raise InvalidRequest(
            f"{param} must be an object of at most 16 strings (keys up to 64 characters, values up to 512).",
            param=param,
        )
    for key, text in value.items():
        _text(key, param)
        _text(text, param)
    return dict(value)


def validate_create(body: Any) -> CreateRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    turn = items_parse(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None:
        instructions = _text(instructions, "instructions")
        if instructions.strip():
            turn.insert(0, TurnInput("system", instructions))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("model must be a string.", param="model")
    previous_id = None
    if body.get("previous_response_id") is not None:
        previous_id = parse_id(body["previous_response_id"], "resp_")
        if previous_id is None:
            raise NotFound(
                f"Previous response with id {body['previous_response_id']!r} not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    conversation_pk = None
    if conversation is not None:
        conversation_pk = parse_id(conversation, "conv_")
        if conversation_pk is None:
            raise NotFound(f"Conversation with id {conversation!r} not found.", code="conversation_not_found")
    if previous_id is not None and conversation_pk is not None:
        raise InvalidRequest(
            "previous_response_id and conversation cannot be used together.", param="previous_response_id"
        )
    store = _flag(body, "store", True)
    background = _flag(body, "background", False)
    if background and not store:
        raise InvalidRequest("background requires store to be true.", param="background")
    truncation = body.get("truncation") or "auto"
    if truncation not in ("auto", "disabled"):
        raise InvalidRequest("truncation must be auto or disabled.", param="truncation")
    max_output_tokens = body.get("max_output_tokens")
    if max_output_tokens is not None and (
        not isinstance(max_output_tokens, int) or isinstance(max_output_tokens, bool) or max_output_tokens < 1
    ):
        raise InvalidRequest("max_output_tokens must be a whole number of at least 1.", param="max_output_tokens")
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    params: dict[str, Any] = {
        key: value
        for key, value in {"max_tokens": max_output_tokens, "temperature": temperature, "top_p": top_p}.items()
        if value is not None
    }
    echo = {
        "max_output_tokens": max_output_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "metadata": metadata_parse(body.get("metadata")),
        "background": background,
        "store": store,
        "truncation": truncation,
    }
    return CreateRequest(
        model=llm.model_resolve(model),
        turn=turn,
        instructions=instructions,
        previous_id=previous_id,
        conversation_id=conversation_pk,
        store=store,
        stream=_flag(body, "stream", False),
        background=background,
        truncation=truncation,
        params=params,
        echo=echo,
    )


# --- our messages as OpenAI's objects -------------------------------------------------------


def _status(reply: Message) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """The response's status, incomplete_details and error, from how the reply ended."""
    if reply.status == Message.Status.IN_PROGRESS:
        return "in_progress", None, None
    if reply.status == Message.Status.COMPLETED:
        if reply.finish_details == Message.Finish.LENGTH:
            return "incomplete", {"reason": "max_output_tokens"}, None
        return "completed", None, None
    if reply.status == Message.Status.CANCELLED:
        return "cancelled", None, None
    if reply.status == Message.Status.FAILED:
        return "failed", None, {"code": "server_error", "message": "The model backend failed before any text."}
    message = "The reply was interrupted; the text generated so far is kept."
    return "failed", None, {"code": "server_error", "message": message}


def _item_status(status: str) -> str:
    return {"in_progress": "in_progress", "completed": "completed"}.get(status, "incomplete")


def output_message(pk: uuid.UUID, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id(pk),
        "status": _item_status(status),
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _usage(prompt: int | None, completion: int | None, total: int | None) -> dict[str, Any] | None:
    if total is None:
        return None
    return {
        "input_tokens": prompt or 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion or 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": total,
    }


@dataclass
class Turn:
    """What led to a reply: the assistant message it follows (if any) and the system messages of its turn."""

    previous: uuid.UUID | None
    instructions: str | None
    inputs: list[Message]


def turn_of(reply: Message) -> Turn:
    messages = selectors.message_turn_get(reply=reply)[:-1]  # the reply is last
    previous = messages[0].pk if messages and messages[0].role == Message.Role.ASSISTANT else None
    inputs = messages[1:] if previous is not None else messages
    system = [m.content for m in inputs if m.role == Message.Role.SYSTEM]
    return Turn(previous=previous, instructions="\n\n".join(system) if system else None, inputs=inputs)


def _base(
    *,
    pk: uuid.UUID,
    created_at: float,
    model: str,
    previous: uuid.UUID | None,
    instructions: str | None,
    conversation: uuid.UUID | None,
    echo: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": resp_id(pk),
        "object": "response",
        "created_at": int(created_at),
        "status": "in_progress",
        "background": echo.get("background", False),
        "error": None,
        "incomplete_details": None,
        "instructions": instructions,
        "max_output_tokens": echo.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": resp_id(previous) if previous else None,
        "conversation": {"id": conversation_id(conversation)} if conversation else None,
        "reasoning": {"effort": None, "summary": None},
        "store": echo.get("store", True),
        "temperature": echo.get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": echo.get("top_p"),
        "truncation": echo.get("truncation", "auto"),
        "usage": None,
        "user": None,
        "metadata": echo.get("metadata", {}),
    }


def response_object(reply: Message, turn: Turn, *, echo: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored reply as OpenAI's `response` object (its text so far while in progress)."""
    body = _base(
        pk=reply.pk,
        created_at=reply.created_at.timestamp(),
        model=reply.model,
        previous=turn.previous,
        instructions=turn.instructions,
        conversation=reply.conversation_id,
        echo=echo or {},
    )
    status, incomplete, error = _status(reply)
    text = _text_so_far(reply)
    body.update(
        status=status,
        incomplete_details=incomplete,
        error=error,
        output=[output_message(reply.pk, text, status)],
        usage=_usage(reply.prompt_tokens, reply.completion_tokens, reply.total_tokens),
    )
    return body


def _response_of(reply: Message, echo: dict[str, Any] | None = None) -> dict[str, Any]:
    return response_object(reply, turn_of(reply), echo=echo)


def _text_so_far(reply: Message) -> str:
    """A reply's text: while this worker generates it, what has come so far (the stored text lags behind)."""
    running = generations.running(reply.pk) if reply.status == Message.Status.IN_PROGRESS else None
    return "".join(running.text) if running is not None else reply.content


def message_item(message: Message) -> dict[str, Any]:
    """A stored message as OpenAI's message item: a reply is a response's output message (`output_text`, with
    its status), a user or system message has `input_text` content."""
    if message.role == Message.Role.ASSISTANT:
        return output_message(message.pk, _text_so_far(message), _status(message)[0])
    return {
        "type": "message",
        "id": item_id(message.pk),
        "status": "completed",
        "role": message.role,
        "content": [{"type": "input_text", "text": message.content}],
    }


# --- typed stream events ----------------------------------------------------------------------
#
# The events of a response are a function of its generation's log: the log's `created` (id 1) gives
# sequence numbers 0-3 (response.created, response.in_progress, output_item.added, content_part.added), a
# `delta` with id n gives n + 2 (response.output_text.delta), and the last event, with id t, gives t + 2 to
# t + 5 (output_text.done, content_part.done, output_item.done, and response.completed, .incomplete or
# .failed). Every log event's numbers lie within [id - 1, id + 5], so a stream resumed after N reads the
# log after N - 5 and sends what is numbered above N: the same events, whoever asks and whenever.

TERMINAL_EVENT = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "cancelled": "response.incomplete",
    "failed": "response.failed",
}
STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
]


def log_after(starting_after: int) -> int:
    """The log event id to read after, for a stream that resumes after sequence number `starting_after`."""
    return max(0, starting_after - 5)


def typed_events(event: Event, response: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """OpenAI's events for one event of the log, with their sequence numbers. `response`: the response object
    in progress for `created`, the final one for the last event."""
    rid = "msg_" + response["id"].removeprefix("resp_")
    where = {"item_id": rid, "output_index": 0, "content_index": 0}
    if event.name == "created":
        item = output_message(uuid.UUID(hex=rid[4:]), "", "in_progress")
        item["content"] = []
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            (0, {"type": "response.created", "response": response}),
            (1, {"type": "response.in_progress", "response": response}),
            (2, {"type": "response.output_item.added", "output_index": 0, "item": item}),
            (3, {"type": "response.content_part.added", **where, "part": part}),
        ]
    if event.name == "delta":
        return [
            (
                event.seq + 2,
                {"type": "response.output_text.delta", **where, "delta": event.data["delta"], "logprobs": []},
            )
        ]
    item = response["output"][0]
    part = item["content"][0]
    return [
        (event.seq + 2, {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []}),
        (event.seq + 3, {"type": "response.content_part.done", **where, "part": part}),
        (event.seq + 4, {"type": "response.output_item.done", "output_index": 0, "item": item}),
        (event.seq + 5, {"type": TERMINAL_EVENT[response["status"]], "response": response}),
    ]


def _sse(number: int, data: dict[str, Any]) -> bytes:
    payload = json.dumps({**data, "sequence_number": number}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {data['type']}\ndata: {payload}\n\n".encode()


def _error_event(number: int, error: dict[str, Any]) -> bytes:
    return _sse(number, {"type": "error", "code": error.get("code"), "message": error.get("message"), "param": None})


def _reply_get(pk: uuid.UUID) -> Message | None:
    return Message.objects.filter(pk=pk).first()


def _final(pk: uuid.UUID, echo: dict[str, Any] | None) -> dict[str, Any] | None:
    reply = _reply_get(pk)
    if reply is None or reply.status == Message.Status.IN_PROGRESS:
        return None
    return _response_of(reply, echo)


def _final_of(
    generation: generations.Generation | None, turn: Turn | None, echo: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The ended response from this worker's own generation (its outcome is settled before its last event goes
    out), or None when the database must say (another worker's, or a failure's stored reply)."""
    if generation is None or turn is None or not generation.outcome.done() or generation.outcome.exception():
        return None
    return response_object(generation.outcome.result(), turn, echo=echo)


async def response_sse(
    reply: Message,
    first: dict[str, Any],
    *,
    starting_after: int = -1,
    echo: dict[str, Any] | None = None,
    generation: generations.Generation | None = None,
    turn: Turn | None = None,
) -> AsyncGenerator[bytes, None]:
    """A stored response's typed events after `starting_after`, live to its end, from any worker. `first`:
    the response object as it was when it started (in progress, no text). With the `generation` this worker
    runs and the response's `turn`, its end is told from the stored reply the generation hands back, without
    reading the reply and its turn again."""
    last_sent = time.monotonic()
    last = starting_after
    try:
        async with aclosing(generations.reply_events(reply, after=log_after(starting_after))) as events:
            async for event in events:
                if event is None:
                    if time.monotonic() - last_sent >= settings.CHATAPI_SSE_PING_SECONDS:
                        last_sent = time.monotonic()
                        yield streaming.PING
                    continue
                response: dict[str, Any] | None = first
                if event.name not in ("created", "delta"):
                    response = _final_of(generation, turn, echo) or await db_work(_final)(reply.pk, echo)
                if response is None:  # not ended: its events cannot be read (no Redis, or it is down)
                    if event.seq + 2 > last:
                        yield _error_event(event.seq + 2, event.data.get("error", {}))
                    return
                for number, data in typed_events(event, response):
                    if number > last:
                        last = number
                        last_sent = time.monotonic()
                        yield _sse(number, data)
    finally:
        if generation is not None and settings.CHATAPI_STOP_ON_DISCONNECT:
            generation.stop("interrupted")


# --- store: false -----------------------------------------------------------------------------


def _stateless_response(pk: uuid.UUID, request: CreateRequest, created: float, model: str) -> dict[str, Any]:
    body = _base(
        pk=pk,
        created_at=created,
        model=model,
        previous=request.previous_id,
        instructions=request.instructions,
        conversation=request.conversation_id,
        echo=request.echo,
    )
    return body


def _ended(body: dict[str, Any], pk: uuid.UUID, completion: llm.Completion | llm.StreamChunk, text: str) -> None:
    status, incomplete = (
        ("incomplete", {"reason": "max_output_tokens"}) if completion.finish_reason == "length" else ("completed", None)
    )
    usage = completion.usage
    body.update(
        status=status,
        incomplete_details=incomplete,
        model=completion.model or body["model"],
        output=[output_message(pk, text, status)],
        usage=_usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) if usage else None,
    )


_record_usage = db_work(api_key_usage_record)


async def _count(key_id: uuid.UUID | None, usage: llm.Usage | None) -> None:
    if key_id is not None and usage is not None:
        await _record_usage(
            api_key_id=key_id, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
        )


async def stateless_sse(
    pk: uuid.UUID, request: CreateRequest, context: llm.ChatMessages, key_id: uuid.UUID | None
) -> AsyncGenerator[bytes, None]:
    """The typed events of a response that is not stored, straight from the backend (numbered as a stored
    one's would be)."""
    body = _stateless_response(pk, request, time.time(), request.model)
    for number, data in typed_events(Event(1, "created", {}), body):
        yield _sse(number, data)
    seq, text = 1, []
    final: llm.StreamChunk | None = None
    try:
        async with aclosing(llm.stream(model=request.model, messages=context, params=request.params)) as chunks:
            async for chunk in chunks:
                if chunk.finish_reason is None:
                    seq += 1
                    text.append(chunk.delta)
                    for number, data in typed_events(Event(seq, "delta", {"delta": chunk.delta}), body):
                        yield _sse(number, data)
                else:
                    final = chunk
    except ApplicationError as exc:
        done = dict(body, status="failed", error={"code": "server_error", "message": exc.message})
        done["output"] = [output_message(pk, "".join(text), "failed")]
        for number, data in typed_events(Event(seq + 1, "error", {}), done):
            yield _sse(number, data)
        return
    assert final is not None
    _ended(body, pk, final, "".join(text))
    await _count(key_id, final.usage)
    for number, data in typed_events(Event(seq + 1, "completed", {}), body):
        yield _sse(number, data)


# --- views ----------------------------------------------------------------------------------


def _sse_response(content: AsyncGenerator[bytes, None]) -> HttpResponseBase:
    return streaming.stream_response(content, content_type="text/event-stream")


def _reply_of(request: AuthenticatedRequest, rid: str) -> Message:
    return selectors.reply_get_for_user(user=request.user, reply_id=parse_id(rid, "resp_"))


# Schemas (the views validate by hand, with OpenAI's error messages).


MESSAGE_ITEM_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["message"]},
        "role": {"type": "string", "enum": sorted(ROLES)},
        "content": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string", "enum": sorted(TEXT_PARTS)},
                            "text": {"type": "string"},
                        },
                        "required": ["type", "text"],
                    },
                },
            ]
        },
    },
    "required": ["role", "content"],
}


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": MESSAGE_ITEM_SCHEMA}]})
class InputField(serializers.JSONField):
    """`input`: a string, or message items with text content."""


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 512},
        "maxProperties": 16,
        "nullable": True,
        "description": "Up to 16 string pairs: keys up to 64 characters, values up to 512.",
    }
)
class MetadataField(serializers.JSONField):
    """OpenAI's `metadata`: validated by `metadata_parse`."""


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        ],
        "nullable": True,
    }
)
class ConversationRefField(serializers.JSONField):
    """`conversation`: an id, or `{"id": …}`."""


class ResponseCreateRequest(serializers.Serializer):
    model = serializers.CharField(
        required=False, allow_null=True, help_text='A model of GET /v1/models; omitted or "auto": the default.'
    )
    input = InputField()
    instructions = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="The system prompt of this turn, stored as a system message before its input.",
    )
    previous_response_id = serializers.CharField(
        required=False, allow_null=True, help_text="The response the input follows (a branch from it)."
    )
    conversation = ConversationRefField(
        required=False, help_text="A conversation whose current node the input follows."
    )
    store = serializers.BooleanField(required=False, default=True)
    stream = serializers.BooleanField(required=False, default=False)
    background = serializers.BooleanField(required=False, default=False)
    truncation = serializers.ChoiceField(
        choices=["auto", "disabled"],
        required=False,
        allow_null=True,
        help_text=(
            '"disabled": a branch that does not fit in the model\'s context is a 400 `context_length_exceeded`; '
            '"auto" (default) leaves its earliest messages out.'
        ),
    )
    max_output_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    metadata = MetadataField(required=False)


def enum_field(values: list[str]) -> serializers.CharField:
    """A string of these values, inline in the schema (as an enum component, its name would collide)."""
    field = serializers.CharField()
    extend_schema_field({"type": "string", "enum": values})(field)  # type: ignore[type-var]
    return field


class OutputText(serializers.Serializer):
    type = enum_field(["output_text"])
    text = serializers.CharField(allow_blank=True)
    annotations = serializers.ListField(child=serializers.DictField())
    logprobs = serializers.ListField(child=serializers.DictField())


class OutputMessage(serializers.Serializer):
    type = enum_field(["message"])
    id = serializers.CharField()
    status = enum_field(["in_progress", "completed", "incomplete"])
    role = enum_field(["assistant"])
    content = OutputText(many=True)


class ResponseUsage(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    input_tokens_details = serializers.DictField()
    output_tokens = serializers.IntegerField()
    output_tokens_details = serializers.DictField()
    total_tokens = serializers.IntegerField()


class ResponseErrorOutput(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class ConversationRef(serializers.Serializer):
    id = serializers.CharField()


class ResponseOutput(serializers.Serializer):
    id = serializers.CharField()
    object = enum_field(["response"])
    created_at = serializers.IntegerField()
    status = enum_field(["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"])
    background = serializers.BooleanField()
    error = ResponseErrorOutput(allow_null=True)
    incomplete_details = serializers.DictField(allow_null=True)
    instructions = serializers.CharField(allow_null=True)
    max_output_tokens = serializers.IntegerField(allow_null=True)
    model = serializers.CharField()
    output = OutputMessage(many=True)
    parallel_tool_calls = serializers.BooleanField()
    previous_response_id = serializers.CharField(allow_null=True)
    conversation = ConversationRef(allow_null=True)
    reasoning = serializers.DictField()
    store = serializers.BooleanField()
    temperature = serializers.FloatField(allow_null=True)
    text = serializers.DictField()
    tool_choice = serializers.CharField()
    tools = serializers.ListField(child=serializers.DictField())
    top_p = serializers.FloatField(allow_null=True)
    truncation = serializers.CharField()
    usage = ResponseUsage(allow_null=True)
    user = serializers.CharField(allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField())


class ResponseDeletedOutput(serializers.Serializer):
    id = serializers.CharField()
    object = enum_field(["response"])
    deleted = serializers.BooleanField()


class InputText(serializers.Serializer):
    type = enum_field(["input_text", "output_text"])
    text = serializers.CharField(allow_blank=True)


class InputItem(serializers.Serializer):
    type = enum_field(["message"])
    id = serializers.CharField()
    status = enum_field(["completed"])
    role = enum_field(["user", "system", "assistant"])
    content = InputText(many=True)


class InputItemListOutput(serializers.Serializer):
    object = enum_field(["list"])
    data = InputItem(many=True)  # type: ignore[assignment]
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


RESPONSE_ID = OpenApiParameter("response_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="`resp_…`")
STREAM_DESCRIPTION = (
    "With `stream`: `text/event-stream` of OpenAI's typed events (`event:` the type, `data:` the event with its "
    "`sequence_number`, from 0, growing by one): response.created, response.in_progress, "
    "response.output_item.added, response.content_part.added, response.output_text.delta…, "
    "response.output_text.done, response.content_part.done, response.output_item.done, then "
    "response.completed, response.incomplete (cut at max_output_tokens, or cancelled) or response.failed; "
    "`error` when the stream itself cannot go on."
)
RESPONSE_ERRORS = {**OPENAI_ERRORS, 404: OpenApiResponse(OpenAIError, description="No such response of the caller's.")}


def _response_started(reply: Message, echo: dict[str, Any] | None = None, turn: Turn | None = None) -> dict[str, Any]:
    """The response object as its stream's first events show it: in progress, with no output yet."""
    body = response_object(reply, turn or turn_of(reply), echo=echo)
    body.update(status="in_progress", error=None, incomplete_details=None, output=[], usage=None)
    return body


async def _replay(request: Request, reply_id: uuid.UUID) -> HttpResponseBase:
    """A repeat of a streamed stored response (same Idempotency-Key, same body): its events from the start."""
    echo = validate_create(request.data).echo
    reply = await db_work(replayed_reply)(reply_id)
    first = await db_work(_response_started)(reply, echo)
    return _sse_response(response_sse(reply, first, echo=echo))


class ResponsesView(LimitHeadersMixin, OpenAIView, ConnectionReleasing, AsyncAPIView):
    @extend_schema(
        operation_id="openai_responses_create",
        request=ResponseCreateRequest,
        responses={
            (200, "application/json"): OpenApiResponse(
                ResponseOutput,
                description="The response: done, or in progress with `background`. " + STREAM_DESCRIPTION,
            ),
            (200, "text/event-stream"): event_stream(STREAM_EVENTS, description=STREAM_DESCRIPTION),
            **OPENAI_ERRORS,
            404: OpenApiResponse(OpenAIError, description="Unknown model, previous response or conversation."),
            409: OpenApiResponse(
                OpenAIError,
                description="The reply the input would follow is still being generated (`reply_in_progress`).",
            ),
        },
        description=(
            "OpenAI's Responses API. Stored (default): the instructions and input join the tree after "
            "`previous_response_id` (a branch), after `conversation`'s current node, or in a new conversation, "
            "and the response is the reply. `background`: answers at once, in progress. `store: false`: nothing "
            "is stored."
        ),
    )
    @idempotent(replay_stream=_replay)
    async def post(self, request: AuthenticatedRequest) -> HttpResponseBase:
        create = validate_create(request.data)
        key_id = api_key_id(request)
        slot = await limit_admit(request)  # a refused request (429) stores nothing and calls nothing
        if not create.store:
            try:
                return await self._stateless(request, create, key_id)
            finally:
                if slot is not None:
                    await slot.release()
        generation, reply = await generations.generation_begin(
            lambda: services.responses_turn_prepare(
                owner=request.user,
                turn=create.turn,
                model=create.model,
                params=create.params,
                previous_id=create.previous_id,
                conversation_id=create.conversation_id,
                fit=create.truncation != "disabled",
            ),
            api_key_id=key_id,
            slot=slot,
        )
        if create.stream:
            # As OpenAI's response.created shows it (output: []), and as a resumed or repeated stream does.
            turn = await db_work(turn_of)(reply)
            first = _response_started(reply, create.echo, turn)
            mark_reply(request, reply.pk)  # a repeat with its Idempotency-Key gets this response's events
            return _sse_response(response_sse(reply, first, echo=create.echo, generation=generation, turn=turn))
        if not create.background:
            reply = await generations.generation_outcome(generation)
        return Response(await db_work(_response_of)(reply, create.echo))

    async def _stateless(
        self, request: AuthenticatedRequest, create: CreateRequest, key_id: uuid.UUID | None
    ) -> HttpResponseBase:
        context = await db_work(services.responses_context)(
            owner=request.user, turn=create.turn, previous_id=create.previous_id, conversation_id=create.conversation_id
        )
        pk = uuid.uuid4()
        if create.stream:
            return _sse_response(stateless_sse(pk, create, context, key_id))
        created = time.time()
        completion = await llm.complete(model=create.model, messages=context, params=create.params)
        body = _stateless_response(pk, create, created, create.model)
        _ended(body, pk, completion, completion.content)
        await _count(key_id, completion.usage)
        return Response(body)


def query_int(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        limit = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidRequest(f"{name} must be a whole number {limit}.", param=name)
    return value


def query_flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false"):
        raise InvalidRequest(f"{name} must be true or false.", param=name)
    return raw == "true"


class ResponseDetailView(OpenAIView, ConnectionReleasing, AsyncAPIView):
    @extend_schema(
        operation_id="openai_responses_retrieve",
        parameters=[
            RESPONSE_ID,
            OpenApiParameter("stream", OpenApiTypes.BOOL, description="Stream its events (live while in progress)."),
            OpenApiParameter(
                "starting_after", OpenApiTypes.INT, description="With `stream`: the events after this sequence number."
            ),
            OpenApiParameter(
                "include",
                OpenApiTypes.STR,
                many=True,
                description="Accepted for compatibility; nothing more is included.",
            ),
        ],
        responses={
            (200, "application/json"): OpenApiResponse(
                ResponseOutput, description="The response. " + STREAM_DESCRIPTION
            ),
            (200, "text/event-stream"): event_stream(STREAM_EVENTS, description=STREAM_DESCRIPTION),
            **RESPONSE_ERRORS,
        },
        description="A stored response (in progress, its text so far); with `stream`, its events, resumable.",
    )
    async def get(self, request: AuthenticatedRequest, response_id: str) -> HttpResponseBase:
        stream = query_flag(request, "stream")
        starting_after = query_int(request, "starting_after", -1, -1)
        reply = await db_work(_reply_of)(request, response_id)
        if not stream:
            return Response(await db_work(_response_of)(reply))

        first = await db_work(_response_started)(reply)
        return _sse_response(response_sse(reply, first, starting_after=starting_after))

    @extend_schema(
        operation_id="openai_responses_delete",
        parameters=[RESPONSE_ID],
        responses={200: ResponseDeletedOutput, **RESPONSE_ERRORS},
        description="Delete a response and everything that follows it (its subtree); one in progress is stopped first.",
    )
    async def delete(self, request: AuthenticatedRequest, response_id: str) -> Response:
        reply = await db_work(_reply_of)(request, response_id)
        if reply.status == Message.Status.IN_PROGRESS:
            await generations.generation_cancel(reply)
        await db_work(services.message_delete)(conversation=reply.conversation, message=reply)
        return Response({"id": resp_id(reply.pk), "object": "response", "deleted": True})


class ResponseCancelView(OpenAIView, ConnectionReleasing, AsyncAPIView):
    @extend_schema(
        operation_id="openai_responses_cancel",
        parameters=[RESPONSE_ID],
        request=None,
        responses={200: ResponseOutput, **RESPONSE_ERRORS},
        description=(
            "Stop a response in progress, from any worker: its text so far is kept, `status: cancelled`. On one "
            "that already ended, nothing changes and it is answered as it is."
        ),
    )
    async def post(self, request: AuthenticatedRequest, response_id: str) -> Response:
        reply = await db_work(_reply_of)(request, response_id)
        if reply.status == Message.Status.IN_PROGRESS:
            await generations.generation_cancel(reply)
            reply = await db_work(_reply_of)(request, response_id)
        return Response(await db_work(_response_of)(reply))


def list_query(request: Request) -> tuple[int, bool]:
    """A list's `limit` (1 to 100, default 20) and whether it is newest first (`order`, default `desc`)."""
    limit = query_int(request, "limit", 20, 1, 100)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc.", param="order")
    return limit, order == "desc"


def item_list(messages: list[Message], has_more: bool) -> dict[str, Any]:
    """OpenAI's list of items, one a message."""
    data = [message_item(m) for m in messages]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _input_items(request: AuthenticatedRequest, rid: str) -> dict[str, Any]:
    limit, descending = list_query(request)
    reply = _reply_of(request, rid)
    path = selectors.message_path_get(conversation=reply.conversation, leaf_id=reply.pk)[:-1]
    items = [m for m in path if m.role in (Message.Role.USER, Message.Role.SYSTEM)]
    if descending:
        items.reverse()
    after = request.query_params.get("after")
    if after is not None:
        ids = [item_id(m.pk) for m in items]
        if after not in ids:
            raise InvalidRequest(f"after {after!r} is not an input item of this response.", param="after")
        items = items[ids.index(after) + 1 :]
    return item_list(items[:limit], len(items) > limit)


class ResponseInputItemsView(OpenAIView):
    @extend_schema(
        operation_id="openai_responses_input_items",
        parameters=[
            RESPONSE_ID,
            OpenApiParameter("limit", OpenApiTypes.INT, description="1 to 100, default 20."),
            OpenApiParameter("order", OpenApiTypes.STR, enum=["asc", "desc"], description="Default `desc`."),
            OpenApiParameter("after", OpenApiTypes.STR, description="An item id: the items after it."),
            OpenApiParameter("include", OpenApiTypes.STR, many=True, description="Accepted; nothing more is included."),
        ],
        responses={200: InputItemListOutput, **RESPONSE_ERRORS},
        description="The items that led to a response: the system and user messages of its branch before it.",
    )
    def get(self, request: AuthenticatedRequest, response_id: str) -> Response:
        return Response(_input_items(request, response_id))
