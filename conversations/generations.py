"""Generations: a reply generated as a task of its own, not as part of the HTTP request that asked for it.

A generation starts from a stored prompt and a reply stored `in_progress` (services.reply_begin). It
runs as an asyncio task of the worker that started it, reads the backend's stream, and publishes
`created`, `delta`… and a last `completed` or `error` event to its event log (conversations.events:
Redis Streams with REDIS_URL, in the process without). Whoever streams the reply, the request that
started it or any later one through any worker, is a reader of that log. When it ends, however it
ends, the reply is stored with its text and status.

Every worker renews the lease of the replies it generates and stores their text so far; a reply whose
lease ran out belongs to a worker that died: any surviving worker, or the next to start, ends it
`interrupted` with the text it had (from the Redis log, else as last stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from asgiref.sync import AsyncToSync, ThreadSensitiveContext
from django.conf import settings
from django.db import transaction

from accounts.limits import Slot, slots_renew
from chatapi.db import db_work
from chatapi.errors import ApplicationError, BackendError, Conflict, NotFound, error_body
from chatapi.worker import on_worker_start, on_worker_stop
from conversations import llm, services, tools
from conversations.events import TERMINAL, Event, LogMissing, LogUnavailable, event_log
from conversations.models import Message
from conversations.serializers import MessageOutput, ReplyOutput
from conversations.services import ReplyJob

logger = logging.getLogger(__name__)

# How often a reader with nothing to read checks that the reply is still being generated somewhere.
READER_CHECK_SECONDS = 1.0
# Replies of dead workers ended per keeper tick, at most.
REAP_PER_TICK = 50


class InternalError(ApplicationError):
    status_code = 500
    type = "server_error"
    code = "internal_error"


class GenerationInterrupted(ApplicationError):
    status_code = 503
    type = "server_error"
    code = "generation_interrupted"


@dataclass(eq=False)
class Generation:
    job: ReplyJob
    text: list[str] = field(default_factory=list)
    # The stored reply when it ended (whatever its status), or the error a non-streamed answer gives.
    outcome: asyncio.Future[Message] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    stop_as: str | None = None  # "cancelled" or "interrupted" when stopped from outside
    last_seq: int = 1  # the id of the last event published (`created` is 1)
    task: asyncio.Task[None] | None = None
    slot: Slot | None = None  # counted toward its key's max_parallel until it ends

    @property
    def reply_id(self) -> str:
        return str(self.job.reply_id)

    finishing: bool = False  # the backend is done with: what is left is storing it, which nothing stops

    started: bool = False  # its task has begun (a task cancelled before that would never run its clean-up)

    # What the model's tool calls made (set before the event that says so is published): /api/complete
    # answers with the first of them instead of text.
    made: list[tools.Made] = field(default_factory=list)
    made_seq: int = 0  # the id of the event that says what was made

    def stop(self, ending: str) -> None:
        """Stop generating (the backend request is closed); the text so far is stored as `ending`."""
        if self.task is None or self.task.done() or self.finishing or self.stop_as is not None:
            return
        self.stop_as = ending
        if self.started:
            self.task.cancel()  # else it sees stop_as when it begins


# The generations this worker runs, by reply id.
_running: dict[str, Generation] = {}


def running(reply_id: object) -> Generation | None:
    return _running.get(str(reply_id))


def running_count() -> int:
    """How many generations this worker runs."""
    return len(_running)


async def generation_begin(
    prepare: Callable[[], ReplyJob],
    *,
    api_key_id: uuid.UUID | None,
    slot: Slot | None = None,
    offer_tools: bool = False,
) -> tuple[Generation, Message]:
    """Store the prompt (`prepare`, in the request's thread) and the reply in progress, and start generating
    it: the generation, and the reply as stored in progress. The generation holds `slot` (from
    accounts.limits.limit_admit) until it ends; if nothing starts, it is released here. With `offer_tools`
    the model is offered the configured image and speech tools (conversations.tools)."""

    def stored() -> tuple[ReplyJob, Message, dict[str, Any] | None]:
        # One transaction for the prompt and the reply in progress: the prompt is still stored before the
        # backend is called, and the conversation is locked once, not twice.
        with transaction.atomic():
            job = prepare()
            if offer_tools:
                services.reply_tools_offer(job=job)
            reply = services.reply_begin(job=job)
        return job, reply, MessageOutput(job.request).data if job.request_is_new else None

    async def begin() -> tuple[Generation, Message]:
        try:
            job, reply, request_data = await db_work(stored)()
            job.api_key_id = api_key_id
            return await generation_start(job, request_data=request_data, slot=slot), reply
        except BaseException:
            if slot is not None:
                await slot.release()
            raise

    # Shielded: a client that goes away while its prompt is being stored does not leave a reply stored
    # in progress that nothing generates.
    return await asyncio.shield(begin())


async def generation_start(
    job: ReplyJob, *, request_data: dict[str, Any] | None, slot: Slot | None = None
) -> Generation:
    """Start generating `job`'s reply (already stored in progress); its `created` event is in its log when
    this returns, so a reader can follow it at once."""
    generation = Generation(job, slot=slot)
    log = event_log()
    created = {
        "conversation_id": str(job.conversation.pk),
        "request": request_data,
        "response_id": generation.reply_id,
        "context_window": job.context_info,
    }
    await log.publish(generation.reply_id, "created", created)
    _running[generation.reply_id] = generation
    generation.task = asyncio.get_running_loop().create_task(_run_in_own_context(generation))
    _ensure_keeper()
    return generation


# Single-thread executors lent to generations, one to each while it runs (so that a generation's database work
# keeps to a thread of its own, as a request's does), and kept for the next: a thread started and stopped for each
# generation cost 0.3 ms of CPU more (0.57 against 0.25 ms for a generation's one hand-off, in one process).
_idle_executors: list[ThreadPoolExecutor] = []
IDLE_EXECUTORS_MAX = 64


@contextlib.asynccontextmanager
async def own_thread() -> AsyncIterator[None]:
    """A thread of its own for the database work of a task that outlives the request that started it: the
    request's thread context ends with the request. Under a synchronous caller (Django's test client runs
    an async view in async_to_sync) the caller's thread does the work, as it does the request's."""
    if _under_a_synchronous_caller():
        yield
        return
    try:
        executor = _idle_executors.pop()
    except IndexError:  # (checked by popping: loops in other threads, as in tests, take from it too)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatapi-generation")
    try:
        async with ThreadSensitiveContext(executor=executor):
            yield
    finally:
        if len(_idle_executors) < IDLE_EXECUTORS_MAX:
            _idle_executors.append(executor)
        else:
            executor.shutdown(wait=False)


def _under_a_synchronous_caller() -> bool:
    """Whether this loop runs for a synchronous caller (async_to_sync), which waits in its thread and does
    the thread-sensitive work there, rather than being the server's loop."""
    return getattr(AsyncToSync.executors, "current", None) is not None


