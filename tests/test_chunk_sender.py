"""The chunk sender (issue 26): when chunks go out and in how many calls, which deltas it
withdraws, when it refreshes an answer's TTLs, and what it asks of the event loop per chunk."""

import asyncio
import cProfile
import pstats
import sys
from typing import Any

import pytest
from fakeredis.aioredis import FakeRedis

from producer import chunk_sender
from producer.publisher import Publisher
from producer.settings import ProducerSettings
from redisio.pipe import Script
from tests.fakes import start_answer
from wire import deltas
from wire.env import Retention
from wire.keys import ConversationKeys

CID = "conversation-0000000001"
TTL = 60


async def test_a_slow_answer_refreshes_its_ttls_by_time_not_by_chunk_count(fake_redis: FakeRedis) -> None:
    """Issue 10: with every-32nd-chunk refreshes a slow model outlived a short retention. The
    publisher asks ``DELTAS`` to refresh them an eighth to a quarter of the retention after it last
    did (by periods of an eighth: no clock kept per answer)."""
    keys = ConversationKeys(CID)
    await fake_redis.hset(keys.state, mapping={"active": "r", "phase": "queued"})
    publisher = Publisher(fake_redis, Retention(ttl_seconds=TTL), retry_seconds=1)
    now = 1000.0
    publisher._sender.clock = lambda: now
    assert await publisher.start(CID, "r", "p") == "ok"
    assert await publisher.delta(CID, "r", "p", 0, "x") is not None
    for key in (*keys.all, keys.fence("r", "p")):
        await fake_redis.expire(key, 5)
    now += 7  # under an eighth of the retention since the last refresh
    await publisher.delta(CID, "r", "p", 1, "x")
    assert 0 < await fake_redis.ttl(keys.state) <= 5
    now += 9  # over a quarter: every key's TTL is the retention again
    await publisher.delta(CID, "r", "p", 2, "x")
    for key in (keys.state, keys.events, keys.fence("r", "p")):  # (no message was stored yet; no draft is kept)
        assert await fake_redis.ttl(key) > TTL - 5
    await publisher.aclose()


async def test_a_delta_withdrawn_before_its_send_is_not_sent_and_one_withdrawn_after_is_not_an_error(
    fake_redis: FakeRedis,
) -> None:
    """The sender checks for withdrawn deltas once per send (in C), not per chunk: the others of the
    send still go out, in order, and a reply for a delta withdrawn in flight is simply dropped."""
    conversations = [ConversationKeys(f"conversation-{n:016d}") for n in range(5)]
    for keys in conversations:
        await start_answer(fake_redis, keys)
    publisher = Publisher(fake_redis, Retention(), retry_seconds=1)
    a, b, c = (publisher.delta_queue(keys.conversation_id, "r", "p")(0, "x", 1) for keys in conversations[:3])
    b.cancel()
    assert [(await a)[0], (await c)[0]] == [1, 1]
    assert [await fake_redis.xlen(keys.events) for keys in conversations[:3]] == [1, 0, 1]  # b never went out
    d, e = (publisher.delta_queue(keys.conversation_id, "r", "p")(0, "y", 1) for keys in conversations[3:])
    for _ in range(3):
        await asyncio.sleep(0)  # sent: in flight
    e.cancel()
    assert (await d)[0] == 1 and e.cancelled()
    await publisher.aclose()


