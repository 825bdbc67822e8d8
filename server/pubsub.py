"""The node's one Redis pub/sub connection: connect, read, reconnect, watchdog, confirmations.

Invariants (this class owns them):
- ``generation`` counts the connections made; every callback names the generation it belongs to,
  so work started for an older connection can tell it is stale.
- ``confirmed`` holds the channels Redis confirmed on the current connection; it is emptied the
  moment the connection is lost.
- At most one SUBSCRIBE/UNSUBSCRIBE per channel waits for its confirmation at a time (callers
  serialise per channel), so a confirmation always matches its request.

What the messages mean is the sink's business (``PubSubSink``): this module only moves them.
"""

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from wire.backoff import Backoff

log = logging.getLogger(__name__)

_HEALTH_INTERVAL = 5.0
"""Seconds of silence after which the connection pings Redis; three silent intervals mean a dead link."""


class HubUnavailable(Exception):
    """A subscription could not be confirmed in time (Redis unreachable)."""


class PubSubSink(Protocol):
    def wanted_channels(self) -> list[bytes]:
        """The channels to subscribe on a new connection."""
        ...

    def on_connected(self, generation: int) -> None:
        """A new connection is up; its SUBSCRIBE for ``wanted_channels`` follows at once."""
        ...

    def on_subscribed(self, channel: bytes, generation: int) -> None: ...

    def on_message(self, channel: bytes, data: bytes) -> None: ...

    def on_lost(self) -> None:
        """The connection is gone; a new one is being made."""
        ...


def _reader(conn: AbstractConnection) -> Callable[[], Awaitable[Any]]:
    """The next pub/sub message of ``conn``.

    Straight from redis-py's parser when ``conn`` is redis-py's own connection: its
    ``read_response`` wraps every message in a timeout context (even an infinite one) and formats
    an error label, a cost paid once per message on the node's busiest path (measured with py-spy).
    Dead links are the watchdog's job, so no timeout is lost. Other connections (fakeredis) go the
    documented way.
    """
    if type(conn).read_response is AbstractConnection.read_response:
        parser: Any = conn._parser
        return functools.partial(parser.read_response, push_request=True)
    return functools.partial(conn.read_response, timeout=math.inf, push_request=True)


class PubSubConnection:
    def __init__(self, redis: "Redis", sink: PubSubSink, *, timeout_seconds: float) -> None:
        self._redis = redis
        self._sink = sink
        self._timeout = timeout_seconds
        self._conn: AbstractConnection | None = None
        self._connected = asyncio.Event()
        self._waiters: dict[bytes, tuple[bytes, asyncio.Future[None]]] = {}
        self._received = 0
        self.generation = 0
        self.confirmed: set[bytes] = set()
        self.reconnects = 0
        """Times the connection was re-established after a loss."""

    @property
    def ready(self) -> bool:
        return self._connected.is_set()

    async def run(self) -> None:
        """Own the connection for the node's lifetime: connect, read, reconnect with jittered backoff."""
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

    async def request(self, kind: bytes, channel: bytes) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE (``kind`` in lower case) and wait for Redis to confirm it."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._connected.wait()
                conn = self._conn
                assert conn is not None
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters[channel] = (kind, future)
                try:
                    await conn.send_command(kind.upper(), channel, check_health=False)
                    await future
                finally:
                    self._waiters.pop(channel, None)
        except (TimeoutError, RedisError, OSError) as exc:
            raise HubUnavailable(f"{kind.decode()} failed: {exc!r}") from exc

    async def _connect_and_read(self) -> None:
        # Commands go out with check_health=False: redis-py's health check would read the reply
        # itself, racing this loop for the confirmations (the watchdog does that job).
        # push_request=True: under RESP3 pub/sub traffic arrives as push messages.
        conn: AbstractConnection = self._redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            self.generation += 1
            if self.generation > 1:
                self.reconnects += 1
            self._sink.on_connected(self.generation)
            channels = self._sink.wanted_channels()
            if channels:
                await conn.send_command("SUBSCRIBE", *channels, check_health=False)
                log.info("pub/sub connected; subscribing %d channels", len(channels))
            self._conn = conn
            self._connected.set()
            read = _reader(conn)
            while True:
                message = await read()
                self._received += 1
                self._dispatch(message)
        finally:
            self._conn = None
            self._connected.clear()
            with contextlib.suppress(Exception):
                await conn.disconnect()

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3:
            return  # PONG of the watchdog's PING (counted as traffic above)
        kind, channel = message[0], message[1]
        if kind == b"message":
            self._sink.on_message(channel, message[2])
            return
        if kind == b"subscribe":
            self.confirmed.add(channel)
        elif kind == b"unsubscribe":
            self.confirmed.discard(channel)
        else:
            return
        waiter = self._waiters.get(channel)
        if waiter is not None and waiter[0] == kind and not waiter[1].done():
            waiter[1].set_result(None)
        if kind == b"subscribe":
            self._sink.on_subscribed(channel, self.generation)

    def _lost(self) -> None:
        self.confirmed.clear()
        for _, future in list(self._waiters.values()):
            if not future.done():
                future.set_exception(HubUnavailable("pub/sub connection lost"))
        self._sink.on_lost()

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
            if silent >= 3:
                log.warning("pub/sub connection silent for %.0fs; dropping it", silent * _HEALTH_INTERVAL)
                await conn.disconnect(nowait=True)
            elif silent >= 1:
                with contextlib.suppress(RedisError, OSError):
                    await conn.send_command("PING", check_health=False)

    async def drop(self) -> None:
        """Close the current connection (tests and fault injection): the run loop reconnects."""
        conn = self._conn
        if conn is not None:
            await conn.disconnect()
