"""The Lua scripts' rules that no end-to-end test reaches quickly: the per-chunk fences of a batched
``DELTAS`` call, one chunk at a time as the old per-chunk script had them, and TTL refresh by time."""

from typing import Any

from fakeredis.aioredis import FakeRedis

from tests.fakes import append_deltas
from wire import deltas, scripts
from wire.env import Retention
from wire.keys import ConversationKeys

CID = "conversation-0000000001"
TTL = 60


async def test_a_slow_answer_refreshes_its_ttls_by_time_not_by_chunk_count(fake_redis: FakeRedis) -> None:
    """Issue 10: with every-32nd-chunk refreshes a slow model outlived a short retention."""
    keys = ConversationKeys(CID)
    await fake_redis.hset(keys.state, mapping={"active": "r", "owner": "p", "next": 0})

    async def delta(index: int, now_ms: int) -> None:
        [call] = deltas.delta_calls([(keys, "r", "p", index, "x")], Retention(ttl_seconds=TTL), now_ms, by_slot=False)
        ok, _ = await fake_redis.eval(deltas.DELTAS, len(call.keys), *call.keys, *call.args)
        assert ok == 1

    start = 1_000_000_000
    await delta(0, start)
    for key in keys.all:
        await fake_redis.expire(key, 5)
    await delta(1, start + 14_000)  # under a quarter of the retention since the last refresh
    assert 0 < await fake_redis.ttl(keys.state) <= 5
    await delta(2, start + 16_000)  # over it: every key's TTL is the retention again
    for key in (keys.state, keys.events):  # (no message was stored yet; no draft is kept)
        assert await fake_redis.ttl(key) > TTL - 5


async def test_one_call_checks_every_chunk_against_its_own_answer(fake_redis: FakeRedis) -> None:
    """Batching changes the cost, never the guarantee: in one call, each chunk is appended once, in
    order, by its answer's owner only; what is refused writes nothing."""
    a, b, c, d = (ConversationKeys(f"conversation-{n:016d}") for n in range(4))
    for keys, owner in ((a, "p"), (b, "p"), (c, "someone-else"), (d, "p")):
        await fake_redis.hset(keys.state, mapping={"active": "r", "owner": owner, "next": 0, "start": "0-0"})
    await fake_redis.hset(d.state, "cancel", "1")
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
    assert await fake_redis.hget(a.state, "next") == b"3" and await fake_redis.hget(b.state, "next") == b"1"
    assert await fake_redis.exists(c.events, c.draft, d.events, d.draft) == 0
    ids = [reply[1] for reply, code in zip(replies, codes, strict=True) if code == 1]
    entries: Any = await fake_redis.xrange(a.events)
    assert [entry_id for entry_id, _ in entries] == [ids[0], ids[2], ids[3]]
    assert entries[-1][1][b"d"] == b"line\ndata: event: evil"


def test_the_harness_hook_sends_one_call_per_tick_and_counts_every_chunk() -> None:
    """``delta_commands`` (shared/bench's batch hook) is ``delta_calls`` as pipelined commands."""
    items = [(ConversationKeys(f"c-{n % 7}"), "r", "p", n // 7, "tok ") for n in range(50)]
    commands = scripts.delta_commands(items, Retention())
    assert [chunks for _, chunks in commands] == [50]
    [(argv, _)] = commands
    assert argv[:2] == ["EVALSHA", deltas.DELTAS_SHA] and argv[2] == 7 * 4
    assert scripts.setup_commands() == [["SCRIPT", "LOAD", deltas.DELTAS]]
    by_slot = deltas.delta_calls(items, Retention(), 0, by_slot=True)
    assert sum(call.chunks for call in by_slot) == 50
    assert len(by_slot) == len({keys.partition for keys, *_ in items})