async def _run_in_own_context(generation: Generation) -> None:
    generation.started = True
    try:
        async with own_thread():
            await _run(generation)
    finally:
        _running.pop(generation.reply_id, None)
        if generation.slot is not None:  # however it ended; a killed worker's slots expire with its leases
            await generation.slot.release()


async def _run(generation: Generation) -> None:
    job = generation.job
    log = event_log()
    rid = generation.reply_id
    ending = "stop"
    usage: llm.Usage | None = None
    model = job.model
    failure: ApplicationError | None = None
    made: list[tools.Made] = []
    try:
        if generation.stop_as is not None:  # stopped before it began
            raise asyncio.CancelledError
        calls: tuple[llm.ToolCall, ...] = ()
        async with aclosing(_pieces(job)) as pieces:
            async for item in pieces:
                if isinstance(item, llm.StreamChunk):
                    generation.text.append(item.delta)
                    generation.last_seq = (await log.publish(rid, "delta", {"id": rid, "delta": item.delta})).seq
                elif item.error is not None:
                    failure = job.backend_failed(item.error)
                    ending = "interrupted" if generation.text else "failed"
                else:
                    assert item.chunk is not None
                    ending = item.chunk.finish_reason or "stop"
                    usage, model = item.chunk.usage, item.chunk.model or job.model
                    calls = item.chunk.tool_calls
        if calls and job.tools_offered:  # else they are a /v1 client's own tools: not ours to run
            try:
                made = await tools.run(calls)
            except BackendError as exc:
                failure = job.backend_failed(exc)
                ending = "interrupted" if generation.text else "failed"
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()  # the text so far is stored below, whoever stopped it
        ending = generation.stop_as or "interrupted"
        if ending == "interrupted":
            failure = GenerationInterrupted(
                "The worker generating this reply stopped; the text generated so far is kept.",
                details={"message_id": str(job.request.pk), "conversation_id": str(job.conversation.pk)},
            )
    except Exception:  # a bug: the reply is still stored, and its readers told
        logger.exception("Generation %s failed", rid)
        ending = "interrupted" if generation.text else "failed"
        failure = InternalError("Internal server error.")
    generation.finishing = True
    await _finish(generation, ending=ending, usage=usage, model=model, failure=failure, made=made)


