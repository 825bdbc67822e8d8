"""The producer's own CPU per chunk, without the nodes and the load tester on the same cores.

Starts a redis-server on a free loopback port, puts ``CONVERSATIONS`` answers in the queued state,
and writes them all at once in this process through ``producer.answer.AnswerWriter`` with the
simulated model at S2's pace (20 chunks/s each, 120 chunks an answer), with the producer process's
garbage collector settings, then prints this process's CPU time (``time.process_time``) per
published chunk. Redis runs in its own process, on another core than this one, and is not
counted. Steadier than ``producer_cost.py``, which shares the cores with a whole cluster.
It also runs the simulated model alone (the same answers, paced the same, published nowhere): the
difference is the producer's own cost per chunk, the model's pacing set aside. And, in the same run,
the floor: the same chunks at the same pace and send interval written as plain pipelined XADD +
SPUBLISH commands on a bare asyncio protocol (no fence, no futures, no objects per chunk; replies
only counted): what any Python producer on this loop pays for the sockets and the encoding.

    .venv/bin/python scripts/producer_alone.py [conversations] [rounds] [tokens per second] [cluster|calls]

With ``calls``, it counts instead of timing: the function calls (Python's and C's, by ``cProfile``)
per token of the producer, of the floor and of the model alone, one round each. Unlike CPU time on a
shared VM it does not move from one run to the next, so a change to the per-token path shows in it
at once (the figure is cProfile's, so it says how much work, not how long).

With ``cluster``, each round also writes the same answers to a 3-primary Redis Cluster it starts
(Redis CPU summed over the three).

A faster model (the third argument; S2's 20 by default) shows the writer's coalescing: tokens that
come while an answer's delta is in flight go out as one delta, where the floor writes each alone.
"""

import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hiredis
import uvloop
from redis.asyncio import RedisCluster

from launch.gc_tuning import tune_gc
from launch.processes import RedisClusterServers, RedisServer, pin_apart
from launch.redis_client import connect
from producer.answer import AnswerWriter
from producer.generator import Pacing, SimulatedLLM
from producer.metrics import ProducerMetrics
from producer.publisher import Publisher
from producer.settings import ProducerSettings
from redisio.pipe import pack
from wire.env import Retention
from wire.events import Job
from wire.keys import ConversationKeys

TOKENS = 120
PACE = 20.0
"""The simulated model's tokens per second per answer (the third argument)."""


def _model() -> SimulatedLLM:
    return SimulatedLLM(Pacing(ttft_seconds=0.1, tokens_per_second=PACE, jitter=0.1))


def _cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    url: str, conversations: int, round_: int, redis_pids: list[int], *, cluster: bool = False
) -> tuple[float, str]:
    """The producer's CPU per token, and what the round cost Redis and how fast it went."""
    redis = connect(url, max_connections=64, timeout_seconds=10, cluster=cluster)
    if isinstance(redis, RedisCluster):
        await redis.initialize()
    metrics = ProducerMetrics()
    interval = ProducerSettings.from_env().publish_interval_ms / 1000
    writer_publisher = Publisher(redis, Retention.from_env(), retry_seconds=10, send_interval=interval)
    writer = AnswerWriter(
        writer_publisher,
        _model(),
        metrics,
        owner="bench",
        takeover="fail",
    )
    jobs = []
    for i in range(conversations):
        job = Job(f"bench{round_}c{i:06d}", f"r{i}", f"m{i}", f"tell me about topic {i}", TOKENS)
        await redis.hset(
            ConversationKeys(job.conversation_id).state,
            mapping={"active": job.response_id, "phase": "queued"},
        )
        jobs.append(job)
    cpu, redis_cpu, wall = time.process_time(), sum(map(_cpu_seconds, redis_pids)), time.monotonic()
    await asyncio.gather(*(writer.answer(job, None, recovered=False) for job in jobs))
    used = time.process_time() - cpu
    redis_used, wall = sum(map(_cpu_seconds, redis_pids)) - redis_cpu, time.monotonic() - wall
    chunks = metrics.tokens.value  # the model's tokens, whatever deltas carried them
    events = 0
    for job in jobs:
        events += await redis.xlen(ConversationKeys(job.conversation_id).events) - 1  # all but done
    await writer_publisher.aclose()
    await redis.aclose()
    seen = (
        f"{chunks / events:.2f} tokens a delta, Redis {1e6 * redis_used / chunks:.1f} µs a token, "
        f"{chunks / wall:.0f} tokens/s"
    )
    return 1e6 * used / chunks, seen


async def model_alone(conversations: int) -> float:
    """CPU per chunk of the simulated model's pacing by itself (what any producer pays to pace it)."""
    model = _model()

    async def one(i: int) -> int:
        count = 0
        async for _ in model.generate(f"tell me about topic {i}", TOKENS):
            count += 1
            if count == TOKENS:
                break
        return count

    cpu = time.process_time()
    chunks = sum(await asyncio.gather(*(one(i) for i in range(conversations))))
    return 1e6 * (time.process_time() - cpu) / chunks


