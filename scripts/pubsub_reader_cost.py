"""A node's CPU per pub/sub message on its reading path alone: connection, parser, dispatch.

Starts a redis-server on a free loopback port and a ``server.pubsub.PubSubConnection`` (as a node
runs it, on uvloop) subscribed to ``CHANNELS`` channels, whose sink only counts; ``redis-benchmark``
in its own process SPUBLISHes 160-byte messages round robin over them, pipelined 50 at a time, as a
producer's calls arrive. Prints this process's CPU time (``time.process_time``) per message received,
the median of ``ROUNDS`` rounds. Redis and the publisher run in their own processes and are not
counted.

    .venv/bin/python scripts/pubsub_reader_cost.py [messages] [rounds]
"""

import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop
from redis.asyncio import Redis

from launch.processes import RedisServer
from server.pubsub import PubSubConnection

CHANNELS = 500


class _Counter:
    def __init__(self, messages: int) -> None:
        self.received = 0
        self.subscribed = 0
        self.expected = messages
        self.ready = asyncio.Event()
        """Set when every channel is subscribed."""
        self.done = asyncio.Event()
        """Set when every message has arrived."""

    def wanted_channels(self) -> list[bytes]:
        return [b"sf:{p0}:c%012d:events" % i for i in range(CHANNELS)]  # as redis-benchmark names them

    def on_connected(self, channels: list[bytes], generation: int) -> None:
        pass

    def on_subscribed(self, channel: bytes, generation: int) -> None:
        self.subscribed += 1
        if self.subscribed == CHANNELS:
            self.ready.set()

    def on_messages(self, channel: bytes, frames: list[bytes]) -> None:
        self.received += len(frames)
        if self.received == self.expected:
            self.done.set()

    def on_lost(self, channels: list[bytes]) -> None:
        pass

    def on_moved(self, channels: list[bytes]) -> None:
        pass


async def measure(port: int, messages: int) -> float:
    redis = Redis(port=port)
    sink = _Counter(messages)
    pubsub = PubSubConnection(redis.connection_pool.make_connection, sink, iter(range(1, 10**6)), timeout_seconds=5)  # type: ignore[arg-type]
    task = asyncio.create_task(pubsub.run())
    await asyncio.wait_for(sink.ready.wait(), 30)
    # __rand_int__ picks the channel: 12 digits, from 0 to CHANNELS - 1 with -r CHANNELS.
    publisher = await asyncio.create_subprocess_exec(
        shutil.which("redis-benchmark") or "redis-benchmark",
        "-p",
        str(port),
        "-n",
        str(messages),
        "-P",
        "50",
        "-c",
        "1",
        "-r",
        str(CHANNELS),
        "SPUBLISH",
        "sf:{p0}:c__rand_int__:events",
        "x" * 160,
        stdout=asyncio.subprocess.DEVNULL,
    )
    cpu = time.process_time()
    await publisher.wait()
    await asyncio.wait_for(sink.done.wait(), 60)
    cpu = time.process_time() - cpu
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await redis.aclose()
    return cpu / messages * 1e6


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    server = RedisServer(appendonly=False)
    server.start()
    try:
        costs = [uvloop.run(measure(server.port, messages)) for _ in range(rounds)]
    finally:
        server.remove()
    print("µs of CPU per message, each round:", " ".join(f"{c:.2f}" for c in costs))
    print(f"median: {statistics.median(costs):.2f} µs per message")


if __name__ == "__main__":
    main()
