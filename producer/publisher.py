"""The producer's publish path: an answer is claimed, its chunks appended and published, and it
is finished, each by one script.

Chunks go out through ``producer.chunk_sender`` (many answers' chunks per ``DELTAS`` call). Every
call is idempotent (deltas carry their index, finishing checks the active answer), so a call whose
reply was lost to a Redis hiccup is simply retried: nothing is doubled, nothing skipped.
"""

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producer.chunk_sender import ChunkSender
from redisio.calls import script_calls_for
from redisio.pipe import Script
from support.backoff import Backoff
from wire import deltas, scripts
from wire.env import Retention
from wire.events import FinishReason, assistant_status, delta_text, done_data, dumps, valid_unicode
from wire.keys import ConversationKeys

log = logging.getLogger(__name__)

T = TypeVar("T")

_NAMES_CACHED = 10_000

TRANSIENT = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, OSError)
"""Errors that pass: Redis restarting, a cluster shard failing over or a slot migrating."""


class Appended(Enum):
    OK = 1
    DUPLICATE = 0
    NOT_OURS = -1
    CANCEL_REQUESTED = -2
    BEHIND = -3
    """Earlier deltas are missing (Redis lost acknowledged writes in a failover): send them again."""
    REFUSED = -4
    """The text holds a CR (``delta_text`` removes them, so never from this publisher)."""


OUTCOMES = {outcome.value: outcome for outcome in Appended}
"""A reply code's outcome, per chunk without ``Enum.__call__``'s cost."""


@dataclass(frozen=True, slots=True)
class Claim:
    status: str
    """'ok', 'resume', 'gone', 'cancelled' or 'taken' (see ``wire.scripts.START``)."""
    next_index: int
    """The next index: how many of the generator's chunks (tokens) the answer already holds,
    whatever deltas carried them."""


_START, _FINISH = Script(scripts.START), Script(scripts.FINISH)
_ANSWER_TEXT = Script(scripts.ANSWER_TEXT)


