"""Durable Streams on Redis, as the node's handlers call them: ``wire.durable``'s scripts, typed.

The scripts are registered once per node (their SHA computed once), and each reply is turned into
a value here, so the HTTP handlers never see Redis' reply shapes.
"""

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster

from wire import durable
from wire.durable import DurableKeys

JSON = "application/json"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass(frozen=True, slots=True)
class StreamRead:
    """One read of a stream: its content type, tail, where the read ended and what it got."""

    kind: str
    tail: str
    last: str
    """The entry id the read ended at: the next read starts after it."""
    closed: bool
    messages: list[bytes]

    @property
    def up_to_date(self) -> bool:
        return self.last == self.tail

    @property
    def ended(self) -> bool:
        """At the tail of a closed stream: nothing will ever follow."""
        return self.closed and self.up_to_date

    def body(self) -> bytes:
        """The messages as a response body: a JSON stream's as one array, any other's concatenated."""
        return b"[" + b",".join(self.messages) + b"]" if self.kind == JSON else b"".join(self.messages)


@dataclass(frozen=True, slots=True)
class StreamMeta:
    kind: str
    tail: str
    ttl: str
    """``Stream-TTL`` as created ('' none)."""
    expires_at: str
    """``Stream-Expires-At`` as created ('' none)."""
    left_ms: int
    """Milliseconds before the stream expires (-1: never)."""
    closed: bool


@dataclass(frozen=True, slots=True)
class Appended:
    """What ``append`` answered: ``status`` is one of ``APPEND``'s outcomes (see ``wire.durable``)."""

    status: str
    tail: str = ""
    closed: bool = False
    detail: str = ""
    """The last epoch (``stale``), the expected sequence (``gap``), the last sequence (``duplicate``)
    or the last Stream-Seq (``seq``)."""


class DurableStore:
    """Create, append to, read, describe and delete Durable Streams (one script call each)."""

    __slots__ = ("_append", "_create", "_delete", "_meta", "_read")

    def __init__(self, redis: "Redis | RedisCluster") -> None:
        self._create = redis.register_script(durable.CREATE)
        self._append = redis.register_script(durable.APPEND)
        self._read = redis.register_script(durable.READ)
        self._meta = redis.register_script(durable.META)
        self._delete = redis.register_script(durable.DELETE)

    async def create(
        self, keys: DurableKeys, kind: str, expiry: tuple[str, str, str], closed: bool, messages: list[bytes]
    ) -> tuple[str, str, bool]:
        """``('created' | 'exists' | 'conflict', tail id, closed)``; ``expiry`` is
        ``(Stream-TTL, Stream-Expires-At, ms from now)``, '' where not given."""
        ttl, expires_at, expiry_ms = expiry
        args = [kind, ttl, expires_at, expiry_ms, "1" if closed else "", *messages]
        reply = await self._create(keys=list(keys.all), args=args)
        status = _text(reply[0])
        if status == "conflict":
            return status, "", False
        return status, _text(reply[1]), _text(reply[2]) == "1"

    async def append(
        self,
        keys: DurableKeys,
        kind: str,
        messages: list[bytes],
        *,
        stream_seq: str = "",
        producer: tuple[str, int, int] | None = None,
        close: bool = False,
    ) -> Appended:
        producer_id, epoch, seq = producer or ("", 0, 0)
        args = [kind, stream_seq, producer_id, epoch, seq, "1" if close else "", *messages]
        reply = [_text(part) for part in await self._append(keys=list(keys.all), args=args)]
        status = reply[0]
        if status == "appended":
            return Appended(status, reply[1], reply[2] == "1")
        if status == "duplicate":
            return Appended(status, reply[1], reply[3] == "1", detail=reply[2])
        if status == "closed":
            return Appended(status, reply[1], True)
        return Appended(status, detail=reply[1] if len(reply) > 1 else "")

    async def read(self, keys: DurableKeys, after: str, budget: int) -> StreamRead | None:
        """Messages after entry id ``after`` (``'0-0'`` the start, ``'+'`` the tail: none), up to
        ``budget`` bytes but at least one; None when there is no such stream."""
        reply = await self._read(keys=list(keys.all), args=[after, budget])
        if reply is None:
            return None
        kind, _first, tail, last, closed = (_text(part) for part in reply[:5])
        return StreamRead(kind, tail, last, closed == "1", [_bytes(m) for m in reply[5:]])

    async def meta(self, keys: DurableKeys) -> StreamMeta | None:
        reply = await self._meta(keys=list(keys.all))
        if reply is None:
            return None
        kind, tail, ttl, expires_at, left_ms, closed = (_text(part) for part in reply)
        return StreamMeta(kind, tail, ttl, expires_at, int(left_ms), closed == "1")

    async def delete(self, keys: DurableKeys) -> bool:
        return bool(await self._delete(keys=list(keys.all)))
