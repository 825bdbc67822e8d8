"""One Redis sharded pub/sub connection (to a standalone Redis, or one cluster shard's primary).

It connects, reads, reconnects with jittered backoff and watches for silence; what the messages mean
is the sink's business (``PubSubSink``), and which shard serves which channel is ``server.shards``'.

Longer than 300 lines: connecting, subscribing, reading in batches and the watchdog are one state
machine over one connection's private state; split, the halves would share all of it.

Invariants (this class owns them):
- ``generation`` is drawn from a counter shared by all of the node's connections for every new
  connection; every callback names the generation it belongs to, so work started for an older
  connection can tell it is stale.
- ``confirmed`` holds the channels Redis confirmed on the current connection; it is emptied the
  moment the connection is lost, and loses a channel Redis unsubscribed by itself (its slot moved).
- Replies are matched to requests in order (Redis answers in order): each SSUBSCRIBE/SUNSUBSCRIBE
  waits for one confirmation per channel, an error reply (MOVED, CROSSSLOT) fails the oldest
  request, and a SUNSUBSCRIBE nobody asked for is a slot that moved away (``on_moved``).
"""

import asyncio
import contextlib
import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError

from redisio.pipe import native
from support.backoff import Backoff

log = logging.getLogger(__name__)

_HEALTH_INTERVAL = 5.0
"""Seconds between the watchdog's looks at a connection."""
_PING_AFTER_SILENT = 1
"""Health intervals with nothing received before the watchdog sends a PING (its reply counts)."""
_DROP_AFTER_SILENT = 3
"""Health intervals with nothing received, PINGs included, before the connection is dropped."""

SUBSCRIBE = b"ssubscribe"
UNSUBSCRIBE = b"sunsubscribe"


class PubSubUnavailable(Exception):
    """A subscription could not be confirmed in time (Redis unreachable)."""


class PubSubSink(Protocol):
    def wanted_channels(self) -> list[bytes]:
        """The channels to subscribe on a new connection (this shard's share)."""
        ...

    def on_connected(self, channels: list[bytes], generation: int) -> None:
        """A new connection is up; its SSUBSCRIBE for ``channels`` follows at once."""
        ...

    def on_subscribed(self, channel: bytes, generation: int) -> None: ...

    def on_messages(self, channel: bytes, frames: list[bytes]) -> None:
        """The channel's messages of one socket read, in order: a node that fell behind writes
        each client its share of a read at once, not one write per message."""
        ...

    def on_lost(self, channels: list[bytes]) -> None:
        """The connection is gone with these channels' subscriptions; a new one is being made."""
        ...

    def on_moved(self, channels: list[bytes]) -> None:
        """Redis dropped these subscriptions, or refused them (MOVED): their slot is served elsewhere."""
        ...


@dataclass(slots=True)
class _Request:
    kind: bytes
    waiting: set[bytes]
    future: "asyncio.Future[None] | None" = None
    """None for the subscriptions sent on connect (nobody awaits them)."""
    channels: list[bytes] = field(default_factory=list)


def _batches(conn: AbstractConnection) -> Callable[[], Awaitable[list[Any]]]:
    """The pub/sub messages of ``conn`` that have arrived: at least one, in order.

    From hiredis when ``conn`` is redis-py's own, all a socket read brought at once: its
    ``read_response`` costs per message a coroutine, a timeout and a RESP3 push dispatch
    (docs/measurements.md, pubsub-batches). Dead links are the watchdog's job. Error replies are
    values; other connection classes go the documented way.
    """
    parser: Any = getattr(conn, "_parser", None)
    if native(type(conn)) and isinstance(parser, _AsyncHiredisParser) and parser._reader is not None:
        gets, fill = parser._reader.gets, parser.read_from_socket

        async def drained() -> list[Any]:
            messages: list[Any] = []
            while (message := gets()) is not NOT_ENOUGH_DATA or not messages:
                if message is NOT_ENOUGH_DATA:
                    await fill()
                else:
                    messages.append(message)
            return messages

        return drained

    async def documented() -> list[Any]:
        try:
            return [await conn.read_response(timeout=math.inf, push_request=True)]
        except ResponseError as exc:
            return [exc]

    return documented


