"""The Lua scripts' rules that no end-to-end test reaches quickly: the per-chunk fences of a batched
``DELTAS`` call, one chunk at a time as the old per-chunk script had them, the fence's life (claim,
takeover, cancel, finish, delete), what a chunk costs Redis, and TTL refresh by time."""

from typing import Any

import redis.asyncio as aioredis
from fakeredis.aioredis import FakeRedis

from launch.processes import RedisServer
from scripts import unfenced_deltas
from tests.fakes import append_deltas, start_answer
from wire import deltas, scripts
from wire.env import Retention
from wire.events import FinishReason, done_data
from wire.keys import ConversationKeys

CID = "conversation-0000000001"
TTL = 60


async def fence_index(redis: Any, keys: ConversationKeys, response_id: str = "r", owner: str = "p") -> int | None:
    value = await redis.get(keys.fence(response_id, owner))
    return None if value is None else abs(int(value)) - deltas.FENCE_BASE


async def test_a_chunk_costs_redis_an_xadd_an_spublish_and_one_counter_step(redis_process: RedisServer) -> None:
    """Issue 26: a chunk cost Redis an HMGET and an HSET of its answer's state besides its XADD and
    SPUBLISH, and ten call arguments (3.3x the floor of a plain pipelined XADD + SPUBLISH). Now the
    fence is one INCRBY per answer per call, and a chunk carries four arguments: its answer's two
    keys, its index and its text."""
    redis: Any = aioredis.Redis(port=redis_process.port)
    try:
        conversations = [ConversationKeys(f"conversation-{n:016d}") for n in range(20)]
        for keys in conversations:
            await start_answer(redis, keys)
        for command in scripts.setup_commands():
            await redis.execute_command(*command)
        items = [(keys, "r", "p", 0, "tok ") for keys in conversations]
        [(argv, chunks)] = scripts.delta_commands(items, Retention())
        # EVALSHA, sha, key count, maxlen, group counts, token counts, then 2 keys and 2 arguments a chunk
        assert chunks == 20 and (len(argv) - 6) / chunks == 4
        await redis.execute_command("CONFIG", "RESETSTAT")
        assert await redis.execute_command(*argv) == [[1]] * 20
        stats: Any = await redis.info("commandstats")
        called = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
        assert called == {"evalsha": 1, "incrby": 20, "xadd": 20, "spublish": 20, "config|resetstat": 1}
    finally:
        await redis.aclose()


async def test_the_unfenced_floor_stores_and_publishes_what_deltas_does(redis_process: RedisServer) -> None:
    """``scripts/unfenced_deltas.py`` stands in for ``DELTAS`` in ``scripts/s2_floor.sh`` and
    ``scripts/redis_cost.py``: what it measures is the price of the guarantees only if the node and
    the tabs get the same frames and the history the same entries; and it must be unfenced (a
    retried chunk appended twice), or it measures a guarantee too."""
    guarded, bare = ConversationKeys("conversation-0000000000000010"), ConversationKeys("conversation-0000000000000011")
    redis: Any = aioredis.Redis(port=redis_process.port)
    pubsub = redis.pubsub()
    try:
        for keys in (guarded, bare):
            await start_answer(redis, keys)
            await pubsub.execute_command("SSUBSCRIBE", keys.channel)
            assert (await pubsub.parse_response(timeout=5))[0] == b"ssubscribe"
        for command in [*scripts.setup_commands(), *unfenced_deltas.setup_commands()]:
            await redis.execute_command(*command)
        text = "two\nlines"  # DELTAS makes each line a data line (the floor's texts here have none)
        [(argv, _)] = scripts.delta_commands([(guarded, "r", "p", 0, text)], Retention())
        assert await redis.execute_command(*argv) == [1]
        [(argv, chunks)] = unfenced_deltas.delta_commands([(bare, "r", "p", 0, "two")] * 2, Retention())
        assert chunks == 2 and await redis.execute_command(*argv) == [[1], [1]]
        frames = [(await pubsub.parse_response(timeout=5))[2] for _ in range(3)]
        assert [frame.split(b"\n", 1)[1] for frame in frames] == [
            b"event: delta\ndata: two\ndata: lines\n\n",
            b"event: delta\ndata: two\n\n",
            b"event: delta\ndata: two\n\n",
        ]
        [(_, stored)] = await redis.xrevrange(guarded.events, count=1)
        assert stored == {b"t": b"delta", b"d": b"two\ndata: lines"}
        assert [fields for _, fields in await redis.xrevrange(bare.events, count=2)] == [
            {b"t": b"delta", b"d": b"two"}
        ] * 2
    finally:
        await pubsub.aclose()
        await redis.aclose()