async def test_chunks_that_come_within_the_send_interval_share_one_call(fake_redis: FakeRedis) -> None:
    """Issue 26: a call per loop turn carried ~7 chunks at 6,000 chunks/s, and per call was a third of
    the producer's CPU per chunk. A chunk after a quiet spell goes out at once; those that follow
    within the interval gather into the next call."""
    conversations = [ConversationKeys(f"conversation-{n:016d}") for n in range(3)]
    for keys in conversations:
        await start_answer(fake_redis, keys)
    publisher = Publisher(fake_redis, Retention(), retry_seconds=1, send_interval=0.2)
    sent: list[int] = []
    script = publisher._calls.script

    def counting(*args: Any) -> Any:
        sent.append(len(args[1]) // 2)  # chunks in the call (one group each here)
        return script(*args)

    publisher._calls.script = counting  # type: ignore[method-assign,assignment]
    first = publisher.delta_queue(conversations[0].conversation_id, "r", "p")(0, "a", 1)
    assert (await first)[0] == 1 and sent == [1]  # appended; nothing waited for company
    later = []
    for keys in conversations[1:]:  # two chunks, loop turns apart (a send per turn took one each)
        later.append(publisher.delta_queue(keys.conversation_id, "r", "p")(0, "b", 1))
        for _ in range(3):
            await asyncio.sleep(0)
    assert [(await reply)[0] for reply in later] == [1, 1]
    assert sent == [1, 2]  # the two that came within the interval went out together
    await publisher.aclose()


class _AnsweringCalls:
    """``ScriptCalls`` that record each call's chunk count and answer every chunk appended, a loop
    turn later (what a Redis round trip costs the sender is not what is tested here)."""

    def __init__(self) -> None:
        self.chunks: list[int] = []

    def script(self, script: Script, keys: list[str], args: list[str | int]) -> "asyncio.Future[Any]":
        count = len(keys) // 2  # one group per answer here, one chunk each
        self.chunks.append(count)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(reply.set_result, [1] if count == 1 else [[1]] * count)
        return reply

    async def aclose(self) -> None:
        pass


async def test_at_s2s_rate_the_default_settings_send_a_call_per_five_ms_not_per_two() -> None:
    """Issue 26 (session 18): much of a chunk's cost is its call's, shared by the call's chunks.
    At S2's rate, 6,000 chunks/s over 300 answers, one call per 2 ms carried ~12 chunks (3,435
    EVALSHA calls for the 300 answers; cProfile: 30.0 Python calls per chunk in the producer) where
    one per 5 ms, the side-by-side harness's own tick, carries ~30 (1,771; 26.9). Chunks are queued
    by the clock here, so a slow machine queues as many per second."""
    interval = ProducerSettings.from_env({}).publish_interval_ms / 1000
    calls = _AnsweringCalls()
    sender = chunk_sender.ChunkSender(calls, Retention(), by_slot=False, send_interval=interval)
    answers = [ConversationKeys(f"conversation-{n:016d}") for n in range(300)]
    fences = [keys.fence("r", "p") for keys in answers]
    loop = asyncio.get_running_loop()
    began = loop.time()
    queued, replies = 0, []
    while (elapsed := loop.time() - began) < 0.3:
        while queued < elapsed * 6000:
            n = queued % len(answers)
            replies.append(sender.queue(answers[n], fences[n], queued // len(answers), "token", 1))
            queued += 1
        await asyncio.sleep(0.0005)
    await asyncio.gather(*replies)
    assert sum(calls.chunks) == queued
    assert len(calls.chunks) <= elapsed / 0.005 + 2  # a call per 5 ms at most, and the last one's
    assert queued / len(calls.chunks) >= 20  # ~30 chunks a call (~12 at one per 2 ms)


async def test_queuing_chunks_looks_the_loop_up_once_not_per_chunk(
    fake_redis: FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: ``asyncio.get_running_loop`` is a ``getpid`` system call on Python 3.11 (0.25 µs
    on this VM, more under load), and the sender looked it up for every chunk it queued and sent.
    Measured with ``scripts/producer_alone.py``: 19.0-19.9 µs of producer CPU per chunk before this
    and the sender's single pass, 17.3-17.7 after."""
    conversations = [ConversationKeys(f"conversation-{n:016d}") for n in range(20)]
    for keys in conversations:
        await start_answer(fake_redis, keys)
    publisher = Publisher(fake_redis, Retention(), retry_seconds=1)
    lookups = 0
    real = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        nonlocal lookups
        lookups += sys._getframe(1).f_globals["__name__"] == chunk_sender.__name__  # the sender's own
        return real()

    monkeypatch.setattr(asyncio, "get_running_loop", counted)
    for index in range(3):
        replies = [publisher.delta_queue(keys.conversation_id, "r", "p")(index, "x", 1) for keys in conversations]
        assert [(await reply)[0] for reply in replies] == [1] * len(conversations)
    assert lookups <= 1  # 60 chunks queued and sent in three calls: one lookup, not one per chunk
    await publisher.aclose()


def test_a_send_of_one_delta_per_answer_runs_no_python_function_per_chunk() -> None:
    """Issue 26: a send's grouping formatted each chunk's fence in a method of its own, and its TTL
    check looked each chunk up in Python: per chunk work in a producer tick of a dozen. Now the
    Python functions a send's grouping and TTL check run are as many for 100 chunks as for 10
    (comprehensions and C); the loop that finds runs runs only when neighbours share a fence."""

    def python_calls(chunks: int, touch_first: bool) -> int:
        sender = chunk_sender.ChunkSender(None, Retention(ttl_seconds=TTL), by_slot=False, send_interval=0)  # type: ignore[arg-type]
        items = [
            (keys, keys.fence("r", "p"), 5, "text", 1) for keys in (ConversationKeys(f"c{n}") for n in range(chunks))
        ]
        if not touch_first:
            sender._due(items)  # refreshed now: the next send touches none
        profile = cProfile.Profile()
        profile.enable()
        [call] = deltas.delta_calls(items, Retention(), by_slot=False, touch=sender._due(items))
        profile.disable()
        assert call.chunks == chunks and len(call.keys) == 2 * chunks
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        return sum(row[1] for (path, _, _), row in stats.items() if path != "~")

    for touch_first in (True, False):
        assert python_calls(100, touch_first) == python_calls(10, touch_first)
