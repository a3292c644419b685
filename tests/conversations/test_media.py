"""Images and speech by intent (`/api/complete`, and the conversation API when turned on): tools offered to
the model, the files they make served as the reply's answer and kept as its attachments."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import requests
from django.core.files.storage import storages

from accounts.services import api_key_create
from conversations.models import Attachment, Conversation, Message
from conversations.tools import speech_cut
from tests.fake_openai import MP3_FRAME_BYTES, MP3_FRAME_HEADER, silent_mp3, tiny_png
from tests.live import Event, read_events

pytestmark = pytest.mark.django_db(transaction=True)

IMAGE_MODEL = "gpt-image-2"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


@pytest.fixture
def media(settings, backend):
    """The operator configured an image model and a speech model."""
    settings.CHATAPI_IMAGE_MODEL = IMAGE_MODEL
    settings.CHATAPI_TTS_MODEL = "tts-1"
    settings.CHATAPI_TTS_VOICE = "nova"
    return backend


@pytest.fixture
def complete(user, live_url):
    headers = {"Authorization": f"Bearer {api_key_create(user=user)[1]}"}

    def post(content: str) -> requests.Response:
        return requests.post(f"{live_url}/api/complete", json={"content": content}, headers=headers, timeout=30)

    return post


def offered(backend) -> list[str]:
    return [tool["function"]["name"] for tool in backend.requests[-1].get("tools", [])]


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def png_size(data: bytes) -> tuple[int, int]:
    """The width and height a PNG's IHDR gives, after checking its signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = body
        position += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    return width, height


def test_a_picture_prompt_answers_with_the_png_and_keeps_it_as_the_replys_attachment(complete, media, media_root):
    response = complete("show me a picture of a cat")

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    assert png_size(response.content) == (2, 2)
    assert response.content == tiny_png()
    assert offered(media) == ["generate_image", "text_to_speech"]
    [image_request] = media.image_requests
    assert image_request["model"] == IMAGE_MODEL and image_request["prompt"] == "a cat"
    assert "response_format" not in image_request  # the GPT image models refuse it: they answer in base64

    reply = Message.objects.get(role="assistant")
    assert reply.status == "completed" and reply.content == "[image: a cat]"
    attachment = Attachment.objects.get()
    assert attachment.message == reply and attachment.conversation == reply.conversation
    assert (attachment.content_type, attachment.size, attachment.source_text) == ("image/png", len(tiny_png()), "a cat")
    assert response.headers["Content-Location"] == f"/attachments/{attachment.pk}"
    [path] = stored_files(media_root)
    assert path.read_bytes() == tiny_png()
    assert path.name == f"{attachment.pk}.png"  # named from its own id, never from what the user sent


def test_an_older_image_model_is_asked_for_b64_json(complete, media, settings):
    settings.CHATAPI_IMAGE_MODEL = "dall-e-3"
    response = complete("draw a picture of a lighthouse at night")
    assert response.headers["Content-Type"] == "image/png"
    assert media.image_requests[-1]["response_format"] == "b64_json"
    assert media.image_requests[-1]["model"] == "dall-e-3"


def test_say_out_loud_answers_with_mp3_speech_kept_as_an_attachment(complete, media, media_root):
    response = complete("Say out loud: Hello, my name is Chloe!")

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "audio/mpeg"
    audio = response.content
    assert audio == silent_mp3()
    frames = [audio[i : i + MP3_FRAME_BYTES] for i in range(0, len(audio), MP3_FRAME_BYTES)]
    assert len(frames) == 4 and all(frame[:4] == MP3_FRAME_HEADER for frame in frames)  # whole MPEG frames
    [speech] = media.speech_requests
    assert speech == {"model": "tts-1", "voice": "nova", "input": "Hello, my name is Chloe!", "response_format": "mp3"}
    reply = Message.objects.get(role="assistant")
    assert reply.content == "Hello, my name is Chloe!"
    attachment = reply.attachments.get()
    assert (attachment.kind, attachment.content_type, attachment.size) == ("speech", "audio/mpeg", len(audio))
    assert [p.suffix for p in stored_files(media_root)] == [".mp3"]


def test_other_prompts_still_stream_text_with_the_tools_offered(complete, media, media_root):
    media.reply_with("The capital of France is Paris.")
    response = complete("Capital of France?")
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == "The capital of France is Paris."
    assert offered(media) == ["generate_image", "text_to_speech"]
    assert not media.image_requests and not media.speech_requests
    assert not Attachment.objects.exists() and not stored_files(media_root)


def test_without_an_image_or_speech_model_no_tools_are_offered_and_nothing_changes(complete, backend, media_root):
    response = complete("show me a picture of a cat")
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == "Reply 1 to: show me a picture of a cat"
    assert "tools" not in backend.requests[-1]
    assert not backend.image_requests and not Attachment.objects.exists()


