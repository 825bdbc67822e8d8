"""Redis CPU per chunk (the DELTA script) and per extra subscriber, against a plain SPUBLISH.

Starts its own redis-server on a free loopback port, appends N deltas to 200 conversations through
the project's DELTA script (pipelined 1,000 at a time, like the producer), then sends as many plain
SPUBLISH of an event-sized frame, and prints Redis' own CPU time (INFO cpu) per call. Repeated with
0, 1 and 4 subscribed connections (nodes) per channel, which read and discard what they get.

    .venv/bin/python scripts/redis_cost.py [N]
    .venv/bin/python scripts/redis_cost.py --breakdown [N]

``--breakdown`` times variants of the DELTA script instead, each without one of its calls (and an
empty script with the same arguments), with a harness-sized chunk and one subscriber, three rounds
interleaved: where a chunk's Redis CPU goes.
"""

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis as sync_redis
from redis.asyncio import Redis

from launch.processes import RedisServer
from wire import scripts
from wire.events import delta_lines
from wire.keys import ConversationKeys

CONVERSATIONS = 200
BATCH = 1000


def redis_cpu(client: "sync_redis.Redis") -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def subscribe_all(port: int, channels: list[str]) -> "asyncio.Task[None]":
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for channel in channels:
        writer.write(b"*2\r\n$10\r\nSSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel.encode()))

    async def drain() -> None:
        while await reader.read(1 << 20):
            pass

    return asyncio.create_task(drain())


@dataclass
class Bench:
    port: int
    admin: "sync_redis.Redis"
    client: Redis
    keys: list[ConversationKeys]


@asynccontextmanager
async def fresh_redis() -> AsyncIterator[Bench]:
    """A redis-server of its own, with clients and the conversations' key names; removed after."""
    server = RedisServer()
    server.start()
    try:
        admin = sync_redis.Redis(port=server.port)
        client = Redis(port=server.port)
        keys = [ConversationKeys(f"conversation{i:06d}aaaaaa") for i in range(CONVERSATIONS)]
        try:
            yield Bench(server.port, admin, client, keys)
        finally:
            await client.aclose()
            admin.close()
    finally:
        server.remove()


async def append_deltas(
    admin: "sync_redis.Redis", client: Redis, keys: list[ConversationKeys], lua: str, n: int, text: str
) -> float:
    """Fresh answers, then ``n`` chunks of ``text`` through the script ``lua`` pipelined like the
    producer: Redis' CPU per chunk, in µs."""
    for k in keys:
        admin.delete(k.events, k.draft)
        admin.hset(k.state, mapping={"active": "r", "owner": "p", "next": 0})
    sha = admin.script_load(lua)
    nxt = [0] * len(keys)
    before = redis_cpu(admin)
    replies: list[Any] = []
    for start in range(0, n, BATCH):
        pipe = client.pipeline(transaction=False)
        for j in range(start, start + BATCH):
            c = j % len(keys)
            k, i = keys[c], nxt[c]
            nxt[c] += 1
            argv = scripts.conversation_argv(k.channel, 10_000, 86_400, "r", "p", i, text)
            pipe.evalsha(sha, 4, *k.all, *argv, delta_lines(text), int(time.time() * 1000))
        replies = await pipe.execute()
    if replies[-1] is None or replies[-1][0] != 1:
        raise SystemExit(f"the script refused a chunk: {replies[-1]!r}")
    return 1e6 * (redis_cpu(admin) - before) / n


async def measure(subscribers: int, n: int) -> None:
    async with fresh_redis() as r:
        readers = [await subscribe_all(r.port, [k.channel for k in r.keys]) for _ in range(subscribers)]
        delta_us = await append_deltas(r.admin, r.client, r.keys, scripts.DELTA, n, "tok ")
        frame = "id: 1-0\nevent: delta\ndata: " + delta_lines("tok ") + "\n\n"
        before = redis_cpu(r.admin)
        for start in range(0, n, BATCH):
            pipe = r.client.pipeline(transaction=False)
            for j in range(start, start + BATCH):
                pipe.execute_command("SPUBLISH", r.keys[j % CONVERSATIONS].channel, frame)
            await pipe.execute()
        publish_cpu = redis_cpu(r.admin) - before
        print(
            f"{subscribers} subscribers: DELTA {delta_us:.1f} µs/chunk, "
            f"plain SPUBLISH {1e6 * publish_cpu / n:.1f} µs/message"
        )
        for task in readers:
            task.cancel()


def _without(original: str, removed: str, replacement: str = "") -> str:
    if removed not in original:
        raise SystemExit(f"the DELTA script changed: no {removed!r} in it; update the breakdown")
    return original.replace(removed, replacement)


def variants() -> dict[str, str]:
    base = scripts.DELTA
    no_checks = _without(base, "if string.find(data, '\\r', 1, true) then error('event data must not hold CR') end")
    return {
        "as it is": base,
        "without APPEND (the draft)": _without(base, "redis.call('APPEND', DRAFT, ARGV[7])"),
        "without the data checks": _without(no_checks, "if string.find(data, '\\n', 1, true) then", "if false then"),
        "without SPUBLISH": _without(base, "redis.call('SPUBLISH', CHANNEL,", "select('#', CHANNEL,"),
        "without XADD": _without(
            base, "redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 't', etype, 'd', data)", "'1-1'"
        ),
        "an empty script": "return {1, '1-1'}",
    }


async def breakdown(n: int) -> None:
    async with fresh_redis() as r:
        reader = await subscribe_all(r.port, [k.channel for k in r.keys])
        text = "BM|7M7NZp4xO7_IaJ2dv0UZVA|123|1764543000000000000|" + "x" * 100  # the bench harness's size
        timings: dict[str, list[float]] = {name: [] for name in variants()}
        for _ in range(3):
            for name, lua in variants().items():
                timings[name].append(await append_deltas(r.admin, r.client, r.keys, lua, n, text))
        for name, runs in timings.items():
            print(f"DELTA {name}: {min(runs):.1f} µs/chunk (three runs: {', '.join(f'{t:.1f}' for t in runs)})")
        reader.cancel()


async def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--breakdown"]:
        await breakdown(int(args[1]) if len(args) > 1 else 20_000)
        return
    n = int(args[0]) if args else 40_000
    for subscribers in (0, 1, 4):
        await measure(subscribers, n)


if __name__ == "__main__":
    asyncio.run(main())
