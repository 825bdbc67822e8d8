"""The producer's pipelined script connection on a real Redis: every call gets its own reply or an
error, never another call's, and never waits for ever (faults injected by a proxy)."""

import asyncio
import cProfile
import pstats
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from launch.processes import RedisServer
from launch.redis_client import connect
from redisio.pipe import CommandPipe, Script
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(30)

ECHO = Script("return ARGV[1]")
COUNT = Script("return redis.call('INCR', KEYS[1])")
FAIL = Script("return redis.error_reply('refused ' .. ARGV[1])")


@pytest.fixture
async def redis(proxy: FaultProxy) -> AsyncIterator[Redis]:
    client = connect(proxy.url, max_connections=8, timeout_seconds=5)
    assert isinstance(client, Redis)
    yield client
    await client.aclose()


async def test_every_call_gets_its_own_reply_in_one_connection(redis: Redis, redis_process: RedisServer) -> None:
    pipe = CommandPipe(redis)
    admin = Redis(port=redis_process.port)
    try:
        before = (await admin.info("stats"))["total_connections_received"]
        for _ in range(5):  # five ticks of 400 calls, three scripts interleaved
            futures = []
            for i in range(400):
                script = (ECHO, COUNT, FAIL)[i % 3]
                futures.append(pipe.script(script, ["pipe:count"], [f"call {i}"]))
            results = await asyncio.gather(*futures, return_exceptions=True)
            for i, result in enumerate(results):
                if i % 3 == 0:
                    assert result == f"call {i}".encode()
                elif i % 3 == 2:
                    assert isinstance(result, ResponseError)
                    assert f"refused call {i}" in str(result)
        assert int(await admin.get("pipe:count") or 0) == 5 * 133
        after = (await admin.info("stats"))["total_connections_received"]
        assert after - before == 1  # one connection for 2,000 calls (the admin connected before)
    finally:
        await pipe.aclose()
        await admin.aclose()


async def test_a_cancelled_call_is_never_sent(redis: Redis, redis_process: RedisServer) -> None:
    pipe = CommandPipe(redis)
    admin = Redis(port=redis_process.port)
    try:
        withdrawn = pipe.script(COUNT, ["pipe:withdrawn"], [])
        kept = pipe.script(COUNT, ["pipe:kept"], [])
        withdrawn.cancel()
        assert await kept == 1
        assert await admin.get("pipe:withdrawn") is None
    finally:
        await pipe.aclose()
        await admin.aclose()


async def test_a_lost_reply_fails_the_calls_in_flight_and_the_next_ones_get_a_new_connection(
    redis: Redis, proxy: FaultProxy
) -> None:
    pipe = CommandPipe(redis)
    try:
        assert await pipe.script(ECHO, ["k"], ["warm"]) == b"warm"
        proxy.lose_reply_to(b"lost one")
        lost = [pipe.script(ECHO, ["k"], ["lost one"]), pipe.script(ECHO, ["k"], ["with it"])]
        for result in await asyncio.gather(*lost, return_exceptions=True):
            assert isinstance(result, RedisConnectionError)  # never another call's reply, never a hang
        assert proxy.replies_lost == 1
        assert await pipe.script(ECHO, ["k"], ["after"]) == b"after"
    finally:
        await pipe.aclose()


async def test_a_connection_reset_while_idle_is_replaced_and_the_next_call_succeeds(
    redis: Redis, proxy: FaultProxy
) -> None:
    """Issue 23: a write that found the transport closing failed its calls but kept the dead
    connection, so every later call failed at once (every new stream a 503, the producer stalled)."""
    pipe = CommandPipe(redis)
    try:
        assert await pipe.script(ECHO, ["k"], ["warm"]) == b"warm"
        proxy.reset_all()  # a reset while nothing is in flight
        await asyncio.sleep(0.2)  # the event loop sees it: the transport is closing before any write
        assert await asyncio.wait_for(pipe.script(ECHO, ["k"], ["after"]), 5) == b"after"
        assert await asyncio.wait_for(pipe.command("PING"), 5) == b"PONG"
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == "redis-pipe-reader"]
        assert len(tasks) == 1  # the dead connection's reader ended with it
    finally:
        await pipe.aclose()


async def test_a_redis_that_stops_answering_fails_the_calls_after_the_reply_timeout(
    redis: Redis, proxy: FaultProxy
) -> None:
    pipe = CommandPipe(redis, reply_timeout=0.5)
    try:
        assert await pipe.script(ECHO, ["k"], ["warm"]) == b"warm"
        proxy.stall()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(pipe.script(ECHO, ["k"], ["hangs"]), 5)
    finally:
        await pipe.aclose()


async def test_a_script_cache_redis_lost_is_filled_again(redis: Redis, redis_process: RedisServer) -> None:
    pipe = CommandPipe(redis)
    admin = Redis(port=redis_process.port)
    try:
        assert await pipe.script(ECHO, ["k"], ["cached"]) == b"cached"
        await admin.script_flush()  # what a Redis restart does to the cache
        assert await asyncio.gather(*(pipe.script(ECHO, ["k"], [str(i)]) for i in range(3))) == [b"0", b"1", b"2"]
        assert (await admin.script_exists(ECHO.sha.decode())) == [True]
    finally:
        await pipe.aclose()
        await admin.aclose()


