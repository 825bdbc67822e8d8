"""Redis CPU per chunk on the publish path, against the floor of any relay that keeps history.

Starts its own redis-server on a free loopback port, with one subscribed connection on every
channel (a node) reading and discarding, and sends N chunks over 200 conversations in ticks of
``--tick`` chunks (the side-by-side harness's shape: 50 chunks per 5 ms tick is its S2), three ways,
five rounds interleaved, printing Redis' own CPU time (INFO cpu) per chunk:

- ``DELTAS``: the product's path, ``wire.scripts.delta_commands`` (what the producer and the harness
  send), one fenced, atomic call per tick;
- the same call unfenced (``scripts/unfenced_deltas.py``): ``XADD`` + ``SPUBLISH`` of each chunk in
  one call, without the owner's fence, the index check or the escaping: ``DELTAS`` against it is what
  the guarantees cost;
- the floor: a plain pipeline of ``XADD`` (``MAXLEN ~``) + ``SPUBLISH`` of the same chunks, with no
  fencing and no index check (what a relay that keeps history cannot go below);
- a plain ``SPUBLISH`` of the same frames (a relay that keeps nothing).

    .venv/bin/python scripts/redis_cost.py [N] [--tick T] [--conversations C] [--aof]

Redis runs as the harness runs it (no append-only file) unless ``--aof`` (as compose runs it).
"""

import argparse
import asyncio
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis as sync_redis
from redis.asyncio import Redis

from launch.processes import RedisServer
from scripts import unfenced_deltas
from wire import deltas, scripts
from wire.env import Retention
from wire.keys import ConversationKeys

CONVERSATIONS = 200
TEXT = "x" * 160  # the harness's payload size
RETENTION = Retention()


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


Commands = list[list[Any]]


def batched(keys: list[ConversationKeys], nxt: list[int], tick: list[int]) -> Commands:
    items = []
    for c in tick:
        items.append((keys[c], "r", "p", nxt[c], TEXT))
        nxt[c] += 1
    return [argv for argv, _ in scripts.delta_commands(items, RETENTION)]


def unfenced(keys: list[ConversationKeys], nxt: list[int], tick: list[int]) -> Commands:
    items = [(keys[c], "r", "p", 0, TEXT) for c in tick]
    return [argv for argv, _ in unfenced_deltas.delta_commands(items, RETENTION)]


def floor(keys: list[ConversationKeys], nxt: list[int], tick: list[int]) -> Commands:
    commands: Commands = []
    for c in tick:
        k = keys[c]
        commands.append(["XADD", k.events, "MAXLEN", "~", RETENTION.max_events, "*", "t", "delta", "d", TEXT])
        commands.append(["SPUBLISH", k.channel, "id: 1-0\nevent: delta\ndata: " + TEXT + "\n\n"])
    return commands


def publish(keys: list[ConversationKeys], nxt: list[int], tick: list[int]) -> Commands:
    return [["SPUBLISH", keys[c].channel, "id: 1-0\nevent: delta\ndata: " + TEXT + "\n\n"] for c in tick]


WAYS: dict[str, Callable[[list[ConversationKeys], list[int], list[int]], Commands]] = {
    "DELTAS (the product)": batched,
    "the same call unfenced": unfenced,
    "XADD + SPUBLISH pipelined (the floor)": floor,
    "SPUBLISH alone": publish,
}


async def run(
    admin: "sync_redis.Redis", client: Redis, keys: list[ConversationKeys], way: str, n: int, tick: int
) -> float:
    """Fresh answers, then ``n`` chunks sent ``way`` in ticks of ``tick``: Redis' CPU per chunk, µs."""
    for k in keys:  # a fresh answer each, claimed as the producer claims it (START makes its fence)
        admin.delete(k.events, k.draft, k.state, k.fence("r", "p"))
        admin.hset(k.state, mapping={"active": "r", "phase": "queued"})
        argv = scripts.conversation_argv(k.channel, RETENTION.max_events, RETENTION.ttl_seconds, "r", "p", "{}", "0")
        admin.eval(scripts.START, len(k.all), *k.all, *argv)
    for command in [*scripts.setup_commands(), *unfenced_deltas.setup_commands()]:
        admin.execute_command(*command)
    nxt = [0] * len(keys)
    make = WAYS[way]
    before = redis_cpu(admin)
    for start in range(0, n, tick):
        pipe = client.pipeline(transaction=False)
        for command in make(keys, nxt, [j % len(keys) for j in range(start, start + tick)]):
            pipe.execute_command(*command)
        replies = await pipe.execute()
        if way.startswith("DELTAS") and any(int(r[0]) != 1 for r in deltas.delta_replies(replies[-1], tick)):
            raise SystemExit(f"the script refused a chunk: {replies[-1]!r}")
    return 1e6 * (redis_cpu(admin) - before) / n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, nargs="?", default=100_000)
    parser.add_argument("--tick", type=int, default=50, help="chunks per tick (default: 50, the harness's S2)")
    parser.add_argument(
        "--conversations",
        type=int,
        default=CONVERSATIONS,
        help="over how many (default: 200; 5 puts 10 of each in a tick)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds, interleaved; the best counts (default: 5)")
    parser.add_argument("--aof", action="store_true", help="Redis append-only, as compose runs it (the harness: off)")
    args = parser.parse_args()
    server = RedisServer(appendonly=args.aof)
    server.start()
    if server.proc is not None and len(os.sched_getaffinity(0)) > 1:
        # Redis on one core, this client on another: the ways are compared without their contention.
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(server.proc.pid, {cores[0]})
        os.sched_setaffinity(0, set(cores[1:]))
    try:
        admin = sync_redis.Redis(port=server.port)
        client = Redis(port=server.port)
        keys = [ConversationKeys(f"conversation{i:06d}aaaaaa") for i in range(args.conversations)]
        reader = await subscribe_all(server.port, [k.channel for k in keys])
        timings: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                timings[way].append(await run(admin, client, keys, way, args.n, args.tick))
        best = {way: min(runs) for way, runs in timings.items()}
        print(
            f"{args.n} chunks, {args.tick} per tick, {args.conversations} conversations, one subscriber on each"
            f" channel, append-only {'on' if args.aof else 'off'}"
        )
        floor_runs = timings["XADD + SPUBLISH pipelined (the floor)"]
        for way, runs in timings.items():
            # Each round's ratio to the floor of the same round, then their median: on a shared
            # machine whose speed drifts, steadier than the best of each way.
            ratio = statistics.median(t / f for t, f in zip(runs, floor_runs, strict=True))
            print(
                f"{way}: {best[way]:.2f} µs/chunk at best, {ratio:.2f}x the floor (median of the rounds' ratios;"
                f" runs: {', '.join(f'{t:.2f}' for t in runs)})"
            )
        reader.cancel()
        await client.aclose()
        admin.close()
    finally:
        server.remove()


if __name__ == "__main__":
    asyncio.run(main())
