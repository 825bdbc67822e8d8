"""The node reads pub/sub messages in batches straight from hiredis, on a real redis-server.

redis-py's per-message ``read_response`` (a coroutine, a timeout context, and under RESP3 a push
dispatch of two more coroutines and a logger lookup) was 8 % of a node's CPU in S2's shape
(docs/measurements.md, pubsub-batches). A burst is now parsed in one go, in order, and error
replies still come back as values.
"""

import asyncio
from typing import Any

import pytest
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from launch.processes import RedisServer
from server.pubsub import PubSubConnection

CHANNEL = b"sf:{p0}:batches:events"


class _Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.runs: list[int] = []
        """How many messages each hand-over carried."""
        self.subscribed = asyncio.Event()
        self.want = 0
        self.arrived = asyncio.Event()
        """Set once ``want`` messages have arrived."""

    def wanted_channels(self) -> list[bytes]:
        return [CHANNEL]

    def on_connected(self, channels: list[bytes], generation: int) -> None:
        pass

    def on_subscribed(self, channel: bytes, generation: int) -> None:
        self.subscribed.set()

    def on_messages(self, channel: bytes, frames: list[bytes]) -> None:
        self.messages += frames
        self.runs.append(len(frames))
        if len(self.messages) >= self.want:
            self.arrived.set()

    async def wait_for(self, count: int) -> None:
        self.want = count
        if len(self.messages) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 10)

    def on_lost(self, channels: list[bytes]) -> None:
        pass

    def on_moved(self, channels: list[bytes]) -> None:
        pass


async def _publish(port: int, messages: list[bytes]) -> None:
    """SPUBLISH ``messages`` in one write on a raw socket (redis-py's own reads are counted here)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"*3\r\n$8\r\nSPUBLISH\r\n$%d\r\n%s\r\n" % (len(CHANNEL), CHANNEL)
    writer.write(b"".join(head + b"$%d\r\n%s\r\n" % (len(m), m) for m in messages))
    for _ in messages:
        assert (await reader.readline()).startswith(b":")
    writer.close()
    await writer.wait_closed()


async def test_a_burst_is_read_in_order_without_a_per_message_read(
    redis_process: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting, per_message = False, 0
    original = _AsyncHiredisParser.read_response

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal per_message
        per_message += counting
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(_AsyncHiredisParser, "read_response", counted)
    redis = Redis.from_url(redis_process.url)
    sink = _Sink()
    pubsub = PubSubConnection(
        redis.connection_pool.make_connection,
        sink,
        iter(range(1, 100)),
        timeout_seconds=5,
    )
    task = asyncio.create_task(pubsub.run())
    try:
        await asyncio.wait_for(sink.subscribed.wait(), 10)
        counting = True
        sent = [b"%05d" % i + b"x" * 150 for i in range(2000)]
        await _publish(redis_process.port, sent)
        await sink.wait_for(len(sent))
        assert sink.messages == sent
        assert per_message == 0, "pub/sub messages went through redis-py's per-message read_response"
        # And handed to the sink a read's worth at a time (the feed then writes each client once
        # per read): one call per message before.
        assert len(sink.runs) < len(sent) / 10, sink.runs

        # An error reply is a value that fails its request, not a lost connection.
        with pytest.raises(ResponseError):
            await pubsub.request(b"nosuchcommand", [b"x"])
        assert pubsub.reconnects == 0
        await _publish(redis_process.port, [b"after"])
        await sink.wait_for(len(sent) + 1)
        assert sink.messages[-1] == b"after"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