class _Counted(asyncio.Protocol):
    """The floor's connection: replies are parsed (hiredis) and counted, nothing else."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.replies = 0
        self.expected = -1
        """Set once the chunks are all queued: the replies to wait for."""
        self.all_replied = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.reader.gets() is not False:
            self.replies += 1
        if self.replies == self.expected and not self.all_replied.done():
            self.all_replied.set_result(None)


async def floor(port: int, conversations: int, round_: int) -> float:
    """CPU per chunk of the plainest publisher: each interval's chunks as XADD + SPUBLISH, one write."""
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(_Counted, "127.0.0.1", port)
    interval = ProducerSettings.from_env().publish_interval_ms / 1000
    model = _model()
    queued: list[tuple[ConversationKeys, str]] = []
    maxlen = str(Retention.from_env().max_events)

    def send() -> None:
        if queued:
            transport.write(
                b"".join(
                    pack([b"XADD", keys.events, b"MAXLEN", b"~", maxlen, b"*", b"d", text])
                    + pack([b"SPUBLISH", keys.channel, text])
                    for keys, text in queued
                )
            )
            queued.clear()
        if sending:
            loop.call_later(interval, send)

    async def one(i: int) -> int:
        keys = ConversationKeys(f"floor{round_}c{i:06d}")
        count = 0
        async for text in model.generate(f"tell me about topic {i}", TOKENS):
            queued.append((keys, text))
            count += 1
            if count == TOKENS:
                break
        return count

    sending = True
    loop.call_soon(send)
    cpu = time.process_time()
    chunks = sum(await asyncio.gather(*(one(i) for i in range(conversations))))
    sending = False
    conn.expected = 2 * chunks
    if conn.replies < conn.expected:
        await conn.all_replied
    used = time.process_time() - cpu
    transport.close()
    return 1e6 * used / chunks


def count_calls(url: str, port: int, conversations: int, redis_pid: int) -> None:
    """Function calls per token of the producer, the floor and the model alone (``calls``)."""
    tokens = conversations * TOKENS
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        for name, work in (
            ("the producer", lambda: measure(url, conversations, 0, [redis_pid])),
            ("the floor", lambda: floor(port, conversations, 0)),
            ("the model alone", lambda: model_alone(conversations)),
        ):
            profile = cProfile.Profile()
            profile.enable()
            runner.run(work())
            profile.disable()
            calls = sum(entry[1] for entry in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]
            print(f"{name}: {calls / tokens:.1f} function calls per token")


def main() -> None:
    conversations = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    global PACE
    PACE = float(sys.argv[3]) if len(sys.argv) > 3 else PACE
    on_cluster = len(sys.argv) > 4 and sys.argv[4] == "cluster"
    tune_gc()  # as the producer process does
    server = RedisServer()
    server.start()
    assert server.proc is not None
    pin_apart(server.proc.pid)
    if len(sys.argv) > 4 and sys.argv[4] == "calls":
        try:
            count_calls(server.url, server.port, conversations, server.proc.pid)
        finally:
            server.remove()
        return
    cluster = RedisClusterServers(primaries=3, replicas=0)
    if on_cluster:
        cluster.start()
    try:
        clustered: list[float] = []
        own, floors, ratios = [], [], []
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            for r in range(rounds):
                assert server.proc is not None
                cost, seen = runner.run(measure(server.url, conversations, r, [server.proc.pid]))
                pacing = runner.run(model_alone(conversations))
                plain = runner.run(floor(server.port, conversations, r))
                own.append(cost - pacing)
                floors.append(plain - pacing)
                ratios.append((cost - pacing) / (plain - pacing))
                print(
                    f"round {r}: {cost:.1f} µs of producer CPU per chunk, of which the simulated model's "
                    f"pacing {pacing:.1f}: {cost - pacing:.1f} µs of its own; the floor {plain - pacing:.1f}; "
                    f"{seen}"
                )
                if on_cluster:
                    pids = [member.proc.pid for member in cluster.members if member.proc is not None]
                    on, seen = runner.run(measure(cluster.url, conversations, r, pids, cluster=True))
                    clustered.append(on - pacing)
                    print(f"  on a 3-primary cluster: {on - pacing:.1f} µs of its own; {seen}")
        print(
            f"median of its own: {statistics.median(own):.1f} µs per chunk over {rounds} rounds; "
            f"the floor {statistics.median(floors):.1f}; {statistics.median(ratios):.2f} times the floor; "
            f"lowest {min(own):.1f}, the floor's {min(floors):.1f}"
            + (f"; on a cluster {statistics.median(clustered):.1f}" if clustered else "")
        )
    finally:
        server.remove()
        cluster.remove()


if __name__ == "__main__":
    main()
