"""The CPU of one pipelined script call through ``redisio.pipe.CommandPipe``, against its floor.

Starts a redis-server on a free loopback port (on one core, this process on another when there are
two) and sends, one at a time, ``CALLS`` script calls shaped as a producer tick's ``DELTAS`` call
(13 chunks: 26 keys, 91 arguments; the script replies a list of 13), awaiting each: once through the
pipe, once as the same bytes on a bare asyncio protocol that parses the replies with hiredis (what
any asyncio client pays for the socket and the parse). Prints this process's CPU time per call for
each, every round and the lowest. Redis is not counted.

    .venv/bin/python scripts/pipe_cost.py [calls] [rounds]
"""

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hiredis
import uvloop
from redis.asyncio import Redis

from launch.processes import RedisServer, pin_apart
from redisio.pipe import CommandPipe, Script, pack

CHUNKS = 13
"""A tick's chunks at S2's rate with the producer's send interval of sessions 14-17 (2 ms; its
default is 5 ms since session 18: ~30 chunks a call)."""
TICK = Script("local r = {} for i = 1, #KEYS / 2 do r[i] = {1} end return r")
KEYS = [key for i in range(CHUNKS) for key in (f"fence{i}", f"events{i}")]
ARGS: list[str | int] = [1000, "", "", *range(CHUNKS), *(f"token {i} of the answer" for i in range(CHUNKS))]


async def through_pipe(url: str, calls: int) -> float:
    redis = Redis.from_url(url)
    pipe = CommandPipe(redis)
    await pipe.script(TICK, KEYS, ARGS)  # connected, and the script cached
    cpu = time.process_time()
    for _ in range(calls):
        await pipe.script(TICK, KEYS, ARGS)
    used = time.process_time() - cpu
    await pipe.aclose()
    await redis.aclose()
    return 1e6 * used / calls


class _Bare(asyncio.Protocol):
    def __init__(self) -> None:
        self.replies = hiredis.Reader()
        self.waiting: asyncio.Future[Any] | None = None

    def data_received(self, data: bytes) -> None:
        self.replies.feed(data)
        reply = self.replies.gets()
        while reply is not False:
            assert self.waiting is not None
            self.waiting.set_result(reply)
            reply = self.replies.gets()


async def bare(port: int, calls: int) -> float:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_Bare, "127.0.0.1", port)
    cpu = time.process_time()
    for _ in range(calls):
        protocol.waiting = loop.create_future()
        transport.write(pack([b"EVALSHA", TICK.sha, len(KEYS), *KEYS, *ARGS]))
        await protocol.waiting
    used = time.process_time() - cpu
    transport.close()
    return 1e6 * used / calls


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    server = RedisServer()
    server.start()
    assert server.proc is not None
    pin_apart(server.proc.pid)
    try:
        piped: list[float] = []
        floor: list[float] = []
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            for _ in range(rounds):
                piped.append(runner.run(through_pipe(server.url, calls)))
                floor.append(runner.run(bare(server.port, calls)))
        print("µs of CPU per call, each round:")
        print("  the pipe:          " + " ".join(f"{x:.1f}" for x in piped) + f"  lowest {min(piped):.1f}")
        print("  a bare protocol:   " + " ".join(f"{x:.1f}" for x in floor) + f"  lowest {min(floor):.1f}")
    finally:
        server.remove()


if __name__ == "__main__":
    main()
