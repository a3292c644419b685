"""Images and speech by intent: the tools a chat model is offered, and running the ones it calls.

With CHATAPI_IMAGE_MODEL and/or CHATAPI_TTS_MODEL set, a reply may be asked with the tools `generate_image`
and `text_to_speech` (only those configured); when the model calls one, the backend's images or speech
endpoint makes the file (conversations.llm), and the reply keeps it as an attachment.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chatapi.errors import BackendError
from conversations import llm

IMAGE_TOOL = "generate_image"
SPEECH_TOOL = "text_to_speech"
# A model that calls more tools at once than this is asked for too much in one reply.
MAX_CALLS = 4


def definitions() -> list[dict[str, Any]]:
    """The tools to offer the model (OpenAI's function tools): none without an image or speech model."""
    tools = []
    if settings.CHATAPI_IMAGE_MODEL:
        tools.append(
            _function(
                IMAGE_TOOL,
                "Make a picture. Call it when the user asks to see, draw, paint or be shown an image, picture, "
                "photo or drawing of something.",
                "prompt",
                "A detailed description of the picture to make.",
            )
        )
    if settings.CHATAPI_TTS_MODEL:
        tools.append(
            _function(
                SPEECH_TOOL,
                "Say something out loud. Call it when the user asks to hear something, or to have something said, "
                "read or spoken aloud.",
                "text",
                "The exact words to speak.",
            )
        )
    return tools


def _function(name: str, description: str, argument: str, argument_description: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {argument: {"type": "string", "description": argument_description}},
                "required": [argument],
            },
        },
    }


@dataclass(frozen=True)
class Made:
    """What a tool made: its file's bytes and type, what it was made from, and what the reply says of it."""

    kind: str  # "image" or "speech"
    content_type: str
    data: bytes
    source_text: str  # the image's prompt, or the text that was spoken
    note: str


async def run(calls: tuple[llm.ToolCall, ...]) -> list[Made]:
    """Run the model's tool calls (at once), in order; a call that is not one of the offered tools, or whose
    arguments are not what it takes, is the backend's error (502), as is a refusal of the images or speech
    endpoint."""
    if len(calls) > MAX_CALLS:
        raise BackendError(
            f"The model called {len(calls)} tools in one reply; at most {MAX_CALLS} are run.", code="backend_tool_call"
        )
    return list(await asyncio.gather(*(_run_one(call) for call in calls)))


async def _run_one(call: llm.ToolCall) -> Made:
    offered = {tool["function"]["name"] for tool in definitions()}
    if call.name not in offered:
        raise BackendError(f"The model called a tool that was not offered: {call.name!r}.", code="backend_tool_call")
    argument = "prompt" if call.name == IMAGE_TOOL else "text"
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = None
    value = arguments.get(argument) if isinstance(arguments, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise BackendError(
            f"The model called {call.name} without a {argument} (its arguments: {call.arguments[:200]!r}).",
            code="backend_tool_call",
        )
    value = value.strip()
    if call.name == IMAGE_TOOL:
        data = await llm.image_generate(prompt=value)
        return Made("image", image_type(data), data, value, f"[image: {value}]")
    spoken, cut = speech_cut(value, settings.CHATAPI_TTS_MAX_CHARS)
    data = await llm.speech_create(text=spoken)
    note = spoken
    if cut:
        note += (
            f"\n\n[Only the first {len(spoken)} of {len(value)} characters were spoken: the speech model takes at "
            f"most {settings.CHATAPI_TTS_MAX_CHARS}.]"
        )
    return Made("speech", "audio/mpeg", data, spoken, note)


# The image formats the image models answer in, by their files' first bytes.
_SIGNATURES = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
]


def image_type(data: bytes) -> str:
    """The content type of an image file, from its first bytes (PNG, the image models' default, if unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for signature, kind in _SIGNATURES if data.startswith(signature)), "image/png")


_SENTENCE_END = re.compile(r"[.!?…。！？](?:[\"'”’)\]]*)(?=\s)|\n")


def speech_cut(text: str, limit: int) -> tuple[str, bool]:
    """`text` if it is at most `limit` characters, else its longest start of whole sentences that is (of
    whole words when the first sentence is already too long); and whether it was cut."""
    if len(text) <= limit:
        return text, False
    head = text[: limit + 1]  # a sentence that ends exactly at the limit is whole when a space follows
    ends = [match.end() for match in _SENTENCE_END.finditer(head) if match.end() <= limit]
    if ends:
        return text[: ends[-1]].rstrip(), True
    space = head.rfind(" ", 0, limit + 1)
    return (text[:space] if space > 0 else text[:limit]).rstrip(), True


def reply_note(made: list[Made], *, after_text: bool) -> str:
    """What the stored reply says of what was made (after the model's own text, if it wrote any)."""
    note = "\n\n".join(item.note for item in made)
    return f"\n\n{note}" if after_text else note
