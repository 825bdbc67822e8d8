"""Durable Streams on Redis, as the node's handlers call them: ``wire.durable``'s scripts, typed.

The scripts are registered once per node (their SHA computed once), and each reply is turned into
a value here, so the HTTP handlers never see Redis' reply shapes.

A fork is a copy: its inherited messages are copied, ids and all (so an offset means the same
message in both), into a staging key in the fork's own slot, which ``CREATE`` renames into place;
a stream and its fork may live on different shards. The source counts its forks, so deleting it
while they live leaves it gone (410) but kept until the last of them is deleted.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio import Redis, RedisCluster

from wire import durable
from wire.durable import DurableKeys

JSON = "application/json"
_COPY_PAGE: Final = 32
"""Messages copied per round trip when forking (each at most STREAMFAN_DURABLE_MAX_BODY_BYTES)."""
_STAGING_MS: Final = 60_000
"""How long a fork's half-copied messages outlive a node that died copying them."""


class StreamGone(Exception):
    """The stream was deleted while forks of it lived: a 410 until the last of them goes."""


class ForkRefused(Exception):
    """The fork cannot be made: ``reason`` is ``FORK_SOURCE``'s (missing, gone, type, beyond, sub)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    public: bool
    """Anyone may read it (created with ``Stream-Public: true``)."""
    messages: list[bytes]
    frames: dict[Any, bytes] = field(default_factory=dict, compare=False, repr=False)
    """The read as sent, per way of sending it: readers sharing the read share its bytes too."""

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
    public: bool


@dataclass(frozen=True, slots=True)
class Created:
    status: str
    """``created``, ``exists`` (the same request again) or ``conflict``."""
    kind: str = ""
    tail: str = ""
    closed: bool = False


@dataclass(frozen=True, slots=True)
class Fork:
    """A fork's request: the stream forked, where, and what the fork asked for of its own."""

    source: str
    """The path forked."""
    at: str
    """The entry id forked at ('' the tail)."""
    sub_offset: int
    kind: str
    """The fork's content type ('' the source's)."""
    ttl: str
    expires_at: str

    @property
    def origin(self) -> str:
        """The request as stored with the fork: a repeat of it is idempotent, any other a conflict."""
        return "\n".join((self.source, self.at, str(self.sub_offset), self.kind, self.ttl, self.expires_at))


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

    __slots__ = ("_append", "_create", "_delete", "_fork_source", "_meta", "_read", "_redis", "_release")

    def __init__(self, redis: "Redis | RedisCluster") -> None:
        self._redis = redis
        self._create = redis.register_script(durable.CREATE)
        self._fork_source = redis.register_script(durable.FORK_SOURCE)
        self._release = redis.register_script(durable.RELEASE)
        self._append = redis.register_script(durable.APPEND)
        self._read = redis.register_script(durable.READ)
        self._meta = redis.register_script(durable.META)
        self._delete = redis.register_script(durable.DELETE)

    async def create(
        self,
        keys: DurableKeys,
        kind: str,
        expiry: tuple[str, str, str],
        messages: list[bytes],
        *,
        closed: bool = False,
        public: bool = False,
    ) -> Created:
        """``expiry`` is ``(Stream-TTL, Stream-Expires-At, ms from now)``, '' where not given."""
        return await self._make(keys, keys.staging("none"), kind, expiry, messages, (closed, public), None)

    async def _make(
        self,
        keys: DurableKeys,
        staging: str,
        kind: str,
        expiry: tuple[str, str, str],
        messages: list[bytes],
        flags: tuple[bool, bool],
        fork: Fork | None,
    ) -> Created:
        ttl, expires_at, expiry_ms = expiry
        closed, public = ("1" if flag else "" for flag in flags)
        origin = (fork.origin, fork.source) if fork else ("", "")
        args: list[str | bytes] = [kind, ttl, expires_at, expiry_ms, closed, *origin, public, *messages]
        reply = await self._create(keys=[*keys.all, staging], args=args)
        status = _text(reply[0])
        if status == "conflict":
            return Created(status)
        return Created(status, kind, _text(reply[1]), _text(reply[2]) == "1")

    async def fork(
        self,
        keys: DurableKeys,
        fork: Fork,
        expiry: tuple[str, str, str],
        messages: Callable[[str], list[bytes]],
        *,
        closed: bool = False,
        public: bool = False,
    ) -> Created:
        """Create ``keys`` as a fork: as ``create``, but first with the source's messages up to
        the fork's offset (the last of them cut at its sub-offset); ``messages`` makes the initial
        messages once the content type is known. Raises ``ForkRefused``."""
        source = DurableKeys(fork.source)
        reply = [
            _bytes(part)
            for part in await self._fork_source(keys=list(source.all), args=[fork.kind, fork.at, fork.sub_offset])
        ]
        if reply[0] != b"ok":
            raise ForkRefused(reply[0].decode())
        kind, ttl, expires_at, left_ms, upto, cut_id, cut = reply[1:]
        made = False
        staging = keys.staging(secrets.token_hex(8))
        try:
            await self._copy(source, staging, upto.decode(), (cut_id.decode(), cut))
            if not any(expiry):  # the fork inherits the source's TTL or expiry
                inherited_ms = str(int(ttl) * 1000) if ttl else (left_ms.decode() if int(left_ms) > 0 else "")
                expiry = (ttl.decode(), expires_at.decode(), inherited_ms)
            initial = messages(kind.decode())
            result = await self._make(keys, staging, kind.decode(), expiry, initial, (closed, public), fork)
            made = result.status == "created"
            return result
        finally:
            if not made:  # a repeat, a conflict or a failure: the source has one fork fewer
                await self.release(source)

    async def _copy(self, source: DurableKeys, staging: str, upto: str, cut: tuple[str, bytes]) -> None:
        """The source's messages up to entry ``upto`` into ``staging``, ids kept, then the cut one."""
        after = "-"
        while upto != "0-0":
            page = await self._redis.xrange(source.log, min=after, max=upto, count=_COPY_PAGE)
            if not page:
                raise ForkRefused("missing")  # expired while copied
            pipe = self._redis.pipeline(transaction=False)
            for entry_id, fields in page:  # the node's client answers bytes (no decode_responses)
                pipe.xadd(staging, {b"d": fields[b"d"]}, id=entry_id)  # type: ignore[index, arg-type]
            pipe.pexpire(staging, _STAGING_MS)
            await pipe.execute()
            last = _text(page[-1][0])
            if last == upto:
                break
            after = "(" + last
        cut_id, data = cut
        if cut_id:
            await self._redis.xadd(staging, {b"d": data}, id=cut_id)
            await self._redis.pexpire(staging, _STAGING_MS)

    async def release(self, source: DurableKeys) -> None:
        """One fork of ``source`` fewer; a deleted source with none left goes, and so on up its line."""
        while True:
            reply = await self._release(keys=list(source.all))
            if _text(reply[0]) != "collected" or not _text(reply[1]):
                return
            source = DurableKeys(_text(reply[1]))

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
        if status == "gone":
            raise StreamGone
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
        if reply == 410:
            raise StreamGone
        kind, _first, tail, last, closed, public = (_text(part) for part in reply[:6])
        return StreamRead(kind, tail, last, closed == "1", public == "1", [_bytes(m) for m in reply[6:]])

    async def meta(self, keys: DurableKeys) -> StreamMeta | None:
        reply = await self._meta(keys=list(keys.all))
        if reply is None:
            return None
        if reply == 410:
            raise StreamGone
        kind, tail, ttl, expires_at, left_ms, closed, public = (_text(part) for part in reply)
        return StreamMeta(kind, tail, ttl, expires_at, int(left_ms), closed == "1", public == "1")

    async def delete(self, keys: DurableKeys) -> bool:
        """False when there is no such stream; a stream with forks alive is kept for them (gone)."""
        status, *rest = [_text(part) for part in await self._delete(keys=list(keys.all))]
        if status == "gone":
            raise StreamGone
        if status == "deleted" and rest[0]:
            await self.release(DurableKeys(rest[0]))  # a fork gone: its source has one fewer
        return status != "missing"
