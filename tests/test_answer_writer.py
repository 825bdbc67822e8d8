"""The answer writer's coalescing (issue 26): tokens that come while the answer's previous delta is
in flight go out together as the next delta, so a model faster than Redis costs Redis a call per
round trip, not per token; at a trickle each token still goes out alone and at once."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fakeredis.aioredis import FakeRedis

from launch.processes import RedisServer
from producer.answer import AnswerWriter
from producer.generation import GenerationFailed, Generator
from producer.metrics import ProducerMetrics
from producer.publisher import Publisher
from tests.fakes import append_deltas, start_answer
from wire.env import Retention
from wire.events import Job
from wire.keys import ConversationKeys

CID = "conversation-0000000001"


class Burst:
    """A model that has ``count`` tokens ready at once, then (if ``pause``) waits before the rest."""

    def __init__(self, count: int, rest: int = 0) -> None:
        self.count, self.rest = count, rest
        self.pause = asyncio.Event()

    async def generate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        for n in range(self.count):
            yield f"t{n} "
        if self.rest:
            await self.pause.wait()
            for n in range(self.count, self.count + self.rest):
                yield f"t{n} "


async def queued(redis: FakeRedis, max_tokens: int = 1000) -> Job:
    keys = ConversationKeys(CID)
    await redis.hset(keys.state, mapping={"active": "r", "phase": "queued", "start": "0-0"})
    return Job(CID, "r", "m", "prompt", max_tokens)


async def events(redis: FakeRedis) -> list[dict[bytes, bytes]]:
    entries: Any = await redis.xrange(ConversationKeys(CID).events)
    return [fields for _, fields in entries]


def writer(redis: FakeRedis, generator: Any) -> tuple[AnswerWriter, Publisher]:
    publisher = Publisher(redis, Retention(), retry_seconds=1)
    return AnswerWriter(publisher, generator, ProducerMetrics(), owner="p", takeover="fail"), publisher


async def test_tokens_that_come_while_a_delta_is_in_flight_go_out_together(fake_redis: FakeRedis) -> None:
    """Before: 200 ready tokens were 200 deltas, each waiting for the one before it."""
    answer, publisher = writer(fake_redis, Burst(200))
    await answer.answer(await queued(fake_redis), None, recovered=False)
    stored = await events(fake_redis)
    deltas = [fields[b"d"] for fields in stored if fields[b"t"] == b"delta"]
    assert b"".join(deltas) == "".join(f"t{n} " for n in range(200)).encode()
    assert len(deltas) <= 10  # one per round trip, not one per token
    assert b'"chunks":%d' % len(deltas) in stored[-1][b"d"]  # done counts the delta events
    assert answer.metrics.tokens.value == 200
    await publisher.aclose()


async def test_max_tokens_counts_tokens_not_deltas(fake_redis: FakeRedis) -> None:
    answer, publisher = writer(fake_redis, Burst(200))
    await answer.answer(await queued(fake_redis, max_tokens=30), None, recovered=False)
    stored = await events(fake_redis)
    text = b"".join(fields[b"d"] for fields in stored if fields[b"t"] == b"delta")
    assert text == "".join(f"t{n} " for n in range(30)).encode()
    assert b'"finish_reason":"length"' in stored[-1][b"d"]
    await publisher.aclose()


async def test_a_token_waiting_for_its_turn_goes_out_when_the_reply_comes_not_with_the_next_token(
    fake_redis: FakeRedis,
) -> None:
    """The model pauses after a burst: the burst's last tokens must not wait for the pause to end."""
    burst = Burst(5, rest=1)
    answer, publisher = writer(fake_redis, burst)
    task = asyncio.create_task(answer.answer(await queued(fake_redis), None, recovered=False))
    try:

        async def text() -> bytes:
            return b"".join(fields[b"d"] for fields in await events(fake_redis) if fields[b"t"] == b"delta")

        last = b""

        def all_five() -> bool:
            return last == b"t0 t1 t2 t3 t4 "

        async with asyncio.timeout(2):
            while not all_five():
                last = await text()
                await asyncio.sleep(0.01)
        burst.pause.set()
        await asyncio.wait_for(task, 2)
        assert await text() == b"t0 t1 t2 t3 t4 t5 "
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.aclose()


async def test_at_a_trickle_every_token_is_its_own_delta(fake_redis: FakeRedis) -> None:
    class Slow:
        async def generate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
            for n in range(5):
                await asyncio.sleep(0.02)  # far longer than a fake Redis round trip
                yield f"t{n} "

    answer, publisher = writer(fake_redis, Slow())
    await answer.answer(await queued(fake_redis), None, recovered=False)
    deltas = [fields[b"d"] for fields in await events(fake_redis) if fields[b"t"] == b"delta"]
    assert deltas == [b"t0 ", b"t1 ", b"t2 ", b"t3 ", b"t4 "]
    await publisher.aclose()


