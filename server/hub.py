"""The node's subscription hub: composes the pub/sub connection, the channel table and the feeds.

It routes what the connection reads to the channel's feed, runs the node's one heartbeat loop, and
owns (cancels and awaits) every task the feeds and the table start.

Delivery guarantee: when a pub/sub connection breaks (Redis restart, output-buffer limit, network,
a cluster failover or slot migration), it reconnects with jittered backoff and re-subscribes its
channels (on the shard now serving them: ``server.shards``), and each channel's feed refills
its gap from the history stream before forwarding live frames again, skipping ids already
forwarded. Clients still catching up, and channels whose history cannot fill the gap, are cut off:
they resume on their own with ``Last-Event-ID``. Either way no client sees a gap, a duplicate or a
reordering.
"""

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from server.channels import ChannelTable, channel_name
from server.durable_feed import DurableFeed, DurableReader
from server.feed import ChannelFeed, FeedServices
from server.follower import Follower
from server.metrics import NodeMetrics
from server.shards import ShardedPubSub
from server.store import ConversationStore

log = logging.getLogger(__name__)


class Hub:
    def __init__(
        self,
        redis: "Redis | RedisCluster",
        store: ConversationStore,
        *,
        grace_seconds: float,
        timeout_seconds: float,
        replay_page: int,
        heartbeat_seconds: float,
        orphan_seconds: float = 60.0,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.metrics = metrics or NodeMetrics()
        self._heartbeat_seconds = heartbeat_seconds
        self._orphan_seconds = orphan_seconds
        self._store = store
        self._tasks: set[asyncio.Task[None]] = set()
        self.pubsub = ShardedPubSub(redis, self, timeout_seconds=timeout_seconds)
        services = FeedServices(store, replay_page, timeout_seconds, self.metrics, self._spawn)
        self.channels = ChannelTable(
            self.pubsub, lambda name: ChannelFeed(name, services), self._spawn, grace_seconds=grace_seconds
        )
        self.durable = ChannelTable(self.pubsub, DurableFeed, self._spawn, grace_seconds=grace_seconds)
        """Durable Streams' channels: readers waiting for a stream to grow."""

    # -- for the endpoints and health checks ---------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.pubsub.ready

    @property
    def reconnects(self) -> int:
        return self.pubsub.reconnects

    @property
    def channel_count(self) -> int:
        return len(self.channels)

    @property
    def connection_count(self) -> int:
        return sum(len(feed.followers) for feed in self.channels)

    def subscribed(self, conversation_id: str) -> bool:
        return self.pubsub.is_confirmed(channel_name(conversation_id))

    def follower_count(self, conversation_id: str) -> int:
        feed = self.channels.get(channel_name(conversation_id))
        return 0 if feed is None else len(feed.followers)

    async def attach(self, conversation_id: str, follower: Follower) -> ChannelFeed:
        return await self.channels.attach(channel_name(conversation_id), follower)

    def detach(self, feed: ChannelFeed, follower: Follower) -> None:
        self.channels.detach(feed, follower)

    async def watch_stream(self, channel: bytes, reader: DurableReader) -> DurableFeed:
        """Wake ``reader`` whenever the Durable Stream of ``channel`` grows (subscribed and confirmed
        on return); ``unwatch_stream`` when done."""
        return await self.durable.attach(channel, reader)

    def unwatch_stream(self, feed: DurableFeed, reader: DurableReader) -> None:
        self.durable.detach(feed, reader)

    def close_all(self) -> None:
        """End every client's stream (node shutdown): each resumes on another node with its cursor."""
        for feed in self.channels:
            for follower in list(feed.followers):
                follower.stream.close()
        for durable in self.durable:
            for reader in list(durable.followers):
                reader.close()

    def idle(self) -> bool:
        """No channel, lock, timer or task left (for leak checks)."""
        return self.channels.idle() and self.durable.idle() and not self._tasks

    async def run(self) -> None:
        """Run the connection and the heartbeat loop until cancelled; then stop every task it owns."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.pubsub.run(), name="hub-pubsub")
                tasks.create_task(self._heartbeat(), name="hub-heartbeat")
                tasks.create_task(self._watch(), name="hub-watch")
        finally:
            self.channels.cancel_timers()
            self.durable.cancel_timers()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- ChannelSink: what the shards' connections report ---------------------------------------

    def _feed(self, channel: bytes) -> ChannelFeed | DurableFeed | None:
        return self.channels.get(channel) or self.durable.get(channel)

    def wanted_channels(self) -> list[bytes]:
        return self.channels.names() + self.durable.names()

    def on_connected(self, channels: list[bytes], generation: int) -> None:
        for channel in channels:
            feed = self._feed(channel)
            if feed is not None:
                feed.on_connected(generation)

    def on_reconnected(self) -> None:
        self.metrics.redis_reconnects.inc()

    def on_subscribed(self, channel: bytes, generation: int) -> None:
        feed = self._feed(channel)
        if feed is not None:
            feed.on_subscribed(generation)

    def on_messages(self, channel: bytes, frames: list[bytes]) -> None:
        feed = self._feed(channel)
        if feed is not None:
            feed.on_frames(frames)

    def on_lost(self, channels: list[bytes]) -> None:
        for channel in channels:
            feed = self._feed(channel)
            if feed is not None:
                feed.on_lost()

    # -- the node's own work ------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """One loop for the node's heartbeats: a comment to every live client each interval."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            now = loop.time()
            for feed in self.channels:
                for follower in list(feed.followers):
                    if follower.live:
                        follower.stream.heartbeat(now)

    async def _watch(self) -> None:
        """Tell the producers which conversations have clients here (orphaned answers may be stopped)."""
        ttl_ms = int(self._orphan_seconds * 1000)
        while True:
            await asyncio.sleep(self._orphan_seconds / 3)
            watched = [feed.conversation_id for feed in self.channels if feed.followers]
            if not watched:
                continue
            try:
                await self._store.mark_watched(watched, ttl_ms)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("marking watched conversations failed: %r", exc)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> "asyncio.Task[None]":
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task %s failed", task.get_name(), exc_info=task.exception())