async def test_a_chunk_is_published_on_its_history_streams_name(redis_process: RedisServer) -> None:
    """Issue 26: ``DELTAS`` built each chunk's channel name in Lua from its events key (two strings
    made and hashed per chunk); the channel is now the events key's own name, which the node
    subscribes to (``ConversationKeys.channel``)."""
    keys = ConversationKeys("conversation-0000000000000001")
    assert keys.channel == keys.events
    redis: Any = aioredis.Redis(port=redis_process.port)
    pubsub = redis.pubsub()
    try:
        await start_answer(redis, keys)
        for command in scripts.setup_commands():
            await redis.execute_command(*command)
        await pubsub.execute_command("SSUBSCRIBE", keys.events)
        assert (await pubsub.parse_response(timeout=5))[0] == b"ssubscribe"
        [(argv, _)] = scripts.delta_commands([(keys, "r", "p", 0, "tok")], Retention())
        await redis.execute_command(*argv)
        message = await pubsub.parse_response(timeout=5)
        assert message[:2] == [b"smessage", keys.events.encode()]
        assert message[2].endswith(b"\nevent: delta\ndata: tok\n\n")
    finally:
        await pubsub.aclose()
        await redis.aclose()


async def test_one_call_checks_every_chunk_against_its_own_answer(fake_redis: FakeRedis) -> None:
    """Batching changes the cost, never the guarantee: in one call, each chunk is appended once, in
    order, by its answer's owner only; what is refused writes nothing."""
    a, b, c, d = (ConversationKeys(f"conversation-{n:016d}") for n in range(4))
    for keys, owner in ((a, "p"), (b, "p"), (c, "someone-else"), (d, "p")):
        await start_answer(fake_redis, keys, owner=owner)
    argv = scripts.conversation_argv(d.channel, 1000, 3600, "r", done_data("r", FinishReason.CANCELLED))
    assert await fake_redis.eval(scripts.CANCEL, len(d.all), *d.all, *argv) == b"requested"
    replies = await append_deltas(
        fake_redis,
        [
            (a, "r", "p", 0, "a0"),
            (b, "r", "p", 0, "b0"),
            (a, "r", "p", 1, "a1"),
            (a, "r", "p", 1, "a1"),  # a retry in the same call: a duplicate, not a second append
            (b, "r", "p", 2, "b2"),  # b1 missing: behind
            (c, "r", "p", 0, "c0"),  # not this producer's answer
            (d, "r", "p", 0, "d0"),  # a cancel was asked
            (b, "r", "p", 1, "b\r1"),  # a CR: refused
            (a, "r", "p", 2, "line\nevent: evil"),  # a line break: another data line, never a field
        ],
    )
    codes = [int(reply[0]) for reply in replies]
    assert codes == [1, 1, 1, 0, -3, -1, -2, -4, 1]
    assert int(replies[4][1]) == 1  # the index b needs next
    # The text is stored once, in the stream: each answer reads back exactly its appended chunks.
    assert await fake_redis.eval(scripts.ANSWER_TEXT, 2, a.state, a.events) == b"a0a1line\nevent: evil"
    assert await fake_redis.eval(scripts.ANSWER_TEXT, 2, b.state, b.events) == b"b0"
    assert await fence_index(fake_redis, a) == 3 and await fence_index(fake_redis, b) == 1
    assert await fence_index(fake_redis, c) is None  # the refused chunk left no counter behind
    assert await fake_redis.exists(c.events, c.draft, d.events, d.draft) == 0
    entries: Any = await fake_redis.xrange(a.events)
    assert [fields[b"d"] for _, fields in entries] == [b"a0", b"a1", b"line\ndata: event: evil"]


