"""Which connection serves which channel: one sharded pub/sub connection per Redis shard.

A standalone Redis (or the embedded broker) is one shard. In a Redis Cluster each primary gets a
connection of its own, read by its own task (redis-py's ``ClusterPubSub`` polls its shards in turn,
each with a timeout: one slow shard would delay all). A channel is served by the primary of its
slot; the map comes from redis-py's cluster client, initialised before the first subscription.

Invariants (this class owns them):
- A channel is subscribed on the connection of its slot's primary, as of the newest map.
- A channel displaced by a failover or a slot migration (its connection lost, a SUNSUBSCRIBE pushed
  by Redis, a MOVED reply) is re-subscribed on its new primary as one more connection event for its
  feed: the feed holds live frames and fills the gap from the stream first, so clients lose nothing.
- The map is re-read whenever something says it is stale, with jittered backoff while a shard is
  down (a replica takes over only after the cluster's node timeout).
"""

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from server.pubsub import SUBSCRIBE, UNSUBSCRIBE, PubSubConnection, PubSubUnavailable
from support.backoff import Backoff

log = logging.getLogger(__name__)

_STANDALONE = ""  # the one shard's name when Redis is not a cluster
_MOVED_RETRIES = 3  # map refreshes one (un)subscribe may go through: a slot moves once per resharding step


class ChannelSink(Protocol):
    """What the hub hears about its channels, from whichever shard serves them."""

    def wanted_channels(self) -> list[bytes]: ...

    def on_connected(self, channels: list[bytes], generation: int) -> None: ...

    def on_subscribed(self, channel: bytes, generation: int) -> None: ...

    def on_messages(self, channel: bytes, frames: list[bytes]) -> None: ...

    def on_lost(self, channels: list[bytes]) -> None: ...

    def on_reconnected(self) -> None:
        """A shard's connection came back after a loss (counted in the metrics)."""
        ...


class _Shard:
    """One connection's sink: passes what it hears to the hub, for the channels it still serves."""

    def __init__(self, router: "ShardedPubSub", name: str) -> None:
        self._router = router
        self.name = name
        self._connections = 0

    def wanted_channels(self) -> list[bytes]:
        owner = self._router.owner
        return [c for c in self._router.hub.wanted_channels() if owner(c) == self.name]

    def on_connected(self, channels: list[bytes], generation: int) -> None:
        self._connections += 1
        if self._connections > 1:
            self._router.hub.on_reconnected()
        self._router.hub.on_connected(channels, generation)

    def on_subscribed(self, channel: bytes, generation: int) -> None:
        self._router.hub.on_subscribed(channel, generation)

    def on_messages(self, channel: bytes, frames: list[bytes]) -> None:
        self._router.hub.on_messages(channel, frames)

    def on_lost(self, channels: list[bytes]) -> None:
        owner = self._router.owner
        self._router.hub.on_lost([c for c in channels if owner(c) == self.name])  # moved ones are handled there
        self._router.mark_stale()

    def on_moved(self, channels: list[bytes]) -> None:
        self._router.displaced(channels)


