"""How a producer reads the shared jobs streams, against a real Redis: what each read costs it."""

import asyncio

from redis.asyncio import Redis

from launch.processes import RedisServer
from producer.jobs import PartitionedJobs
from wire.keys import JOBS_GROUP, PARTITIONS, jobs_stream


async def _xreadgroups(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))


async def _post(redis: Redis, partition: int) -> None:
    await redis.xadd(jobs_stream(partition), {"job": str(partition)})


async def test_a_producer_with_room_for_every_partition_reads_each_job_with_one_command(
    redis_process: RedisServer,
) -> None:
    """Jobs come one at a time (a chat): with room for a job from every partition, the read is one
    blocking XREADGROUP over them all, which returns at once with what waits. It was four reads of
    32 partitions before it (each a command Redis and the producer parse), then the wait."""
    redis = Redis(port=redis_process.port)
    try:
        jobs = PartitionedJobs(redis, "p1")
        assert await jobs.read(PARTITIONS) == []  # creates the groups
        before = await _xreadgroups(redis)
        taken = []
        for partition in (3, 77, 3, 127):
            await _post(redis, partition)
            taken += await jobs.next(1000)
        assert [job.fields for job in taken] == [{b"job": str(p).encode()} for p in (3, 77, 3, 127)]
        assert await _xreadgroups(redis) - before == 4
        # and with nothing queued it waits for the next job
        waiting = asyncio.ensure_future(jobs.next(1000))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await _post(redis, 9)
        assert [job.ref.stream for job in await asyncio.wait_for(waiting, 5)] == [jobs_stream(9).encode()]
    finally:
        await redis.aclose()


async def test_a_producer_short_of_room_takes_no_more_jobs_than_asked(redis_process: RedisServer) -> None:
    """Near its concurrency a producer must not claim jobs it has no slot for (another producer
    may): it reads at most ``count``, going on round the partitions."""
    redis = Redis(port=redis_process.port)
    try:
        jobs = PartitionedJobs(redis, "p1")
        assert await jobs.read(PARTITIONS) == []
        for partition in range(10):
            await _post(redis, partition)
        first = await jobs.next(2)
        second = await jobs.next(3)
        assert len(first) == 2 and len(second) == 3
        pending = await redis.xpending(jobs_stream(0), JOBS_GROUP)
        assert pending["pending"] == 1
        claimed = {job.ref.stream for job in first + second}
        assert claimed == {jobs_stream(p).encode() for p in range(5)}
    finally:
        await redis.aclose()