def test_only_the_configured_tools_are_offered(complete, backend, settings):
    settings.CHATAPI_TTS_MODEL = "tts-1"
    response = complete("show me a picture of a cat")
    assert offered(backend) == ["text_to_speech"]
    assert response.headers["Content-Type"].startswith("text/plain")  # no image tool: the model answers in text
    assert not backend.image_requests


def test_an_image_the_backend_refuses_is_a_502_with_its_message_and_the_prompt_kept(complete, media, media_root):
    media.refuse_media(
        "images", 400, "Your request was rejected as a result of our safety system.", "content_policy_violation"
    )
    response = complete("show me a picture of something forbidden")

    assert response.status_code == 502
    assert response.json() == {
        "error": f"The image model '{IMAGE_MODEL}' refused the request: Your request was rejected as a result of "
        "our safety system."
    }
    assert Message.objects.filter(role="user", content="show me a picture of something forbidden").exists()
    assert Message.objects.get(role="assistant").status == "failed"
    assert not Attachment.objects.exists() and not stored_files(media_root)


def test_an_unknown_speech_model_is_a_502(complete, media):
    media.refuse_media("speech", 404, "The model `tts-9` does not exist", "model_not_found")
    response = complete("Say out loud: hi there")
    assert response.status_code == 502
    assert response.json()["error"] == "The speech model 'tts-1' refused the request: The model `tts-9` does not exist"


def test_a_backend_that_refuses_tools_is_a_502_with_its_message(complete, media):
    media.refuse_tools()
    response = complete("show me a picture of a cat")
    assert response.status_code == 502
    assert "does not support tools" in response.json()["error"]


def test_a_tool_call_without_its_argument_is_a_502_not_a_500(complete, media):
    media.call_tool("generate_image", "{not json")
    response = complete("show me a picture of a cat")
    assert response.status_code == 502
    assert "generate_image without a prompt" in response.json()["error"]


def test_text_to_speak_that_is_too_long_is_cut_at_a_sentence_and_the_reply_says_so(complete, media, settings):
    settings.CHATAPI_TTS_MAX_CHARS = 100
    text = "First sentence is here. Second one follows it! A third, which will not fit in the hundred characters left."
    media.call_tool("text_to_speech", {"text": text})
    response = complete("read this aloud")

    assert response.headers["Content-Type"] == "audio/mpeg"
    assert media.speech_requests[-1]["input"] == "First sentence is here. Second one follows it!"
    reply = Message.objects.get(role="assistant")
    assert reply.content.startswith("First sentence is here. Second one follows it!\n\n[Only the first 46 of ")
    assert "the speech model takes at most 100" in reply.content
    assert reply.attachments.get().source_text == "First sentence is here. Second one follows it!"


def test_text_before_a_tool_call_streams_as_text_ending_with_the_attachments_address(complete, media):
    media.call_tool("generate_image", {"prompt": "a red square"}, text="Here you go:")
    response = complete("a red square, please")
    attachment = Attachment.objects.get()
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == f"Here you go:\n\n[image: a red square]\n[image/png: /attachments/{attachment.pk}]\n"
    assert Message.objects.get(role="assistant").content == "Here you go:\n\n[image: a red square]"


# --- attachments in the conversation API ------------------------------------------------------------


def test_attachments_are_in_message_objects_and_served_to_their_owner_only(complete, media, http, other_user):
    complete("show me a picture of a cat")
    conversation = Conversation.objects.get()
    attachment = Attachment.objects.get()
    listing = {"id": str(attachment.pk), "content_type": "image/png", "size": len(tiny_png())}

    messages = http.get(f"{http.base_url}/conversations/{conversation.pk}/messages").json()
    assert [m["attachments"] for m in messages] == [[], [{**listing, "url": f"/attachments/{attachment.pk}"}]]
    mapping = http.get(f"{http.base_url}/conversations/{conversation.pk}").json()["mapping"]
    assert mapping[messages[1]["id"]]["message"]["attachments"] == messages[1]["attachments"]

    served = http.get(f"{http.base_url}/attachments/{attachment.pk}", headers={"Accept": "image/*"}, stream=True)
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["Content-Length"] == str(len(tiny_png()))
    assert b"".join(served.iter_content(chunk_size=None)) == tiny_png()

    other = requests.Session()
    other.headers["Authorization"] = f"Bearer {api_key_create(user=other_user)[1]}"
    unknown = "00000000-0000-0000-0000-000000000000"
    for path in (f"/attachments/{attachment.pk}", f"/attachments/{unknown}", "/attachments/x"):
        response = other.get(f"{http.base_url}{path}", timeout=10)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found_error"
    assert requests.get(f"{http.base_url}/attachments/{attachment.pk}", timeout=10).status_code == 401