class AttachmentNotStored(ApplicationError):
    status_code = 503
    type = "server_error"
    code = "attachment_not_stored"


async def _finish(
    generation: Generation,
    *,
    ending: str,
    usage: llm.Usage | None,
    model: str,
    failure: ApplicationError | None,
    made: list[tools.Made],
) -> None:
    """Store the reply as it ended, with what its tools made, then publish its last event and settle its
    outcome. A file that cannot be written to storage leaves the reply stored without it."""
    job = generation.job
    rid = generation.reply_id
    attachments = []
    if made:
        try:
            attachments = await db_work(services.attachments_save)(job=job, made=made)
        except Exception:
            logger.exception("What the tools of generation %s made could not be written to storage", rid)
            failure = AttachmentNotStored(
                "What the model made could not be stored; try again later.", details={"message_id": str(job.request.pk)}
            )
            ending = "interrupted" if generation.text else "failed"
        else:
            # Said in the reply's text, as a delta like any other: the deltas joined are the stored text.
            note = tools.reply_note(made, after_text=bool(generation.text))
            generation.made = made
            generation.text.append(note)
            generation.made_seq = generation.last_seq + 1
            generation.last_seq = (await event_log().publish(rid, "delta", {"id": rid, "delta": note})).seq
    terminal_seq = generation.last_seq + 1
    try:
        reply = await db_work(services.reply_finish)(
            job=job,
            content="".join(generation.text),
            model=model,
            ending=ending,
            usage=usage,
            last_event_id=terminal_seq,
            attachments=attachments,
        )
    except (NotFound, Conflict) as exc:  # deleted meanwhile, or taken for dead and ended elsewhere
        failure, reply = exc, None
    except Exception:
        logger.exception("The reply of generation %s could not be stored", rid)
        failure, reply = InternalError("The reply could not be stored.", code="store_failed"), None
    # Its max_parallel slot is released before anyone can learn that it ended, so that a client that asks again
    # as soon as it has its answer is not refused for it; in Redis, by the flush that sends the last event.
    if generation.slot is not None:
        try:
            await generation.slot.release_along(event_log())
        except Exception:  # a bug: the reply is stored and its readers must still hear of it (the slot expires)
            logger.exception("The max_parallel slot of generation %s could not be released", rid)
    # The outcome is settled before the last event goes out: a reader that sees the event finds it.
    if failure is not None:
        generation.outcome.set_exception(failure)
        generation.outcome.exception()  # retrieved: a streamed reply has no one awaiting its outcome
        last: tuple[str, dict[str, Any]] = ("error", error_event(failure, rid))
    else:
        assert reply is not None
        generation.outcome.set_result(reply)
        try:
            last = ("completed", {"response": ReplyOutput(reply).data})
        except Exception:  # a bug: the reply is stored, and its readers are told something went wrong
            logger.exception("The last event of generation %s could not be made", rid)
            last = ("error", error_event(InternalError("Internal server error."), rid))
    await event_log().publish(rid, *last)


