"""The subscription hub on fakeredis: reference counts, grace period, bounded clients, gap filling,
and its seams: the feed's generation-tagged gap fill and the client's one write path."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from fakeredis.aioredis import FakeRedis

from loadtest.sse_parser import SSEParser
from server.client_stream import http_chunk
from server.feed import ChannelFeed
from server.follower import Follower
from server.hub import Hub
from server.store import ConversationStore
from tests.fakes import (
    FakeTransport,
    append_deltas,
    eventually,
    last_event_id,
    make_follower,
    running_hub,
    sent_ids,
    start_answer,
)
from wire.env import Retention
from wire.events import parse_event_id
from wire.keys import ConversationKeys
from wire.sse import encode_event

CID = "conversation-0000000001"


def _source_of(task: "asyncio.Task[Any]") -> str:
    coroutine: Any = task.get_coro()
    return str(coroutine.cr_code.co_filename)


@asynccontextmanager
async def attached(hub: Hub, conversation_id: str, listener: Follower) -> AsyncIterator[ChannelFeed]:
    channel = await hub.attach(conversation_id, listener)
    try:
        yield channel
    finally:
        hub.detach(channel, listener)


@pytest.fixture
async def hub(fake_redis: FakeRedis) -> AsyncIterator[Hub]:
    async with running_hub(fake_redis, ConversationStore(fake_redis, Retention())) as hub:
        yield hub


class Producer:
    """Appends deltas through the real script, as the producer does."""

    def __init__(self, redis: FakeRedis, conversation_id: str = CID) -> None:
        self.keys = ConversationKeys(conversation_id)
        self.redis = redis
        self.index = 0

    async def start(self) -> None:
        await start_answer(self.redis, self.keys)

    async def delta(self, text: str) -> str:
        [(ok,)] = await append_deltas(self.redis, [(self.keys, "r", "p", self.index, text)])
        assert ok == 1
        self.index += 1
        return await last_event_id(self.redis, self.keys)


async def numsub(redis: FakeRedis, conversation_id: str = CID) -> int:
    channel = ConversationKeys(conversation_id).channel
    [(_, count)] = await redis.pubsub_shardnumsub(channel)
    return int(count)


async def test_many_listeners_share_one_subscription(hub: Hub, fake_redis: FakeRedis) -> None:
    producer = Producer(fake_redis)
    await producer.start()
    transports = [FakeTransport() for _ in range(50)]
    listeners = [make_follower(t) for t in transports]
    async with AsyncExitStack() as stack:
        for listener in listeners:
            await stack.enter_async_context(attached(hub, CID, listener))
            listener.go_live()
        assert await numsub(fake_redis) == 1
        assert hub.channel_count == 1 and hub.follower_count(CID) == 50
        first = await producer.delta("hello")
        second = await producer.delta(" world")
        expected = http_chunk(encode_event(first, "delta", "hello")) + http_chunk(
            encode_event(second, "delta", " world")
        )
        await eventually(lambda: all(len(t.data) == len(expected) for t in transports))
        assert all(bytes(t.data) == expected for t in transports)
    assert hub.follower_count(CID) == 0


async def test_last_follower_unsubscribes_after_the_grace_period(hub: Hub, fake_redis: FakeRedis) -> None:
    async with attached(hub, CID, make_follower(FakeTransport())) as feed:
        assert await numsub(fake_redis) == 1
    left_at = asyncio.get_running_loop().time()
    timer = hub.channels._grace[feed.name]  # the unsubscribe waits for a timer set for the grace period
    assert timer.when() >= left_at + 0.2 - 0.01 and not timer.cancelled()
    assert hub.subscribed(CID)  # still, during the grace period (checked before any await)
    await eventually(lambda: hub.channel_count == 0)
    assert await numsub(fake_redis) == 0


async def test_returning_within_grace_keeps_the_subscription(hub: Hub, fake_redis: FakeRedis) -> None:
    """The same feed, still subscribed, and the grace timer of the first client's leaving cancelled
    (left running, it would unsubscribe during the next grace period, under the next client)."""
    async with attached(hub, CID, make_follower(FakeTransport())) as first:
        pass
    timer = hub.channels._grace[first.name]
    async with attached(hub, CID, make_follower(FakeTransport())) as second:
        assert second is first and timer.cancelled()
        assert hub.subscribed(CID) and await numsub(fake_redis) == 1
    await eventually(lambda: hub.channel_count == 0)


async def test_churn_never_leaves_a_subscription_or_task_behind(hub: Hub, fake_redis: FakeRedis) -> None:
    baseline = {t for t in asyncio.all_tasks() if not t.done()}

    async def visit(i: int) -> None:
        async with attached(hub, f"conversation-churn-{i % 5:06d}", make_follower(FakeTransport())):
            await asyncio.sleep(0.001 * (i % 7))

    await asyncio.gather(*(visit(i) for i in range(200)))
    await eventually(lambda: hub.channel_count == 0, within=3)
    for i in range(5):
        assert await numsub(fake_redis, f"conversation-churn-{i:06d}") == 0
    await asyncio.sleep(0.01)
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline
    ours = [t for t in leftover if "/server/" in _source_of(t)]
    assert ours == [] and hub.idle()


async def test_slow_client_is_cut_off_without_holding_up_others(hub: Hub, fake_redis: FakeRedis) -> None:
    producer = Producer(fake_redis)
    await producer.start()
    slow_transport, fast_transport = FakeTransport(stalled=True), FakeTransport()
    slow, fast = make_follower(slow_transport, max_buffer=600), make_follower(fast_transport)
    async with attached(hub, CID, slow), attached(hub, CID, fast):
        slow.go_live()
        fast.go_live()
        for i in range(20):
            await producer.delta(f"chunk {i} " + "x" * 50)
        await eventually(lambda: fast_transport.data.count(b"event: delta") == 20)
        assert slow_transport.aborted and slow.closed
        assert 0 < slow_transport.data.count(b"event: delta") < 20
        assert not fast_transport.aborted


async def test_catching_up_buffer_is_bounded(hub: Hub, fake_redis: FakeRedis) -> None:
    producer = Producer(fake_redis)
    await producer.start()
    listener = make_follower(FakeTransport(), max_pending=5)
    async with attached(hub, CID, listener):
        for i in range(12):
            await producer.delta(str(i))
        await eventually(lambda: listener.overflowed)
        assert listener.pending is not None and len(listener.pending) <= 5


async def test_go_live_sends_buffered_frames_after_the_position_only(hub: Hub, fake_redis: FakeRedis) -> None:
    producer = Producer(fake_redis)
    await producer.start()
    transport = FakeTransport()
    listener = make_follower(transport)
    async with attached(hub, CID, listener):
        ids = [await producer.delta(str(i)) for i in range(4)]
        await eventually(lambda: listener.pending is not None and len(listener.pending) == 4)
        listener.position = parse_event_id(ids[1])
        listener.go_live()
        later = await producer.delta("4")
        await eventually(lambda: transport.data.count(b"event: delta") == 3)
    assert sent_ids(transport) == [ids[2], ids[3], later]


async def test_gap_is_filled_after_the_pubsub_connection_drops(hub: Hub, fake_redis: FakeRedis) -> None:
    producer = Producer(fake_redis)
    await producer.start()
    transport = FakeTransport()
    listener = make_follower(transport)
    async with attached(hub, CID, listener):
        listener.go_live()
        ids = [await producer.delta("a")]
        await eventually(lambda: transport.data.count(b"event: delta") == 1)
        connects = hub.reconnects
        await hub.pubsub.drop()
        # published while the hub is not subscribed: only the history has these
        ids += [await producer.delta(c) for c in "bcdefgh"]
        await eventually(lambda: hub.reconnects > connects and hub.ready)
        ids += [await producer.delta(c) for c in "ij"]
        await eventually(lambda: transport.data.count(b"event: delta") == 10, within=5)
    assert sent_ids(transport) == ids
    assert [e.data for e in SSEParser().feed(bytes(transport.data)) if e.type == "delta"] == list("abcdefghij")


async def test_live_clients_get_heartbeats_from_the_hub(hub: Hub) -> None:
    transport = FakeTransport()
    listener = make_follower(transport)
    async with attached(hub, CID, listener):
        listener.go_live()
        await eventually(lambda: transport.data.count(http_chunk(b":\n\n")) >= 2)


class GatedStore(ConversationStore):
    """A store whose history reads wait for ``gate``: a gap fill held mid-flight, deterministically."""

    def __init__(self, redis: FakeRedis) -> None:
        super().__init__(redis, Retention())
        self.gate = asyncio.Event()
        self.waiting = 0

    async def replay(self, conversation_id: str, cursor: str, count: int) -> Any:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().replay(conversation_id, cursor, count)


async def test_a_second_pubsub_drop_during_a_gap_fill_loses_nothing(fake_redis: FakeRedis) -> None:
    """Issue 10: a fill of connection n must never forward or release frames during connection n+1."""
    store = GatedStore(fake_redis)
    async with running_hub(fake_redis, store, timeout_seconds=10, heartbeat_seconds=5) as hub:
        producer = Producer(fake_redis)
        await producer.start()
        transport = FakeTransport()
        listener = make_follower(transport)
        async with attached(hub, CID, listener):
            listener.go_live()
            ids = [await producer.delta("a")]
            await eventually(lambda: transport.data.count(b"event: delta") == 1)
            # (fakeredis notices a dropped connection at the next message: each drop is followed by one)
            await hub.pubsub.drop()  # connection 2: its gap fill waits at the gate
            ids += [await producer.delta("b")]
            await eventually(lambda: hub.pubsub.generation == 2 and store.waiting == 1)
            ids += [await producer.delta("c")]
            await hub.pubsub.drop()  # connection 3, while connection 2's fill is still in flight
            ids += [await producer.delta("d")]
            await eventually(lambda: hub.pubsub.generation == 3 and hub.subscribed(CID))
            store.gate.set()
            ids += [await producer.delta(c) for c in "ef"]
            ids += [await producer.delta("g")]  # the last: anything doubled would come before it
            await eventually(lambda: transport.data.count(b"event: delta") >= 7, within=5)
        assert sent_ids(transport) == ids


async def test_a_malformed_pubsub_message_is_dropped_and_counted(hub: Hub, fake_redis: FakeRedis) -> None:
    producer = Producer(fake_redis)
    await producer.start()
    transport = FakeTransport()
    listener = make_follower(transport)
    async with attached(hub, CID, listener):
        listener.go_live()
        reconnects = hub.reconnects
        await fake_redis.spublish(ConversationKeys(CID).channel, b"not a frame")
        await fake_redis.spublish(ConversationKeys(CID).channel, b"id: 12-x\n\n")
        first = await producer.delta("after")
        await eventually(lambda: transport.data.count(b"event: delta") == 1)
        assert hub.metrics.malformed_messages.value == 2
        assert hub.reconnects == reconnects and not listener.closed
    assert sent_ids(transport) == [first]