class ShardedPubSub:
    def __init__(self, redis: "Redis | RedisCluster", hub: ChannelSink, *, timeout_seconds: float) -> None:
        self._redis = redis
        self._cluster = redis if isinstance(redis, RedisCluster) else None
        self.hub = hub
        self._timeout = timeout_seconds
        self._generations = itertools.count(1)
        self._conns: dict[str, PubSubConnection] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slot_owner: list[str] = []
        self._displaced: set[bytes] = set()
        self._stale = asyncio.Event()
        self._refreshed = 0
        self._refresh_lock = asyncio.Lock()
        self._mapped = asyncio.Event()
        """Set once the first connection exists (in a cluster: once the map was read)."""
        self._group: asyncio.TaskGroup | None = None
        self._reconnects_before = 0  # of connections since stopped (their shard went away)

    # -- what the hub and the channel table ask --------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self._conns) and all(conn.ready for conn in self._conns.values())

    @property
    def reconnects(self) -> int:
        return self._reconnects_before + sum(conn.reconnects for conn in self._conns.values())

    @property
    def generation(self) -> int:
        """The newest connection's generation."""
        return max((conn.generation for conn in self._conns.values()), default=0)

    def owner(self, channel: bytes) -> str:
        """The shard serving ``channel`` as of the newest map."""
        return self._slot_owner[key_slot(channel)] if self._slot_owner else _STANDALONE

    def is_confirmed(self, channel: bytes) -> bool:
        conn = self._conns.get(self.owner(channel))
        return conn is not None and channel in conn.confirmed

    async def request(self, kind: bytes, channel: bytes) -> None:
        """SSUBSCRIBE/SUNSUBSCRIBE ``channel`` on its shard, confirmed; re-routed after a MOVED."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._mapped.wait()
        except TimeoutError as exc:
            raise PubSubUnavailable("the Redis Cluster map could not be read") from exc
        for _ in range(_MOVED_RETRIES):
            seen = self._refreshed
            conn = self._conns.get(self.owner(channel))
            if conn is None:
                raise PubSubUnavailable(f"no connection to the shard of {channel!r}")
            try:
                await conn.request(kind, [channel])
                return
            except ResponseError as exc:
                if kind == UNSUBSCRIBE:
                    return  # not subscribed there: nothing to undo
                log.info("subscribing %r was refused (%s); reading the cluster map again", channel, exc)
                await self._refresh(seen)
        raise PubSubUnavailable(f"{channel!r} kept moving while being subscribed")

    async def run(self) -> None:
        """Own every shard's connection until cancelled (and, in a cluster, keep the map fresh)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                if self._cluster is None:
                    self._start(_STANDALONE)
                else:
                    await self._first_map()
                    group.create_task(self._keep_map(), name="pubsub-cluster-map")
                await asyncio.Future()  # until cancelled
            finally:
                for task in self._tasks.values():
                    task.cancel()

    async def drop(self) -> None:
        """Close every connection (tests and fault injection): each reconnects."""
        for conn in list(self._conns.values()):
            await conn.drop()

    # -- the shards ---------------------------------------------------------------------------

    def mark_stale(self) -> None:
        if self._cluster is not None:
            self._stale.set()

    def displaced(self, channels: list[bytes]) -> None:
        """Redis dropped or refused these subscriptions: re-route them after reading the map again."""
        log.info("%d channels moved to another shard; reading the cluster map again", len(channels))
        self._displaced.update(channels)
        self.hub.on_lost(channels)
        self._stale.set()

    def _connect(self, name: str) -> Callable[[], AbstractConnection]:
        if self._cluster is None:
            return self._redis.connection_pool.make_connection  # type: ignore[union-attr]
        node = self._cluster.get_node(node_name=name)
        assert node is not None, name
        kwargs = dict(node.connection_kwargs)
        connection_class = node.connection_class
        return lambda: connection_class(**kwargs)

    def _start(self, name: str) -> None:
        assert self._group is not None, "shards run inside run()"
        conn = PubSubConnection(
            self._connect(name),
            _Shard(self, name),
            self._generations,
            timeout_seconds=self._timeout,
            slot_of=key_slot if self._cluster is not None else None,
        )
        self._conns[name] = conn
        self._tasks[name] = self._group.create_task(conn.run(), name=f"pubsub-{name or 'redis'}")
        self._mapped.set()

    def _stop(self, name: str) -> None:
        conn = self._conns.pop(name)
        self._reconnects_before += conn.reconnects
        self._tasks.pop(name).cancel()

    async def _first_map(self) -> None:
        """Read the cluster's map before any subscription (redis-py #4296), retrying until it answers."""
        assert self._cluster is not None
        backoff = Backoff(first=0.1, cap=2.0)
        while True:
            try:
                await self._cluster.initialize()
                break
            except (RedisError, RedisClusterException, OSError) as exc:  # e.g. slots not assigned yet
                log.warning("reading the Redis Cluster map failed (%r); retrying", exc)
                await asyncio.sleep(backoff.next_delay())
        self._apply_map()

    async def _keep_map(self) -> None:
        backoff = Backoff(first=0.1, cap=2.0)
        while True:
            await self._stale.wait()
            self._stale.clear()
            changed = await self._refresh(self._refreshed)
            if changed:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())  # at most one read per pause, however many ask

    async def _refresh(self, seen: int) -> bool:
        """Read the map again (unless someone did since ``seen``) and re-route; True if it changed."""
        assert self._cluster is not None
        async with self._refresh_lock:
            if self._refreshed != seen:
                return False
            try:
                await self._cluster.nodes_manager.initialize()
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("reading the Redis Cluster map failed (%r)", exc)
                self._stale.set()
                return False
            self._refreshed += 1
            return self._apply_map()

    def _apply_map(self) -> bool:
        assert self._cluster is not None
        # A new map displaces the channels subscribed on their old shard, or waiting for its
        # connection to come back; a subscription still in flight on a live connection is
        # re-routed by its own request (after MOVED), and its client stays connected.
        subscribed = {c: self.owner(c) for c in self.hub.wanted_channels() if not self._in_flight(c)}
        slots = self._cluster.nodes_manager.slots_cache
        owner = [slots[s][0].name if slots.get(s) else _STANDALONE for s in range(16384)]
        changed = owner != self._slot_owner
        self._slot_owner = owner
        self._displaced.update(c for c, before in subscribed.items() if before != self.owner(c))
        primaries = {node.name for node in self._cluster.get_primaries()}
        for name in primaries - self._conns.keys():
            self._start(name)
        for name in self._conns.keys() - primaries:
            self._stop(name)
        self._resubscribe_displaced()
        return changed

    def _resubscribe_displaced(self) -> None:
        """Each displaced channel still wanted: a connection event for its feed, then SSUBSCRIBE on
        its shard (one per slot); a shard still connecting subscribes it when it connects."""
        wanted = set(self.hub.wanted_channels())
        displaced, self._displaced = self._displaced & wanted, set()
        by_shard: dict[str, list[bytes]] = {}
        for channel in displaced:
            by_shard.setdefault(self.owner(channel), []).append(channel)
        for name, channels in by_shard.items():
            self.hub.on_lost(channels)
            conn = self._conns.get(name)
            if conn is None or not conn.ready:
                continue
            self.hub.on_connected(channels, conn.generation)
            self._spawn(self._subscribe(conn, channels), f"resubscribe-{name}")

    def _in_flight(self, channel: bytes) -> bool:
        conn = self._conns.get(self.owner(channel))
        return conn is not None and conn.ready and channel not in conn.confirmed

    async def _subscribe(self, conn: PubSubConnection, channels: list[bytes]) -> None:
        for group in conn.by_slot(channels):
            try:
                await conn.request(SUBSCRIBE, group)
            except ResponseError:
                self.displaced(group)
            except PubSubUnavailable:
                return  # the connection is gone: it subscribes them again when it is back

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._group is not None
        self._group.create_task(coro, name=name)
