"""The node's Redis operations on conversations: post, cancel, snapshot and history replay.

Longer than 300 lines: each operation is a few lines over its script, with the result types the
handlers match on; splitting them would part each call from what it returns.
"""

import asyncio
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from redisio.pipe import Script, pipe_for
from server.errors import JSONError
from wire import scripts
from wire.env import Retention
from wire.events import (
    START_ID,
    EventId,
    EventType,
    FinishReason,
    Job,
    Message,
    Phase,
    ResetReason,
    done_data,
    dumps,
    format_event_id,
    parse_event_id,
    reset_data,
    user_message_data,
    user_message_record,
)
from wire.keys import ConversationKeys, SessionKeys
from wire.sse import encode_event, frame_from_entry


def new_id() -> str:
    """Unguessable, URL- and SSE-safe identifier."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class Posted:
    message_id: str
    response_id: str
    event_id: str
    repeated: bool = False
    """The same idempotency key was posted before: this is that post's reply."""


class IdempotencyKeyReused(Exception):
    """A post's idempotency key was used before for another message: refused (422), since answering
    with the first post's reply would lose this message without a word."""


@dataclass(frozen=True, slots=True)
class Overloaded:
    """Too many answers wait for a producer: try again later (503)."""


@dataclass(frozen=True, slots=True)
class Busy:
    """An answer is still generating: a new message must wait (409)."""

    response_id: str


def refusal(result: "Busy | Overloaded") -> JSONError:
    """What a refused post or regenerate answers, the same at every door that speaks the native errors."""
    if isinstance(result, Busy):
        return JSONError(409, "an answer is still generating", code="busy", response_id=result.response_id)
    return JSONError(
        503,
        "too many answers are waiting for a model; try again shortly",
        code="overloaded",
        headers={"Retry-After": "5"},
    )


@dataclass(frozen=True, slots=True)
class Page:
    """History after a cursor: ``frames`` as (event id, SSE frame), oldest first."""

    frames: list[tuple[EventId, bytes]]
    more: bool = False
    """The byte bound cut this page short: more history follows it."""
    head: EventId = (0, 0)
    """The newest event's id when the page was read."""


@dataclass(frozen=True, slots=True)
class Reset:
    """The cursor cannot be honoured; the client must reload the snapshot. ``head`` is the newest id."""

    reason: ResetReason
    head: EventId

    def frame(self) -> bytes:
        """The ``reset`` event, with the head's id: the cursor to continue from after reloading."""
        return encode_event(format_event_id(self.head), EventType.RESET, reset_data(self.reason))


async def _once_more(call: Callable[[], Awaitable[Any]]) -> Any:
    """A read sent again once if its connection was lost (Redis closed it, say, while idle), as
    redis-py's pool does for its own connections: Redis up means no 503."""
    try:
        return await call()
    except RedisConnectionError:
        return await call()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_REPLAY = Script(scripts.REPLAY)
MESSAGES_PAGE = 200
"""Messages in a history page unless the request asks for fewer: the history API's and a snapshot's."""


