"""Which channels this node follows (conversations', Durable Streams'): reference counts, grace
periods, SSUBSCRIBE/SUNSUBSCRIBE.

Invariants (this class owns them):
- A conversation has a feed here while it has a client, or during the grace period after its last
  client left (a reloading tab does not churn SUBSCRIBE/UNSUBSCRIBE); then it is unsubscribed and
  forgotten.
- ``attach`` returns only once Redis confirmed the subscription, so nothing published after the
  client's history read can be missed. A failed subscribe rolls the attach back.
- Subscribe and unsubscribe of one channel are serialised by a per-channel lock that exists only
  while someone holds or awaits it.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Generic, Protocol, TypeVar

from server.pubsub import SUBSCRIBE, UNSUBSCRIBE, PubSubUnavailable
from server.shards import ShardedPubSub
from wire.keys import ConversationKeys


def channel_name(conversation_id: str) -> bytes:
    return ConversationKeys(conversation_id).channel.encode()


class Feed(Protocol):
    """What the table needs of a channel's feed (a conversation's, or a Durable Stream's)."""

    name: bytes
    followers: set[Any]

    def on_lost(self) -> None: ...


F = TypeVar("F", bound=Feed)


class ChannelTable(Generic[F]):
    def __init__(
        self,
        connection: ShardedPubSub,
        make_feed: Callable[[bytes], F],
        spawn: Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"],
        *,
        grace_seconds: float,
    ) -> None:
        self._connection = connection
        self._make_feed = make_feed
        self._spawn = spawn
        self._grace_seconds = grace_seconds
        self._feeds: dict[bytes, F] = {}
        self._grace: dict[bytes, asyncio.TimerHandle] = {}
        self._locks: dict[bytes, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    def __iter__(self) -> Iterator[F]:
        return iter(list(self._feeds.values()))

    def names(self) -> list[bytes]:
        return list(self._feeds)

    def get(self, name: bytes) -> F | None:
        return self._feeds.get(name)

    def idle(self) -> bool:
        """No feed, grace timer or lock left (for leak checks)."""
        return not self._feeds and not self._grace and not self._locks

    async def attach(self, name: bytes, follower: Any) -> F:
        """Add ``follower`` (catching up) to the channel's feed, subscribed and confirmed.

        The caller must ``detach`` it when done (a plain pair, not a context manager: one less
        object and frame kept alive per connection).
        """
        feed = self._feeds.get(name)
        if feed is None:
            feed = self._feeds[name] = self._make_feed(name)
        grace = self._grace.pop(name, None)
        if grace is not None:
            grace.cancel()
        feed.followers.add(follower)
        try:
            async with self._lock(name):
                if not self._connection.is_confirmed(name):
                    await self._connection.request(SUBSCRIBE, name)
        except BaseException:
            self.detach(feed, follower)
            raise
        return feed

    def detach(self, feed: F, follower: Any) -> None:
        feed.followers.discard(follower)
        if not feed.followers and feed.name not in self._grace:
            loop = asyncio.get_running_loop()
            self._grace[feed.name] = loop.call_later(self._grace_seconds, self._grace_over, feed)

    def cancel_timers(self) -> None:
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()

    def _grace_over(self, feed: F) -> None:
        self._grace.pop(feed.name, None)
        if not feed.followers:
            self._spawn(self._unsubscribe(feed), f"unsubscribe-{feed.name!r}")

    async def _unsubscribe(self, feed: F) -> None:
        async with self._lock(feed.name):
            if feed.followers:
                return
            if self._connection.is_confirmed(feed.name):
                with contextlib.suppress(PubSubUnavailable):  # the connection is gone, and with it the subscription
                    await self._connection.request(UNSUBSCRIBE, feed.name)
            if not feed.followers and self._feeds.get(feed.name) is feed and feed.name not in self._grace:
                feed.on_lost()  # stops a gap fill that may still run
                del self._feeds[feed.name]

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
