"""The node's subscription hub: one Redis pub/sub connection, shared by every client of the node.

Channels are reference-counted: the first local client of a conversation subscribes (and waits for
Redis to confirm, so nothing published after its history read can be missed), the last one leaves a
grace period before the unsubscribe, so a reloading tab does not churn SUBSCRIBE/UNSUBSCRIBE. A
per-channel lock (kept only while in use) serialises subscribe and unsubscribe, so confirmations
always match their request.

Each frame arrives already encoded (the publishing script built it); the hub parses its id once,
frames it as an HTTP chunk once, and hands the same bytes to every client (``Listener.deliver``).

Delivery guarantee: when the pub/sub connection breaks (Redis restart, output-buffer limit, network),
the hub reconnects with backoff, re-subscribes every channel, and refills each channel's gap from the
history stream before forwarding live frames again, skipping ids already forwarded. Clients still
catching up, and channels whose history cannot fill the gap, are cut off: they resume on their own
with ``Last-Event-ID``. Either way no client sees a gap, a duplicate or a reordering.
"""

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from server.listener import Listener, http_chunk
from server.metrics import NodeMetrics
from server.store import ConversationStore, Page
from wire.events import EventId, format_event_id, parse_event_id
from wire.keys import ConversationKeys, conversation_id_from_channel
from wire.sse import HEARTBEAT, frame_event_id

log = logging.getLogger(__name__)

_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 2.0
_HEALTH_INTERVAL = 5.0
"""Seconds of silence after which the hub pings Redis; three silent intervals mean a dead link."""
_MAX_SYNC_BUFFER = 100_000
_GAP_FILL_ATTEMPTS = 4


def _channel_name(conversation_id: str) -> bytes:
    return ConversationKeys(conversation_id).channel.encode()


def _reader(conn: AbstractConnection) -> Callable[[], Awaitable[Any]]:
    """The next pub/sub message of ``conn``.

    Straight from redis-py's parser when ``conn`` is redis-py's own connection: its
    ``read_response`` wraps every message in a timeout context (even an infinite one) and formats
    an error label, a cost paid once per message on the node's busiest path. Dead links are the
    watchdog's job, so no timeout is lost. Other connections (fakeredis) go the documented way.
    """
    if type(conn).read_response is AbstractConnection.read_response:
        parser: Any = conn._parser
        return functools.partial(parser.read_response, push_request=True)
    return functools.partial(conn.read_response, timeout=math.inf, push_request=True)


class HubUnavailable(Exception):
    """The hub could not subscribe in time (Redis unreachable)."""


class Channel:
    """One conversation's subscription on this node and its local clients."""

    __slots__ = ("forwarded", "grace", "listeners", "name", "subscribed", "syncing", "waiter")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.listeners: set[Listener] = set()
        self.subscribed = False
        """Redis confirmed the subscription on the current connection."""
        self.waiter: tuple[bytes, asyncio.Future[None]] | None = None
        """The confirmation the channel's lock holder is waiting for: (b"subscribe"|b"unsubscribe", future)."""
        self.grace: asyncio.TimerHandle | None = None
        self.forwarded: EventId | None = None
        """The newest event id forwarded to the listeners."""
        self.syncing: list[bytes] | None = None
        """Frames held back while the gap after a reconnect is filled from history."""