def test_deleting_the_message_its_conversation_or_all_deletes_the_files(complete, media, http, media_root):
    def make(content: str) -> Message:
        assert complete(content).headers["Content-Type"].startswith(("image/", "audio/"))
        return Message.objects.filter(role="assistant").latest("created_at")

    first = make("show me a picture of a cat")
    second = make("Say out loud: hello")
    assert len(stored_files(media_root)) == 2
    # Deleting the second prompt takes its reply (the subtree) and the reply's file; the first stays.
    response = http.delete(f"{http.base_url}/conversations/{second.conversation_id}/messages/{second.parent_id}")
    assert response.status_code == 204
    assert [p.suffix for p in stored_files(media_root)] == [".png"]
    assert list(Attachment.objects.values_list("message", flat=True)) == [first.pk]

    assert http.delete(f"{http.base_url}/conversations/{first.conversation_id}").status_code == 204
    assert not stored_files(media_root) and not Attachment.objects.exists()

    dog = make("show me a picture of a dog")
    response = http.post(
        f"{http.base_url}/conversations/bulk", json={"ids": [str(dog.conversation_id)], "action": "delete"}
    )
    assert response.json() == {"affected": 1}
    assert not stored_files(media_root)

    make("show me a picture of a bird")
    assert len(stored_files(media_root)) == 1
    assert http.delete(f"{http.base_url}/conversations/all").status_code == 204
    assert not stored_files(media_root)


def test_conversation_ask_offers_the_tools_when_turned_on_and_the_reply_carries_the_attachment(api, media, settings):
    cid = api.post("/conversations", {}, format="json").json()["id"]
    api.post(f"/conversations/{cid}/ask", {"prompt": "show me a picture of a cat"}, format="json")
    assert "tools" not in media.requests[-1]  # off by default: the conversation API is unchanged

    settings.CHATAPI_TOOLS_ON_CONVERSATIONS = True
    response = api.post(f"/conversations/{cid}/ask", {"prompt": "show me a picture of a dog"}, format="json")
    assert response.status_code == 201, response.content
    reply = response.json()["response"]
    attachment = Attachment.objects.get()
    assert reply["message"] == "[image: a dog]"
    url = f"/attachments/{attachment.pk}"
    assert reply["attachments"] == [
        {"id": str(attachment.pk), "content_type": "image/png", "size": len(tiny_png()), "url": url}
    ]
    # The next turn sends the model what the reply says it made.
    api.post(f"/conversations/{cid}/ask", {"prompt": "thanks"}, format="json")
    assert media.last_messages[-2] == {"role": "assistant", "content": "[image: a dog]"}


def test_a_streamed_ask_completes_with_the_attachment_and_its_deltas_are_the_stored_text(http, media, settings):
    settings.CHATAPI_TOOLS_ON_CONVERSATIONS = True
    response = http.post(
        f"{http.base_url}/conversations/new",
        json={"prompt": "Say out loud: good morning", "stream": True},
        stream=True,
        timeout=30,
    )
    events = [e for e in read_events(response) if isinstance(e, Event)]
    assert [e.event for e in events] == ["created", "delta", "completed"]
    completed = events[-1].data["response"]
    assert events[1].data["delta"] == completed["message"] == "good morning"
    assert [a["content_type"] for a in completed["attachments"]] == ["audio/mpeg"]


def test_attachments_are_kept_through_the_configured_storage_backend(complete, media, settings, media_root):
    # Django's setting_changed handler gives the storages (and default_storage) the new STORAGES.
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"}}
    response = complete("show me a picture of a cat")
    attachment = Attachment.objects.get()
    assert storages["default"].open(str(attachment.file.name)).read() == response.content == tiny_png()
    assert not stored_files(media_root)  # not on the file system


def test_a_file_the_storage_cannot_write_leaves_the_reply_stored_without_it(complete, media, settings, tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    settings.MEDIA_ROOT = str(blocked)  # every write under it fails
    response = complete("show me a picture of a cat")
    assert response.status_code == 503
    assert response.json() == {"error": "What the model made could not be stored; try again later."}
    reply = Message.objects.get(role="assistant")
    assert reply.status == "failed" and not Attachment.objects.exists()
    assert Message.objects.filter(role="user", content="show me a picture of a cat").exists()


def test_speech_is_cut_at_the_last_whole_sentence_else_at_a_word():
    assert speech_cut("Short enough.", 100) == ("Short enough.", False)
    assert speech_cut("One. Two! Three? Four.", 17) == ("One. Two! Three?", True)
    assert speech_cut('He said "stop." Then left.', 20) == ('He said "stop."', True)
    assert speech_cut("no sentence ends anywhere in this text", 20) == ("no sentence ends", True)
    assert speech_cut("x" * 30, 10) == ("x" * 10, True)