class ConversationStore:
    def __init__(
        self, redis: "Redis | RedisCluster", retention: Retention, *, replay_page_bytes: int = 128 * 1024
    ) -> None:
        self._redis = redis
        self._retention = retention
        self._replay_page_bytes = replay_page_bytes
        """Most event data one replay page holds (at least one event): what a replaying client pins."""
        self._pipe = pipe_for(redis)
        """The two reads of every new stream (the token's generation, the history replay) go
        pipelined on one connection where Redis is standalone (docs/measurements.md, pipe)."""
        self._post = redis.register_script(scripts.POST_MESSAGE)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._replay = redis.register_script(scripts.REPLAY)
        self._snapshot = redis.register_script(scripts.SNAPSHOT)
        self._delete = redis.register_script(scripts.DELETE)
        self._regenerate = redis.register_script(scripts.REGENERATE)

    def _argv(self, keys: ConversationKeys, *rest: str | int) -> list[str | int]:
        r = self._retention
        return scripts.conversation_argv(keys.channel, r.max_events, r.ttl_seconds, *rest)

    async def post_message(
        self, conversation_id: str, content: str, max_tokens: int, idempotency_key: str
    ) -> Posted | Busy | Overloaded:
        """Post a user message and queue its answer; a repeated ``idempotency_key`` gets the first reply
        (or ``IdempotencyKeyReused`` when it came with another message)."""
        keys = ConversationKeys(conversation_id)
        message_id, response_id = new_id(), new_id()
        job = Job(conversation_id, response_id, message_id, content, max_tokens)
        job_fields = [item for pair in job.to_fields().items() for item in pair]
        status, value = await self._post(
            keys=[*keys.all, keys.jobs],
            args=self._argv(
                keys,
                response_id,
                user_message_record(message_id, content),
                user_message_data(message_id, content, response_id),
                self._retention.jobs_per_partition,
                idempotency_key,
                message_id,
                self._retention.max_messages,
                hashlib.sha256(f"{max_tokens}:{content}".encode()).hexdigest()[:32],
                *job_fields,
            ),
        )
        if status == 0:
            return Busy(_text(value))
        if status == -1:
            return Overloaded()
        if status == 3:
            raise IdempotencyKeyReused(idempotency_key)
        reply = json.loads(value)
        return Posted(reply["message_id"], reply["response_id"], reply["event_id"], repeated=status == 2)

    async def regenerate(
        self, conversation_id: str, replaces: str, max_tokens: int
    ) -> Posted | Busy | Overloaded | None:
        """A new version of the last answer (``None``: ``replaces`` is not the last answer)."""
        keys = ConversationKeys(conversation_id)
        response_id = new_id()
        status, value = await self._regenerate(
            keys=[*keys.all, keys.jobs],
            args=self._argv(
                keys, response_id, replaces, self._retention.jobs_per_partition, conversation_id, max_tokens
            ),
        )
        if status == 0:
            return Busy(_text(value))
        if status == -1:
            return Overloaded()
        if status == -2:
            return None
        return Posted("", response_id, _text(value))

    async def active_response(self, conversation_id: str) -> str | None:
        value = await self._redis.hget(ConversationKeys(conversation_id).state, "active")
        return None if value is None else _text(value)

    async def cancel(self, conversation_id: str, response_id: str) -> str:
        """'cancelled', 'requested' (the producer finishes it) or 'gone' (not the active answer)."""
        keys = ConversationKeys(conversation_id)
        result = await self._cancel(
            keys=list(keys.all),
            args=self._argv(keys, response_id, done_data(response_id, FinishReason.CANCELLED)),
        )
        return _text(result)

    async def replay(self, conversation_id: str, cursor: str, count: int) -> Page | Reset:
        """At most ``count`` events after ``cursor`` (``START_ID``: from the start)."""
        keys = ConversationKeys(conversation_id)
        if self._pipe is None:
            args: list[str | int] = [cursor, count, self._replay_page_bytes]
            status, head, body = await self._replay(keys=[keys.state, keys.events], args=args)
        else:
            pipe = self._pipe
            status, head, body = await _once_more(
                lambda: pipe.script(_REPLAY, [keys.state, keys.events], [cursor, count, self._replay_page_bytes])
            )
        if status == b"reset":
            return Reset(ResetReason(_text(body)), parse_event_id(_text(head)))
        frames = []
        for event_id, fields in body:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            frames.append((parse_event_id(event_id.decode()), frame_from_entry(event_id, values[b"t"], values[b"d"])))
        return Page(frames, more=status == b"more", head=parse_event_id(_text(head)))

    async def snapshot(self, conversation_id: str, limit: int, before: int | None = None) -> dict[str, Any]:
        """The history API's body: at most ``limit`` finished messages ending before position
        ``before`` (the newest by default), the answer in progress, and the last event id."""
        keys = ConversationKeys(conversation_id)
        stored, active, phase, draft, head, first, total, _ = await self._snapshot(
            keys=list(keys.all), args=[limit, "" if before is None else before]
        )
        messages: list[Message] = [json.loads(m) for m in stored]
        if active is not None and before is None:
            messages.append(
                Message(
                    id=_text(active),
                    role="assistant",
                    content=_text(draft or b""),
                    status=_text(phase or Phase.QUEUED.value),
                )
            )
        return {
            "id": conversation_id,
            "messages": messages,
            "first_position": int(first),
            "total_messages": int(total),
            "last_event_id": _text(head) if head else START_ID,
            "active_response_id": _text(active) if active is not None else None,
        }

    async def mark_watched(self, conversation_ids: list[str], ttl_ms: int) -> None:
        """Say these conversations have clients here, for ``ttl_ms`` (see ``ConversationKeys.watched``)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for conversation_id in conversation_ids:
                pipe.set(ConversationKeys(conversation_id).watched, b"1", px=ttl_ms)
            await pipe.execute()

    async def wait_idle(self, conversation_id: str, poll_seconds: float = 0.1) -> None:
        """Until the conversation has no answer in progress (the OpenAI dialects' whole answers).

        Polls the state: a client that takes its answer whole needs no subscription.
        """
        key = ConversationKeys(conversation_id).state
        while await self._redis.hexists(key, "active"):  # noqa: ASYNC110 - polling Redis, not a local flag
            await asyncio.sleep(poll_seconds)

    async def generation(self, conversation_id: str) -> int:
        """The conversation's token generation: tokens of an older one are revoked."""
        state = ConversationKeys(conversation_id).state
        if self._pipe is None:
            value = await self._redis.hget(state, "gen")
        else:
            pipe = self._pipe
            value = await _once_more(lambda: pipe.command(b"HGET", state, b"gen"))
        return int(value) if value is not None else 0

    async def aclose(self) -> None:
        if self._pipe is not None:
            await self._pipe.aclose()

    async def delete(self, conversation_id: str, tombstone_seconds: int) -> int:
        """Delete the conversation and revoke its tokens; returns the new generation."""
        return int(await self._delete(keys=list(ConversationKeys(conversation_id).all), args=[tombstone_seconds]))

    async def seed(self, conversation_id: str, messages: list[dict[str, str]]) -> None:
        """Store earlier messages of a conversation that arrives whole (the OpenAI dialects)."""
        if not messages:
            return
        key = ConversationKeys(conversation_id).messages
        records = [
            dumps({"id": new_id(), "role": m["role"], "content": m["content"], "status": "complete"}) for m in messages
        ]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *records)
            pipe.ltrim(key, -self._retention.max_messages, -1)
            pipe.expire(key, self._retention.ttl_seconds)
            await pipe.execute()

    async def join_session(self, session_id: str, conversation_id: str, generation: int, ttl_seconds: int) -> None:
        """Let ``session_id`` read the conversation (it proved a token of this generation)."""
        key = SessionKeys(session_id).conversations
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, f"{conversation_id}:{generation}")
            pipe.expire(key, ttl_seconds)
            await pipe.execute()

    async def session_allows(self, session_id: str, conversation_ids: list[str]) -> list[bool]:
        """For each conversation: may the session read it (joined, at its current generation)?"""
        async with self._redis.pipeline(transaction=False) as pipe:
            for conversation_id in conversation_ids:
                pipe.hget(ConversationKeys(conversation_id).state, "gen")
            generations = await pipe.execute()
        members = [f"{cid}:{int(gen or 0)}" for cid, gen in zip(conversation_ids, generations, strict=True)]
        found = await self._redis.smismember(SessionKeys(session_id).conversations, members)
        return [bool(flag) for flag in found]

    async def ping(self) -> None:
        await self._redis.ping()