class Hub:
    def __init__(
        self,
        redis: "Redis",
        store: ConversationStore,
        *,
        grace_seconds: float,
        timeout_seconds: float,
        replay_page: int,
        heartbeat_seconds: float,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._redis = redis
        self.metrics = metrics or NodeMetrics()
        self._store = store
        self._grace = grace_seconds
        self._timeout = timeout_seconds
        self._replay_page = replay_page
        self._heartbeat_seconds = heartbeat_seconds
        self._channels: dict[bytes, Channel] = {}
        self._locks: dict[bytes, tuple[asyncio.Lock, list[int]]] = {}
        self._conn: AbstractConnection | None = None
        self._connected = asyncio.Event()
        self._received = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._connects = 0
        self.reconnects = 0
        """Times the pub/sub connection was re-established."""

    # -- public API ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._connected.is_set()

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def connection_count(self) -> int:
        return sum(len(channel.listeners) for channel in self._channels.values())

    def subscribed(self, conversation_id: str) -> bool:
        channel = self._channels.get(_channel_name(conversation_id))
        return channel is not None and channel.subscribed

    def listener_count(self, conversation_id: str) -> int:
        channel = self._channels.get(_channel_name(conversation_id))
        return 0 if channel is None else len(channel.listeners)

    def close_all(self) -> None:
        """End every client's stream (node shutdown): each resumes on another node with its cursor."""
        for channel in self._channels.values():
            for listener in list(channel.listeners):
                listener.close()

    async def attach(self, conversation_id: str, listener: Listener) -> Channel:
        """Register ``listener`` (catching up) on the conversation's channel, subscribed and confirmed.

        The caller must ``detach`` it when done (a plain pair, not a context manager: one less
        object and frame kept alive per connection).
        """
        name = _channel_name(conversation_id)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = Channel(name)
        if channel.grace is not None:
            channel.grace.cancel()
            channel.grace = None
        channel.listeners.add(listener)
        try:
            async with self._lock(name):
                if not channel.subscribed:
                    await self._request(channel, b"subscribe")
        except BaseException:
            self.detach(channel, listener)
            raise
        return channel

    async def run(self) -> None:
        """Own the pub/sub connection for the node's lifetime: connect, read, reconnect."""
        backoff = _BACKOFF_FIRST
        watchdog = asyncio.create_task(self._watchdog(), name="hub-watchdog")
        heartbeat = asyncio.create_task(self._heartbeat(), name="hub-heartbeat")
        try:
            while True:
                self._received = 0
                try:
                    await self._connect_and_read()
                except (RedisError, OSError) as exc:
                    log.warning("pub/sub connection lost (%s); reconnecting in %.2fs", exc, backoff)
                except Exception:
                    log.exception("pub/sub reader failed; reconnecting in %.2fs", backoff)
                self._on_disconnect()
                if self._received:
                    backoff = _BACKOFF_FIRST  # it worked for a while: retry at once
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
        finally:
            watchdog.cancel()
            heartbeat.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(watchdog, heartbeat, *self._tasks, return_exceptions=True)
            self._on_disconnect()
            for channel in self._channels.values():
                if channel.grace is not None:
                    channel.grace.cancel()

    # -- the connection -----------------------------------------------------------------------

    async def _connect_and_read(self) -> None:
        # Commands go out with check_health=False: redis-py's health check would read the reply
        # itself, racing this loop for the subscription confirmations (the watchdog does that job).
        # push_request=True: under RESP3 pub/sub traffic arrives as push messages.
        conn: AbstractConnection = self._redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            resubscribe = [channel.name for channel in self._channels.values()]
            for channel in self._channels.values():
                if channel.forwarded is not None or any(listener.live for listener in channel.listeners):
                    channel.syncing = []
            if resubscribe:
                await conn.send_command("SUBSCRIBE", *resubscribe, check_health=False)
            self._conn = conn
            self._connected.set()
            if self._connects:
                self.reconnects += 1
                self.metrics.redis_reconnects.inc()
                log.info("pub/sub reconnected; re-subscribed %d channels", len(resubscribe))
            self._connects += 1
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
        if not isinstance(message, list):
            return  # PONG of the watchdog's PING before the first subscription
        kind = message[0]
        if kind == b"message":
            channel = self._channels.get(message[1])
            if channel is not None:
                if channel.syncing is not None:
                    self._hold(channel, message[2])
                else:
                    self._forward(channel, message[2])
        elif kind in (b"subscribe", b"unsubscribe"):
            channel = self._channels.get(message[1])
            if channel is None:
                return
            channel.subscribed = kind == b"subscribe"
            if channel.waiter is not None and channel.waiter[0] == kind and not channel.waiter[1].done():
                channel.waiter[1].set_result(None)
            if channel.subscribed and channel.syncing is not None:
                self._spawn(self._fill_gap(channel), f"fill-gap-{channel.name!r}")
        # b"pong" answers the watchdog's PING: counted as traffic, nothing else to do.

    async def _heartbeat(self) -> None:
        """One loop for the node's heartbeats: a comment to every live client each interval."""
        chunk = http_chunk(HEARTBEAT)
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            for channel in list(self._channels.values()):
                for listener in list(channel.listeners):
                    if listener.live:
                        listener.send(HEARTBEAT, chunk)

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

    def _on_disconnect(self) -> None:
        for channel in self._channels.values():
            channel.subscribed = False
            if channel.waiter is not None and not channel.waiter[1].done():
                channel.waiter[1].set_exception(HubUnavailable("pub/sub connection lost"))
            for listener in list(channel.listeners):
                if not listener.live:
                    listener.cut_off()

    async def _request(self, channel: Channel, kind: bytes) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE for ``channel`` and wait for its confirmation (lock held)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._connected.wait()
                conn = self._conn
                assert conn is not None
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                channel.waiter = (kind, future)
                try:
                    await conn.send_command(kind.upper(), channel.name, check_health=False)
                    await future
                finally:
                    channel.waiter = None
        except (TimeoutError, RedisError, OSError) as exc:
            raise HubUnavailable(f"{kind.decode()} failed: {exc!r}") from exc

    # -- fan-out ------------------------------------------------------------------------------

    def _forward(self, channel: Channel, frame: bytes) -> None:
        event_id = parse_event_id(frame_event_id(frame).decode("ascii"))
        forwarded = channel.forwarded
        if forwarded is not None and event_id <= forwarded:
            return  # already forwarded while a gap was filled
        channel.forwarded = event_id
        chunk = http_chunk(frame)
        listeners = channel.listeners
        for listener in listeners:
            listener.deliver(event_id, frame, chunk)
        metrics = self.metrics
        metrics.delivered.value += len(listeners)
        metrics.bytes_written.value += len(listeners) * len(chunk)
        metrics.publish_to_write.observe(max(0.0, time.time() - event_id[0] / 1000))

    def _hold(self, channel: Channel, frame: bytes) -> None:
        held = channel.syncing
        assert held is not None
        if len(held) >= _MAX_SYNC_BUFFER:
            log.warning("gap fill of %r is too slow; cutting its clients off", channel.name)
            self._abandon(channel)
            return
        held.append(frame)

    def _abandon(self, channel: Channel) -> None:
        """Cut off every client of ``channel``: they resume from their own cursors."""
        channel.syncing = None
        channel.forwarded = None
        for listener in list(channel.listeners):
            listener.cut_off()

    async def _fill_gap(self, channel: Channel) -> None:
        """Forward what was published while the connection was down, then the held frames."""
        live_positions = [listener.position for listener in channel.listeners if listener.live]
        start = channel.forwarded or (min(live_positions) if live_positions else None)
        if start is not None:
            cursor = format_event_id(start)
            conversation_id = conversation_id_from_channel(channel.name)
            attempt = 0
            while channel.syncing is not None:
                try:
                    page = await asyncio.wait_for(
                        self._store.replay(conversation_id, cursor, self._replay_page), self._timeout
                    )
                except (TimeoutError, RedisError, OSError) as exc:
                    # Right after a Redis restart the command pool may still hold dead connections.
                    attempt += 1
                    if attempt > _GAP_FILL_ATTEMPTS:
                        log.warning("gap fill of %r failed (%r); clients resume by themselves", channel.name, exc)
                        self._abandon(channel)
                        return
                    await asyncio.sleep(_BACKOFF_FIRST * 2**attempt)
                    continue
                if not isinstance(page, Page):
                    log.warning("history of %r lost across the reconnect; clients reload", channel.name)
                    self._abandon(channel)
                    return
                for _, frame in page.frames:
                    self._forward(channel, frame)
                if len(page.frames) < self._replay_page:
                    break
                cursor = page.frames[-1][0].decode()
        held, channel.syncing = channel.syncing, None
        for frame in held or ():
            self._forward(channel, frame)

    # -- leaving ------------------------------------------------------------------------------

    def detach(self, channel: Channel, listener: Listener) -> None:
        channel.listeners.discard(listener)
        if not channel.listeners and channel.grace is None:
            loop = asyncio.get_running_loop()
            channel.grace = loop.call_later(self._grace, self._grace_over, channel)

    def _grace_over(self, channel: Channel) -> None:
        channel.grace = None
        if not channel.listeners:
            self._spawn(self._unsubscribe(channel), f"unsubscribe-{channel.name!r}")

    async def _unsubscribe(self, channel: Channel) -> None:
        async with self._lock(channel.name):
            if channel.listeners:
                return
            if channel.subscribed:
                try:
                    await self._request(channel, b"unsubscribe")
                except HubUnavailable:
                    pass  # the connection is gone, and with it the subscription
            if not channel.listeners and self._channels.get(channel.name) is channel:
                del self._channels[channel.name]

    @contextlib.asynccontextmanager
    async def _lock(self, name: bytes) -> AsyncIterator[None]:
        """The channel's subscribe/unsubscribe lock, kept only while someone holds or awaits it."""
        lock, users = self._locks.get(name) or self._locks.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[name]

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task %s failed", task.get_name(), exc_info=task.exception())