async def test_a_retried_answer_skips_the_tokens_it_published(fake_redis: FakeRedis) -> None:
    """A producer that claims its own answer again (its earlier attempt got that far) starts after
    the tokens Redis holds, whatever deltas carried them: four tokens in two deltas here."""
    keys = ConversationKeys(CID)
    await start_answer(fake_redis, keys)
    await append_deltas(fake_redis, [(keys, "r", "p", 0, "t0 ", 1), (keys, "r", "p", 1, "t1 t2 t3 ", 3)])
    answer, publisher = writer(fake_redis, Burst(12))
    await answer.answer(Job(CID, "r", "m", "prompt", 1000), None, recovered=False)
    stored = await events(fake_redis)
    text = b"".join(fields[b"d"] for fields in stored if fields[b"t"] == b"delta")
    assert text == "".join(f"t{n} " for n in range(12)).encode()
    await publisher.aclose()


async def test_deltas_redis_lost_are_sent_again_as_they_were_sent(fake_redis: FakeRedis) -> None:
    """A failover to a replica that lagged loses deltas Redis had acknowledged: the next delta is
    refused as behind, and the writer sends the lost ones again from its copy, each with the tokens
    it first carried, so nothing is lost or doubled."""
    burst = Burst(5, rest=5)
    answer, publisher = writer(fake_redis, burst)
    task = asyncio.create_task(answer.answer(await queued(fake_redis), None, recovered=False))
    keys = ConversationKeys(CID)
    try:
        async with asyncio.timeout(2):
            while len(deltas := await delta_entries(fake_redis)) < 2 or b"t4 " not in deltas[-1][1]:  # noqa: ASYNC110 - polling Redis
                await asyncio.sleep(0.01)
        assert deltas[-1][1] == b"t1 t2 t3 t4 "  # four tokens in one delta
        await fake_redis.xdel(keys.events, deltas[-1][0])  # lost with the failover, the fence with it
        await fake_redis.decrby(keys.fence("r", "p"), 4)
        burst.pause.set()
        await asyncio.wait_for(task, 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.aclose()
    text = b"".join(data for _, data in await delta_entries(fake_redis))
    assert text == "".join(f"t{n} " for n in range(10)).encode()
    assert answer.metrics.resent.value == 4 and answer.metrics.tokens.value == 10


async def delta_entries(redis: FakeRedis) -> list[tuple[bytes, bytes]]:
    entries: Any = await redis.xrange(ConversationKeys(CID).events)
    return [(entry_id, fields[b"d"]) for entry_id, fields in entries if fields[b"t"] == b"delta"]


async def test_a_model_that_splits_a_character_never_stalls_the_answers(redis_process: RedisServer) -> None:
    """A model server that cuts its text between UTF-16 code units (JSON can spell half an emoji
    as ``"\\ud83d"``) gave the producer a string no encoder takes: the pipelined send of every
    answer's deltas in that turn raised in a callback and their replies never came, so every one of
    those answers hung. A lone half is now U+FFFD, and two halves that meet are the character."""

    class Splitting:
        async def generate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
            for text in ("a", "\ud83d", "b", " \ud83d\ude80"):
                await asyncio.sleep(0.01)  # one delta each
                yield text

    redis: Any = aioredis.Redis(port=redis_process.port)
    keys = ConversationKeys(CID)
    await redis.hset(keys.state, mapping={"active": "r", "phase": "queued", "start": "0-0"})
    others = [ConversationKeys(f"conversation-{n:016d}") for n in range(2, 5)]
    for other in others:  # answers sharing the sends with it
        await redis.hset(other.state, mapping={"active": "r", "phase": "queued", "start": "0-0"})
    publisher = Publisher(redis, Retention(), retry_seconds=1)
    writing: list[tuple[ConversationKeys, Generator]] = [(keys, Splitting()), *((o, Burst(5)) for o in others)]
    try:
        answers = [
            AnswerWriter(publisher, generator, ProducerMetrics(), owner="p", takeover="fail").answer(
                Job(keys.conversation_id, "r", "m", "prompt", 100), None, recovered=False
            )
            for keys, generator in writing
        ]
        async with asyncio.timeout(5):
            await asyncio.gather(*answers)
        entries: Any = await redis.xrange(keys.events)
        text = b"".join(fields[b"d"] for _, fields in entries if fields[b"t"] == b"delta").decode()
        assert text == "a\ufffdb \U0001f680"
        for other in others:
            [message] = await redis.lrange(other.messages, -1, -1)
            assert b'"content":"t0 t1 t2 t3 t4 "' in message
    finally:
        await publisher.aclose()
        await redis.aclose()


async def test_a_failure_that_quotes_half_a_character_still_ends_the_answer(redis_process: RedisServer) -> None:
    """The reason a model server gave may quote its own broken text: the answer ends as failed."""

    class Failing:
        async def generate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
            yield "a"
            raise GenerationFailed("the model server said: \ud83d")

    redis: Any = aioredis.Redis(port=redis_process.port)
    keys = ConversationKeys(CID)
    await redis.hset(keys.state, mapping={"active": "r", "phase": "queued", "start": "0-0"})
    publisher = Publisher(redis, Retention(), retry_seconds=1)
    try:
        answer = AnswerWriter(publisher, Failing(), ProducerMetrics(), owner="p", takeover="fail")
        async with asyncio.timeout(5):
            await answer.answer(Job(CID, "r", "m", "prompt", 100), None, recovered=False)
        [(_, done)] = await redis.xrevrange(keys.events, count=1)
        assert json.loads(done[b"d"]) == {
            "response_id": "r",
            "finish_reason": "failed",
            "error": "the model server said: \ufffd",
            "chunks": 1,
        }
    finally:
        await publisher.aclose()
        await redis.aclose()