def error_event(exc: ApplicationError, reply_id: str) -> dict[str, Any]:
    return {**error_body(exc.message, type=exc.type, code=exc.code, details=exc.details), "id": reply_id}


@dataclass
class _End:
    """The backend is done: `chunk` is the final StreamChunk, or `error` the backend failure."""

    chunk: llm.StreamChunk | None = None
    error: BackendError | None = None


async def _pieces(job: ReplyJob) -> AsyncGenerator[llm.StreamChunk | _End, None]:
    """The backend's pieces for `job` as they arrive (across rounds, with autocontinue), then an _End."""
    context = job.context
    text: list[str] = []
    usage: llm.Usage | None = None
    rounds = 0
    try:
        while True:
            rounds += 1
            final: llm.StreamChunk | None = None
            async with aclosing(llm.stream(model=job.model, messages=context, params=job.params)) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason is None:
                        text.append(chunk.delta)
                        yield chunk
                    else:
                        final = chunk
            assert final is not None
            usage = _add_usage(usage, final.usage) if rounds > 1 else final.usage
            more = job.autocontinue and final.finish_reason == "length"
            if not more or rounds >= settings.CHATAPI_AUTOCONTINUE_MAX_ROUNDS:
                yield _End(chunk=replace(final, usage=usage))
                return
            # The partial reply goes back as the last assistant turn; the model carries on from it.
            context = [*job.context, {"role": "assistant", "content": "".join(text)}]
    except BackendError as exc:
        if rounds > 1 and text:  # a later round failed: what the earlier ones made is a reply cut at its limit
            yield _End(chunk=llm.StreamChunk(finish_reason="length", usage=usage, model=job.model))
        else:
            yield _End(error=exc)


def _add_usage(a: llm.Usage | None, b: llm.Usage | None) -> llm.Usage | None:
    if a is None or b is None:
        return None
    return llm.Usage(
        a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens, a.total_tokens + b.total_tokens
    )


async def generation_outcome(generation: Generation) -> Message:
    """The stored reply once the generation ends (its error, for a backend failure). A caller that is
    cancelled (its client went away) leaves the generation running, unless CHATAPI_STOP_ON_DISCONNECT."""
    try:
        return await asyncio.shield(generation.outcome)
    except asyncio.CancelledError:
        if settings.CHATAPI_STOP_ON_DISCONNECT:
            generation.stop("interrupted")
        raise


# --- reading ------------------------------------------------------------------------------------


async def reply_events(reply: Message, *, after: int = 0) -> AsyncGenerator[Event | None, None]:
    """The events of `reply`'s generation after `after`, following it live to its end, from any worker;
    None whenever nothing came for a while (the caller may send a keep-alive). A reply whose log is gone
    (it ended long ago) gives its last event, from the database."""
    rid = str(reply.pk)
    # Generated elsewhere, and just started, maybe: its first events reach Redis within a flush (20 ms).
    elsewhere = settings.REDIS_URL and reply.status == Message.Status.IN_PROGRESS and running(rid) is None
    seen = after  # the id of the last event given
    try:
        async with aclosing(_read(rid, after=after, wait=1.0 if elsewhere else 0.0)) as events:
            async for event in events:
                if event is None and running(rid) is None:
                    # Quiet, and not generated here: is it still being generated somewhere? Its worker may
                    # have died (or, here, its task ended without its last event: a bug).
                    current = await db_work(_reply_get)(reply.pk)
                    if current is None or current.status != Message.Status.IN_PROGRESS:
                        async for last in _from_database(current or reply, rid, seen):
                            yield last
                        return
                yield event
                if event is not None:
                    seen = event.seq
                    if event.name in TERMINAL:
                        return
    except LogMissing:
        current = await db_work(_reply_get)(reply.pk)
        async for last in _from_database(current or reply, rid, seen):
            yield last
    except LogUnavailable as exc:
        logger.warning("The event log of reply %s cannot be read: %s", rid, exc)
        error = ApplicationError(
            "The reply's event stream is unavailable; it is still stored when it ends.", code="event_log_unavailable"
        )
        error.status_code, error.type = 503, "server_error"
        yield Event(seq=seen + 1, name="error", data=error_event(error, rid))