async def test_closing_fails_what_waits_and_refuses_new_calls(redis: Redis) -> None:
    pipe = CommandPipe(redis)
    assert await pipe.script(ECHO, ["k"], ["open"]) == b"open"
    queued = pipe.script(ECHO, ["k"], ["queued"])
    await pipe.aclose()
    for future in (queued, pipe.script(ECHO, ["k"], ["late"])):
        with pytest.raises(RedisConnectionError):
            await future


async def test_a_reader_that_fails_unexpectedly_fails_its_calls_and_the_pipe_goes_on(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = CommandPipe(redis)
    resolve = CommandPipe._resolve
    broken = [True]

    def resolve_once_broken(self: CommandPipe, call: object, reply: object) -> None:
        if broken.pop() if broken else False:
            raise RuntimeError("a bug in the reader")
        resolve(self, call, reply)  # type: ignore[arg-type]

    monkeypatch.setattr(CommandPipe, "_resolve", resolve_once_broken)
    try:
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(pipe.script(ECHO, ["k"], ["first"]), 5)  # never left waiting
        assert await pipe.script(ECHO, ["k"], ["second"]) == b"second"
    finally:
        await pipe.aclose()


@pytest.mark.parametrize(
    "arg",
    ["plain", "naïve 🚀 日本語", "", "x" * 1000, 12, -3, b"EVALSHA", b"\xff\x00raw"],
)
async def test_every_argument_reaches_redis_byte_for_byte(redis: Redis, arg: str | bytes | int) -> None:
    """The RESP encoder counts bytes, not characters, whatever the argument's type."""
    pipe = CommandPipe(redis)
    try:
        reply = await pipe.script(ECHO, [], [arg]) if not isinstance(arg, bytes) else await pipe.command(b"ECHO", arg)
        expected = arg if isinstance(arg, bytes) else str(arg).encode()
        assert reply == expected
    finally:
        await pipe.aclose()


async def test_a_call_that_cannot_be_encoded_fails_alone(redis: Redis) -> None:
    """A lone surrogate raised out of the turn's write: every call of that turn was lost with it,
    its future never resolved, and each caller waited for ever."""
    pipe = CommandPipe(redis)
    try:
        before = pipe.script(ECHO, [], ["before"])
        bad = pipe.script(ECHO, [], ["half an emoji \ud83d"])
        after = pipe.script(ECHO, [], ["after"])
        async with asyncio.timeout(5):
            assert await before == b"before" and await after == b"after"
            with pytest.raises(DataError):
                await bad
    finally:
        await pipe.aclose()


async def test_a_turn_of_replies_costs_the_reader_no_coroutine_and_no_timer_per_reply(redis: Redis) -> None:
    """redis-py's ``read_response`` ran a coroutine, a stream read and a timeout scope per reply:
    most of the producer's Python per ``DELTAS`` call (docs/measurements.md, pipe-reader). The
    reader parses what each socket read brings, and one watchdog timer stands for the timeout."""
    pipe = CommandPipe(redis)
    try:
        assert await pipe.script(ECHO, [], ["warm"]) == b"warm"
        profile = cProfile.Profile()
        profile.enable()
        replies = await asyncio.gather(*(pipe.script(ECHO, [], [str(i)]) for i in range(200)))
        profile.disable()
        assert replies == [str(i).encode() for i in range(200)]
        ran = {(path, name): row[1] for (path, _, name), row in pstats.Stats(profile).stats.items()}  # type: ignore[attr-defined]
        assert not [key for key in ran if key[1] == "read_response"]
        assert not [key for key in ran if key[0].endswith("timeouts.py")]
        assert sum(count for (path, name), count in ran.items() if path.endswith("pipe.py") and name == "_read") <= 10
    finally:
        await pipe.aclose()


async def test_a_message_redis_pushes_unasked_is_not_taken_for_a_reply(
    redis: Redis, redis_process: RedisServer
) -> None:
    """Under RESP3 (redis-py 8's default) Redis may push messages no call asked for: a server's
    maintenance notices, client-side caching's invalidations. The reader skips them: taken for a
    reply, one would fail the connection (or answer the wrong call)."""
    pipe = CommandPipe(redis)
    admin = Redis(port=redis_process.port)
    try:
        assert await pipe.command("CLIENT", "TRACKING", "ON") == b"OK"
        before = (await admin.info("stats"))["total_connections_received"]
        assert await pipe.command("GET", "pipe:tracked") is None
        await admin.set("pipe:tracked", "changed")  # Redis pushes an invalidation to the pipe's connection
        await asyncio.sleep(0.1)
        assert await pipe.command("PING") == b"PONG"
        assert await pipe.script(ECHO, ["k"], ["after"]) == b"after"
        assert (await admin.info("stats"))["total_connections_received"] == before  # the same connection
    finally:
        await pipe.aclose()
        await admin.aclose()