class Publisher:
    def __init__(
        self, redis: "Redis | RedisCluster", retention: Retention, *, retry_seconds: float, send_interval: float = 0.0
    ) -> None:
        """``send_interval``: the shortest time between two sends of chunks (seconds; see
        ``ProducerSettings.publish_interval_ms``)."""
        self._redis = redis
        self._retention = retention
        self._retry_seconds = retry_seconds
        # Claims and finishes go the chunks' way: every answer starts and ends with one.
        self._calls = script_calls_for(redis)
        self._conversations: dict[str, ConversationKeys] = {}
        """Each conversation's names, made once per answer rather than per chunk."""
        self._sender = ChunkSender(
            self._calls, retention, by_slot=isinstance(redis, RedisCluster), send_interval=send_interval
        )

    def _call(self, conversation_id: str, *args: str | int) -> tuple[list[str], list[str | int]]:
        keys = self._keys(conversation_id)
        r = self._retention
        return list(keys.all), scripts.conversation_argv(keys.channel, r.max_events, r.ttl_seconds, *args)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self._retry_seconds
        backoff = Backoff(first=0.05, cap=1.0)
        while True:
            try:
                return await call()
            except TRANSIENT as exc:
                delay = backoff.next_delay()
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("publishing failed (%r); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    async def claim(self, conversation_id: str, response_id: str, owner: str, *, recovered: bool) -> Claim:
        """Make ``owner`` the answer's producer (see ``wire.scripts.START``); safe to retry."""
        keys, argv = self._call(
            conversation_id,
            response_id,
            owner,
            done_data(response_id, FinishReason.CANCELLED),
            "1" if recovered else "0",
        )
        status, next_index = await self._retrying(lambda: self._calls.script(_START, keys, argv))
        self._sender.touched(conversation_id)  # START refreshed the TTLs
        return Claim(status.decode() if isinstance(status, bytes) else str(status), int(next_index))

    async def start(self, conversation_id: str, response_id: str, owner: str) -> str:
        """'ok', 'gone', 'cancelled' (finished as cancelled) or 'taken': ``claim`` for a fresh job."""
        return (await self.claim(conversation_id, response_id, owner, recovered=False)).status

    def _keys(self, conversation_id: str) -> ConversationKeys:
        keys = self._conversations.get(conversation_id)
        if keys is None:
            if len(self._conversations) >= _NAMES_CACHED:
                self._conversations.clear()
            keys = self._conversations[conversation_id] = ConversationKeys(conversation_id)
        return keys

    def delta_queue(
        self, conversation_id: str, response_id: str, owner: str
    ) -> "Callable[[int, str, int], asyncio.Future[Any]]":
        """Queue the answer's deltas: ``(index, text, tokens)`` (``tokens`` of the model's tokens
        from ``index`` on; the text as ``wire.events.delta_text`` gives it) to the delta's reply
        future, without waiting (the writer reads the model on meanwhile). Made once per answer, so
        a token costs one call (``producer.delta_outbox``)."""
        keys = self._keys(conversation_id)
        return functools.partial(self._sender.queue, keys, keys.fence(response_id, owner))

    async def delta(
        self, conversation_id: str, response_id: str, owner: str, index: int, text: str, tokens: int = 1
    ) -> Appended:
        """Append and publish one delta (``tokens`` of the model's tokens from ``index`` on),
        retrying while Redis is away."""
        keys, text = self._keys(conversation_id), delta_text(text)
        fence = keys.fence(response_id, owner)
        result = await self._retrying(lambda: self._sender.queue(keys, fence, index, text, tokens))
        return OUTCOMES[int(result[0])]

    async def finish(
        self,
        conversation_id: str,
        response_id: str,
        owner: str,
        reason: FinishReason,
        error: str = "",
        *,
        usage: Mapping[str, int | None] | None = None,
    ) -> bool:
        """Store the answer (with the model's ``usage``) and publish ``done``; ``owner=''``
        finishes an abandoned answer."""
        error = valid_unicode(error)  # it may quote the model server
        keys, argv = self._call(
            conversation_id,
            response_id,
            owner,
            str(reason),
            assistant_status(reason),
            done_data(response_id, reason, error),
            error,
            self._retention.max_messages,
            dumps(usage) if usage else "",
        )
        result = await self._retrying(lambda: self._calls.script(_FINISH, keys, argv))
        self._sender.forget(conversation_id)
        return result is not None

    async def aclose(self) -> None:
        """Give up the connection (calls still waiting fail as if Redis were gone)."""
        await self._calls.aclose()

    async def next_index(self, conversation_id: str, response_id: str, owner: str) -> int:
        """The index ``owner``'s next delta of the answer must have (how many Redis holds)."""
        fence = self._keys(conversation_id).fence(response_id, owner)
        value = await self._retrying(lambda: self._redis.get(fence))
        return abs(int(value)) - deltas.FENCE_BASE if value else 0

    async def history(self, conversation_id: str) -> list[dict[str, str]]:
        """The conversation's finished messages as ``role``/``content``, oldest first (the model's
        input); answers that failed or were cancelled with no text are left out."""
        key = ConversationKeys(conversation_id).messages
        stored = await self._retrying(lambda: self._redis.lrange(key, 0, -1))
        history = []
        for raw in stored:
            message = json.loads(raw)
            if message.get("content"):
                history.append({"role": message["role"], "content": message["content"]})
        return history

    async def watched(self, conversation_id: str) -> bool:
        """Does any node have a client of the conversation (recently)?"""
        key = ConversationKeys(conversation_id).watched
        return bool(await self._retrying(lambda: self._redis.exists(key)))

    async def draft(self, conversation_id: str) -> str:
        """The text of the answer in progress (what a producer taking it over continues from)."""
        keys = ConversationKeys(conversation_id)
        value = await self._retrying(lambda: self._calls.script(_ANSWER_TEXT, [keys.state, keys.events], []))
        return value.decode() if isinstance(value, bytes) else ""
