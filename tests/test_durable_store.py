"""Durable Streams' storage core (issue 25, first step): offsets that sort as strings, idempotent
create, appends checked and written in one script (content type, Stream-Seq, the producer's epoch
and sequence), bounded reads, delete; on a real redis-server."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from launch.processes import RedisServer
from wire import durable
from wire.durable import DurableKeys

JSON = "application/json"


@pytest.fixture
async def redis(redis_process: RedisServer) -> AsyncIterator[Any]:
    client = aioredis.Redis(port=redis_process.port, decode_responses=True)
    yield client
    await client.aclose()


async def create(
    redis: Any, keys: DurableKeys, *messages: str, kind: str = JSON, ttl: str = "", closed: bool = False
) -> list[Any]:
    expiry = str(int(ttl) * 1000) if ttl else ""
    flag = "1" if closed else ""
    args = (kind, ttl, "", expiry, flag, "", "", "", *messages)  # not a fork, not public
    result: list[Any] = await redis.eval(durable.CREATE, 4, *keys.all, keys.staging("none"), *args)
    return result


async def append(
    redis: Any,
    keys: DurableKeys,
    *messages: str,
    kind: str = JSON,
    seq: str = "",
    producer: tuple[str, int, int] | None = None,
    close: bool = False,
) -> list[Any]:
    pid, epoch, pseq = producer or ("", 0, 0)
    flag = "1" if close else ""
    result: list[Any] = await redis.eval(durable.APPEND, 3, *keys.all, kind, seq, pid, epoch, pseq, flag, *messages)
    return result


def test_offsets_sort_as_strings_in_the_order_of_the_entries() -> None:
    ids = ["0-0", "0-1", "9-0", "10-0", "10-2", "1733388000000-0", "1733388000000-11", "1733388000001-0"]
    ids.append(f"{2**64 - 1}-{2**64 - 1}")  # the largest id Redis has
    offsets = [durable.offset_of(entry_id) for entry_id in ids]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)  # as strings: "10-0" < "9-0"
    assert offsets[0] == durable.START_OFFSET
    assert [durable.entry_id_of(offset) for offset in offsets] == ids
    for bad in ("-1", "now", "", "0-0", "0000000000000000_000000000000000g", f"{durable.START_OFFSET}x"):
        assert durable.entry_id_of(bad) is None
    assert all(not set(offset) & set(",&=?/") for offset in offsets)


async def test_create_is_idempotent_for_the_same_configuration_only(redis: Any) -> None:
    keys = DurableKeys("/chat/room-1")
    status, tail, closed = await create(redis, keys, '{"a":1}', '{"b":2}')
    assert status == "created" and tail != "0-0" and closed == ""
    assert await create(redis, keys) == ["exists", tail, ""]
    assert await create(redis, keys, kind="text/plain") == ["conflict"]
    assert await create(redis, keys, ttl="60") == ["conflict"]
    assert (await create(redis, DurableKeys("/chat/room-2")))[1] == "0-0"  # empty: the start


async def test_an_append_is_refused_whole_when_the_stream_says_no(redis: Any) -> None:
    keys = DurableKeys("/orders")
    assert await append(redis, keys, "{}") == ["missing"]
    await create(redis, keys)
    assert await append(redis, keys, "x", kind="text/plain") == ["type"]
    status, first, _ = await append(redis, keys, "{}", seq="b")
    assert status == "appended"
    assert await append(redis, keys, "{}", seq="a") == ["seq", "b"]  # byte-wise, not above the last
    assert await append(redis, keys, "{}", seq="b") == ["seq", "b"]
    status, second, _ = await append(redis, keys, "{}", "{}", seq="c")
    assert status == "appended" and durable.offset_of(second) > durable.offset_of(first)
    assert await redis.xlen(keys.log) == 3


async def test_an_idempotent_producer_appends_once_and_a_zombie_is_fenced(redis: Any) -> None:
    keys = DurableKeys("/events")
    await create(redis, keys)
    status, tail, _ = await append(redis, keys, "1", producer=("p", 0, 0))
    assert status == "appended"
    assert await append(redis, keys, "1", producer=("p", 0, 0)) == ["duplicate", tail, 0, ""]  # a retry
    assert await append(redis, keys, "3", producer=("p", 0, 2)) == ["gap", 1]
    assert (await append(redis, keys, "2", producer=("p", 0, 1)))[0] == "appended"
    assert await append(redis, keys, "x", producer=("p", 1, 3)) == ["epoch_seq"]
    assert (await append(redis, keys, "restarted", producer=("p", 1, 0)))[0] == "appended"
    assert await append(redis, keys, "zombie", producer=("p", 0, 2)) == ["stale", 1]
    assert await append(redis, keys, "x", producer=("q", 0, 4)) == ["gap", 0]  # a new producer starts at 0
    messages = [fields["d"] for _, fields in await redis.xrange(keys.log)]
    assert messages == ["1", "2", "restarted"]


async def test_reads_are_bounded_in_bytes_and_resume_from_an_offset(redis: Any) -> None:
    keys = DurableKeys("/big")
    await create(redis, keys, *[f"m{i:03d}" + "x" * 96 for i in range(200)], kind="text/plain")
    kind, first, tail, last, closed, _, *messages = await redis.eval(durable.READ, 3, *keys.all, "0-0", 1000)
    assert kind == "text/plain" and closed == "" and len(messages) == 10 and messages[0].startswith("m000")
    [(oldest, _)] = await redis.xrange(keys.log, count=1)
    assert first == oldest  # the first retained: a cursor before it is gone (410)
    _, _, _, after, _, _, *rest = await redis.eval(durable.READ, 3, *keys.all, last, 1000)
    assert rest[0].startswith("m010") and durable.offset_of(after) > durable.offset_of(last)
    _, _, _, at_tail, _, _, *none = await redis.eval(durable.READ, 3, *keys.all, "+", 1000)
    assert at_tail == tail and none == []
    _, _, _, _, _, _, *one = await redis.eval(durable.READ, 3, *keys.all, "0-0", 1)
    assert len(one) == 1  # at least one message, whatever the bound
    assert await redis.eval(durable.READ, 3, *DurableKeys("/none").all, "0-0", 1000) is None


async def test_a_stream_expires_whole_and_deletes_whole(redis: Any) -> None:
    keys = DurableKeys("/short-lived")
    await create(redis, keys, "{}", ttl="60")
    await append(redis, keys, "{}", producer=("p", 0, 0))
    for key in keys.all:
        assert 0 < await redis.ttl(key) <= 60
    assert await redis.eval(durable.DELETE, 3, *keys.all) == ["deleted", ""]
    assert await redis.exists(*keys.all) == 0
    assert await redis.eval(durable.DELETE, 3, *keys.all) == ["missing"]


async def test_a_closed_stream_takes_nothing_more_and_says_so_in_every_read(redis: Any) -> None:
    keys = DurableKeys("/closing")
    await create(redis, keys, kind="text/plain")
    status, tail, _ = await append(redis, keys, "last", kind="text/plain", producer=("p", 0, 0), close=True)
    assert status == "appended"  # the final message and the close in one call: a reader sees both
    _, _, _, last, closed, _, *messages = await redis.eval(durable.READ, 3, *keys.all, "0-0", 1000)
    assert (last, closed, messages) == (tail, "1", ["last"])
    assert await append(redis, keys, "more", kind="text/plain") == ["closed", tail]
    assert await append(redis, keys, kind="", close=True) == ["appended", tail, "1"]  # closing again
    assert await append(redis, keys, "x", kind="text/plain", producer=("p", 0, 0)) == ["duplicate", tail, 0, "1"]
    assert await append(redis, keys, "x", kind="text/plain", producer=("p", 0, 1)) == ["closed", tail]
    assert await append(redis, keys, "x", kind="text/plain", producer=("p", 1, 0), close=True) == ["closed", tail]
    assert (await create(redis, DurableKeys("/born-closed"), "only", kind="text/plain", closed=True))[2] == "1"


async def test_a_stream_ttl_slides_with_reads_and_writes_but_not_metadata(redis: Any) -> None:
    keys = DurableKeys("/sliding")
    await create(redis, keys, "{}", ttl="60")
    await redis.pexpire(keys.meta, 5000)
    await redis.eval(durable.META, 3, *keys.all)
    assert await redis.pttl(keys.meta) <= 5000
    await redis.eval(durable.READ, 3, *keys.all, "0-0", 1000)
    assert await redis.pttl(keys.meta) > 50_000
    for key in keys.all:
        await redis.pexpire(key, 5000)
    await append(redis, keys, "{}", producer=("p", 0, 0))
    assert all([await redis.pttl(key) > 50_000 for key in keys.all])


def test_a_stream_lives_in_one_slot_and_its_path_never_reaches_a_key_name() -> None:
    keys = DurableKeys("/a path/with ü and {braces}")
    tags = {name.split(":")[1] for name in (*keys.all, keys.channel)}
    assert len(tags) == 1 and "braces" not in "".join(keys.all)
