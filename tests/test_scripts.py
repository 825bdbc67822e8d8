"""The Lua scripts' rules that no end-to-end test reaches quickly: TTL refresh by time."""

from fakeredis.aioredis import FakeRedis

from wire import scripts
from wire.events import delta_lines
from wire.keys import ConversationKeys

CID = "conversation-0000000001"
TTL = 60


async def test_a_slow_answer_refreshes_its_ttls_by_time_not_by_chunk_count(fake_redis: FakeRedis) -> None:
    """Issue 10: with every-32nd-chunk refreshes a slow model outlived a short retention."""
    keys = ConversationKeys(CID)
    await fake_redis.hset(keys.state, mapping={"active": "r", "owner": "p", "next": 0})
    script = fake_redis.register_script(scripts.DELTA)

    async def delta(index: int, now_ms: int) -> None:
        args = scripts.conversation_argv(keys.channel, 1000, TTL, "r", "p", index, "x", delta_lines("x"), now_ms)
        ok, _ = await script(keys=list(keys.all), args=args)
        assert ok == 1

    start = 1_000_000_000
    await delta(0, start)
    for key in keys.all:
        await fake_redis.expire(key, 5)
    await delta(1, start + 14_000)  # under a quarter of the retention since the last refresh
    assert 0 < await fake_redis.ttl(keys.state) <= 5
    await delta(2, start + 16_000)  # over it: every key's TTL is the retention again
    for key in (keys.state, keys.draft, keys.events):  # (no message was stored yet)
        assert await fake_redis.ttl(key) > TTL - 5