async def test_the_fence_follows_the_answer_from_claim_to_finish(fake_redis: FakeRedis) -> None:
    """The counter is the fence: a takeover moves it (the stopped owner's chunks are refused), the
    done event counts the chunks from it, and finishing or deleting removes it."""
    keys = ConversationKeys(CID)
    await start_answer(fake_redis, keys, owner="p")
    assert await fake_redis.exists(keys.fence("r", "p")) == 1  # START's name is ConversationKeys.fence's
    await append_deltas(fake_redis, [(keys, "r", "p", 0, "a"), (keys, "r", "p", 1, "b")])
    argv = scripts.conversation_argv(keys.channel, 1000, 3600, "r", "q", "{}", "1")
    assert await fake_redis.eval(scripts.START, len(keys.all), *keys.all, *argv) == [b"resume", 2]
    [(stale,)] = await append_deltas(fake_redis, [(keys, "r", "p", 2, "late")])
    assert stale == -1 and await fake_redis.exists(keys.fence("r", "p")) == 0
    [(ok,)] = await append_deltas(fake_redis, [(keys, "r", "q", 2, "c")])
    assert ok == 1
    done = done_data("r", FinishReason.STOP)
    argv = scripts.conversation_argv(keys.channel, 1000, 3600, "r", "q", "stop", "complete", done)
    assert await fake_redis.eval(scripts.FINISH, len(keys.all), *keys.all, *argv)
    newest: Any = await fake_redis.xrevrange(keys.events, count=1)
    [(_, fields)] = newest
    assert b'"chunks":3' in fields[b"d"]
    assert await fake_redis.exists(keys.fence("r", "q")) == 0

    await fake_redis.hset(keys.state, mapping={"active": "r2", "phase": "queued"})
    await start_answer(fake_redis, keys, "r2", "p")
    assert await fake_redis.eval(scripts.DELETE, len(keys.all), *keys.all, 60) == 1
    assert await fake_redis.exists(keys.fence("r2", "p")) == 0
    [(gone,)] = await append_deltas(fake_redis, [(keys, "r2", "p", 0, "x")])
    assert gone == -1


async def test_a_delta_of_many_tokens_moves_the_fence_by_its_tokens(fake_redis: FakeRedis) -> None:
    """Issue 26, token coalescing: a delta may carry several of the model's tokens. The fence counts
    tokens (``max_tokens``, a retry's skip and a takeover's resume count them), a retry of the same
    delta is a duplicate, a gap is told by the token index, and ``done`` counts delta events, which is
    what a client checks it saw."""
    keys = ConversationKeys(CID)
    await start_answer(fake_redis, keys)
    first = [(keys, "r", "p", 0, "Hello", 1), (keys, "r", "p", 1, ", wor", 3), (keys, "r", "p", 4, "ld", 1)]
    assert await append_deltas(fake_redis, first) == [[1], [1], [1]]
    assert await fence_index(fake_redis, keys) == 5
    again = [(keys, "r", "p", 1, ", wor", 3), (keys, "r", "p", 4, "ld", 1), (keys, "r", "p", 5, "!", 2)]
    assert await append_deltas(fake_redis, again) == [[0], [0], [1]]
    assert await append_deltas(fake_redis, [(keys, "r", "p", 9, "?", 1)]) == [[-3, 7]]
    assert await fence_index(fake_redis, keys) == 7
    argv = scripts.conversation_argv(keys.channel, 1000, 3600, "r", "q", "{}", "1")
    assert await fake_redis.eval(scripts.START, len(keys.all), *keys.all, *argv) == [b"resume", 7]
    done = done_data("r", FinishReason.STOP)
    argv = scripts.conversation_argv(keys.channel, 1000, 3600, "r", "q", "stop", "complete", done)
    assert await fake_redis.eval(scripts.FINISH, len(keys.all), *keys.all, *argv)
    newest: Any = await fake_redis.xrevrange(keys.events, count=1)
    [(_, fields)] = newest
    assert b'"chunks":4' in fields[b"d"]  # four delta events, seven tokens
    [message] = await fake_redis.lrange(keys.messages, -1, -1)
    assert b'"content":"Hello, world!"' in message


def test_the_harness_hook_sends_one_call_per_tick_and_counts_every_chunk() -> None:
    """``delta_commands`` (shared/bench's batch hook) is ``delta_calls`` as pipelined commands."""
    items = [(ConversationKeys(f"c-{n % 7}"), "r", "p", n // 7, "tok ") for n in range(50)]
    commands = scripts.delta_commands(items, Retention())
    assert [chunks for _, chunks in commands] == [50]
    [(argv, _)] = commands
    assert argv[:2] == ["EVALSHA", deltas.DELTAS_SHA] and argv[2] == 50 * 2  # interleaved: a group each
    keys = ConversationKeys("c-0")
    [(argv, _)] = scripts.delta_commands([(keys, "r", "p", n, "tok ") for n in range(5)], Retention())
    assert argv[2:] == [2, keys.fence("r", "p"), keys.events, 10_000, "5", "", 0, *["tok "] * 5]  # one group
    assert scripts.setup_commands() == [["SCRIPT", "LOAD", deltas.DELTAS]]
    by_slot = deltas.delta_calls([(k, k.fence(r, o), n, t, 1) for k, r, o, n, t in items], Retention(), by_slot=True)
    assert sum(call.chunks for call in by_slot) == 50
    assert len(by_slot) == len({keys.partition for keys, *_ in items})