class PubSubConnection:
    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        sink: PubSubSink,
        generations: "Iterable[int]",
        *,
        timeout_seconds: float,
        slot_of: Callable[[bytes], int] | None = None,
    ) -> None:
        self._make_connection = connect
        self._sink = sink
        self._generations = iter(generations)
        self._timeout = timeout_seconds
        self._slot_of = slot_of
        """Groups the channels of one SSUBSCRIBE by slot (a cluster refuses cross-slot ones)."""
        self._conn: AbstractConnection | None = None
        self._connected = asyncio.Event()
        self._requests: deque[_Request] = deque()
        self._received = 0
        self._made = 0
        self.generation = 0
        self.confirmed: set[bytes] = set()
        self.reconnects = 0
        """Times the connection was re-established after a loss."""

    @property
    def ready(self) -> bool:
        return self._connected.is_set()

    async def run(self) -> None:
        """Own the connection until cancelled: connect, read, reconnect with jittered backoff."""
        backoff = Backoff(first=0.05, cap=2.0)
        async with asyncio.TaskGroup() as tasks:
            watchdog = tasks.create_task(self._watchdog(), name="pubsub-watchdog")
            try:
                while True:
                    self._received = 0
                    try:
                        await self._connect_and_read()
                    except (RedisError, OSError) as exc:
                        log.warning("pub/sub connection lost (%s); reconnecting", exc)
                    except Exception:
                        log.exception("pub/sub reader failed; reconnecting")
                    self._lost()
                    if self._received:
                        backoff.reset()  # it worked for a while: retry soon
                    await asyncio.sleep(backoff.next_delay())
            finally:
                watchdog.cancel()
                self._lost()

    async def request(self, kind: bytes, channels: list[bytes]) -> None:
        """Send SSUBSCRIBE/SUNSUBSCRIBE (``kind``) for channels of one slot and wait for Redis to
        confirm each. A MOVED reply is raised as is (the caller re-routes); other failures are
        ``PubSubUnavailable``."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._connected.wait()
                conn = self._conn
                assert conn is not None
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                request = _Request(kind, set(channels), future)
                self._requests.append(request)
                await conn.send_command(kind.upper(), *channels, check_health=False)
                await future
        except ResponseError:
            raise
        except (TimeoutError, RedisError, OSError) as exc:
            raise PubSubUnavailable(f"{kind.decode()} failed: {exc!r}") from exc

    async def _connect_and_read(self) -> None:
        # Commands go out with check_health=False: redis-py's health check would read the reply
        # itself, racing this loop for the confirmations (the watchdog does that job).
        conn = self._make_connection()
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            self.generation = next(self._generations)
            self._made += 1
            self.reconnects += self._made > 1
            channels = self._sink.wanted_channels()
            self._sink.on_connected(channels, self.generation)
            for group in self.by_slot(channels):
                self._requests.append(_Request(SUBSCRIBE, set(group), channels=group))
                await conn.send_command("SSUBSCRIBE", *group, check_health=False)
            if channels:
                log.info("pub/sub connected; subscribing %d channels", len(channels))
            self._conn = conn
            self._connected.set()
            read = _batches(conn)
            while True:
                messages = await read()
                self._received += len(messages)
                self._dispatch_all(messages)
        finally:
            self._conn = None
            self._connected.clear()
            # Bounded: after a cancel spent in connect (SIGTERM at start) redis-py's disconnect can
            # wait forever for a close; the worker outlived its supervisor (test_pubsub_stop.py).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await conn.disconnect()

    def by_slot(self, channels: list[bytes]) -> list[list[bytes]]:
        if self._slot_of is None or not channels:
            return [channels] if channels else []
        slot_of = self._slot_of
        return [list(group) for _, group in itertools.groupby(sorted(channels, key=slot_of), key=slot_of)]

    def _dispatch_all(self, messages: list[Any]) -> None:
        """``messages`` in order, each channel's run of messages handed over at once. A
        (un)subscription's confirmation is handled where it came: the runs before it go first."""
        runs: dict[bytes, list[bytes]] = {}
        for message in messages:
            if isinstance(message, list) and len(message) == 3 and message[0] == b"smessage":
                run = runs.get(message[1])
                if run is None:
                    runs[message[1]] = [message[2]]
                else:
                    run.append(message[2])
                continue
            if runs:
                self._hand_over(runs)
                runs = {}
            self._dispatch(message)
        if runs:
            self._hand_over(runs)

    def _hand_over(self, runs: dict[bytes, list[bytes]]) -> None:
        on_messages = self._sink.on_messages
        for channel, frames in runs.items():
            on_messages(channel, frames)

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, ResponseError):
            self._refused(message)
            return
        if not isinstance(message, list) or len(message) < 3:
            return  # PONG of the watchdog's PING (counted as traffic above)
        kind, channel = message[0], message[1]
        if kind not in (SUBSCRIBE, UNSUBSCRIBE):
            return
        head = self._requests[0] if self._requests else None
        if head is None or head.kind != kind or channel not in head.waiting:
            if kind == UNSUBSCRIBE:  # Redis dropped it by itself: the slot moved to another shard
                self.confirmed.discard(channel)
                self._sink.on_moved([channel])
            return
        head.waiting.discard(channel)
        if kind == SUBSCRIBE:
            self.confirmed.add(channel)
        else:
            self.confirmed.discard(channel)
        if not head.waiting:
            self._requests.popleft()
            if head.future is not None and not head.future.done():
                head.future.set_result(None)
        if kind == SUBSCRIBE:
            self._sink.on_subscribed(channel, self.generation)

    def _refused(self, error: ResponseError) -> None:
        if not self._requests:
            log.warning("unexpected error reply on the pub/sub connection: %s", error)
            return
        head = self._requests.popleft()
        if head.future is not None:
            if not head.future.done():
                head.future.set_exception(error)
        else:
            log.info("subscribing %d channels on connect refused (%s); re-routing them", len(head.channels), error)
            self._sink.on_moved(head.channels)

    def _lost(self) -> None:
        lost = list(self.confirmed)
        self.confirmed.clear()
        requests, self._requests = self._requests, deque()
        for request in requests:
            if request.future is not None and not request.future.done():
                request.future.set_exception(PubSubUnavailable("pub/sub connection lost"))
        self._sink.on_lost(lost)

    async def _watchdog(self) -> None:
        """Ping a silent connection; drop one that stays silent (a half-open TCP link never errors)."""
        silent = 0
        seen = -1
        while True:
            await asyncio.sleep(_HEALTH_INTERVAL)
            conn = self._conn
            if conn is None:
                silent, seen = 0, -1
                continue
            if self._received != seen:
                silent, seen = 0, self._received
            else:
                silent += 1
            if silent >= _DROP_AFTER_SILENT:
                log.warning("pub/sub connection silent for %.0fs; dropping it", silent * _HEALTH_INTERVAL)
                await conn.disconnect(nowait=True)
            elif silent >= _PING_AFTER_SILENT:
                with contextlib.suppress(RedisError, OSError):
                    await conn.send_command("PING", check_health=False)

    async def drop(self) -> None:
        """Close the current connection (tests and fault injection): the run loop reconnects."""
        conn = self._conn
        if conn is not None:
            await conn.disconnect()