async def _read(rid: str, *, after: int, wait: float) -> AsyncGenerator[Event | None, None]:
    """The event log's read of a generation, but a log that is missing at first is waited for, up to `wait`
    seconds. In the same read as the events themselves: a resumed stream's first event is one round trip to
    Redis away, not two."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        events = event_log().read(rid, after=after, heartbeat=READER_CHECK_SECONDS)
        try:
            first = await anext(events)
        except LogMissing:
            await events.aclose()
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        except StopAsyncIteration:
            return
        break
    async with aclosing(events):
        yield first
        async for event in events:
            yield event


def _reply_get(reply_id: uuid.UUID) -> Message | None:
    return Message.objects.prefetch_related("attachments").filter(pk=reply_id).first()


async def _from_database(reply: Message, rid: str, after: int) -> AsyncGenerator[Event, None]:
    """The last event of a reply whose log is gone, made from what is stored."""
    if reply.status == Message.Status.IN_PROGRESS:
        error = ApplicationError(
            "This reply is being generated by another worker, whose events cannot be read here (set REDIS_URL "
            "to follow a reply from any worker).",
            code="generation_elsewhere",
        )
        error.status_code, error.type = 409, "conflict_error"
        yield Event(seq=after + 1, name="error", data=error_event(error, rid))
        return
    seq = reply.last_event_id or after + 1
    if seq <= after:
        return
    if reply.status in (Message.Status.COMPLETED, Message.Status.CANCELLED):
        yield Event(seq=seq, name="completed", data={"response": ReplyOutput(reply).data})
        return
    if reply.status == Message.Status.FAILED:
        message, code = "The model backend failed before any text.", "backend_error"
    else:
        message, code = "The reply was interrupted; the text generated so far is kept.", "generation_interrupted"
    error = ApplicationError(message, code=code, details={"message_id": str(reply.parent_id)})
    error.type = "backend_error" if code == "backend_error" else "server_error"
    yield Event(seq=seq, name="error", data=error_event(error, rid))


# --- cancelling ---------------------------------------------------------------------------------

CANCEL_WAIT_SECONDS = 3.0


async def generation_cancel(reply: Message) -> None:
    """Stop a reply in progress from any worker; its text so far is stored as `cancelled`. Returns once
    it is stored: by the worker generating it, or here, when that worker does not answer (it died)."""
    rid = str(reply.pk)
    local = running(rid)
    if local is not None:
        local.stop("cancelled")
        with contextlib.suppress(Exception):
            await asyncio.shield(local.outcome)
        return
    try:
        await event_log().request_cancel(rid)
    except LogUnavailable:  # Redis is down: no worker can be told, so the reply ends here
        await db_work(services.reply_end_abandoned)(reply_id=reply.pk, ending="cancelled")
        return
    try:
        async with asyncio.timeout(CANCEL_WAIT_SECONDS):
            async with aclosing(reply_events(reply, after=0)) as events:
                async for event in events:
                    if event is not None and event.name in TERMINAL:
                        break
    except TimeoutError:
        pass
    # Ended by its worker (then this changes nothing), or no worker answered: it ends here.
    text, last_event_id = await _logged(rid)
    await db_work(services.reply_end_abandoned)(
        reply_id=reply.pk, ending="cancelled", content=text, last_event_id=last_event_id
    )


def _on_cancel(reply_id: str) -> None:
    generation = running(reply_id)
    if generation is not None:
        generation.stop("cancelled")


async def _logged(rid: str) -> tuple[str | None, int | None]:
    """The text of a generation as its log has it (for one whose worker is gone), and the id its last event
    gets; (None, None) if there is no log."""
    log = event_log()
    text: list[str] = []
    last = 0
    try:
        async with aclosing(log.read(rid, after=0, heartbeat=0.01)) as events:
            async for event in events:
                if event is None or event.name in TERMINAL:
                    break
                last = event.seq
                if event.name == "delta":
                    text.append(event.data.get("delta", ""))
    except (LogMissing, LogUnavailable):
        return None, None
    return "".join(text), last + 1


# --- the worker's keeper: leases, and replies whose worker died -----------------------------------

_keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def _ensure_keeper() -> None:
    if _under_a_synchronous_caller():
        return  # a loop that lives for one request (Django's test client): the server's own loop keeps
    loop = asyncio.get_running_loop()
    keeper = _keepers.get(loop)
    if keeper is None or keeper.done():
        event_log().on_cancel(_on_cancel)
        _keepers[loop] = loop.create_task(_keep())


@on_worker_start
async def generations_started() -> None:
    """At worker start: end the replies of workers that died, and keep doing so."""
    await _reap()
    _ensure_keeper()


def _keep_interval() -> float:
    # Leases run 2/3 of CHATAPI_GENERATION_LEASE_SECONDS past each renewal, and both renewals and the search
    # for expired ones come every third: a dead worker's replies are ended within the lease. The text so far
    # is stored at each renewal too, at least every 2 s: it is what GET …/messages shows while in progress,
    # and what is kept of a dead worker's reply when there is no Redis log to take it from.
    return min(2.0, settings.CHATAPI_GENERATION_LEASE_SECONDS / 3)


async def _keep() -> None:
    failing = False
    async with own_thread():
        while True:
            await asyncio.sleep(_keep_interval())
            try:
                if _running:
                    texts = {gen.job.reply_id: "".join(gen.text) for gen in list(_running.values())}
                    for reply_id in await db_work(services.replies_keep)(texts=texts):
                        _stop_ended_elsewhere(reply_id)
                await slots_renew()
                await _reap()
                if failing:
                    logger.warning("The generations' leases are kept again.")
                failing = False
            except Exception:  # a database outage: try again at the next tick (and say so once, not every tick)
                if not failing:
                    logger.exception("Keeping the generations' leases failed; trying again every tick")
                failing = True


def _stop_ended_elsewhere(reply_id: uuid.UUID) -> None:
    """A reply generated here that is no longer in progress in the database: a cancel that did not reach this
    worker (Redis was down, or its listener reconnecting) and that ended it elsewhere, or a deletion. Its
    generation stops, rather than spend the backend's tokens on a result that would not be stored."""
    generation = running(reply_id)
    if generation is not None and not generation.finishing:
        logger.warning("Reply %s ended elsewhere while it was generated here: its generation stops.", reply_id)
        generation.stop("cancelled")


async def _reap() -> None:
    # A bounded number a tick, so that renewing this worker's own leases never waits behind a long reaping.
    for reply_id in (await db_work(services.replies_expired)())[:REAP_PER_TICK]:
        if running(reply_id) is not None:
            continue  # ours, and alive (its lease renewal was late)
        text, last_event_id = await _logged(str(reply_id))
        ended = await db_work(services.reply_end_abandoned)(
            reply_id=reply_id, ending="interrupted", content=text, last_event_id=last_event_id
        )
        if ended:
            logger.warning("Reply %s was interrupted: the worker generating it stopped answering.", reply_id)


@on_worker_stop
async def generations_stop() -> None:
    """At worker stop: the replies still being generated are stored as interrupted, with their text."""
    keeper = _keepers.pop(asyncio.get_running_loop(), None)
    if keeper is not None:
        keeper.cancel()
    tasks = [generation.task for generation in list(_running.values()) if generation.task is not None]
    for generation in list(_running.values()):
        generation.stop("interrupted")
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    while _idle_executors:
        _idle_executors.pop().shutdown(wait=False)
    await event_log().close()
