"""The producers' shared queue: one jobs stream per partition, one consumer group on each.

A job is posted into its conversation's partition (``wire.keys``), in the same script and slot as the
conversation's keys, so a Redis Cluster never sees a cross-slot write. Producers read every
partition fairly: each read goes on round the partitions from where the last one stopped, at most
one job per partition per pass, pipelined a window at a time (a cluster pipeline sends each node its
share at once).

An idle producer waits for the next job with one blocking XREADGROUP over every partition on a
standalone Redis (it wakes with the first job posted); with room for a job from every partition,
that one command is its every read. A cluster has no blocking read across slots:
there an idle producer passes over the partitions every ``POLL_SECONDS`` instead (128 cheap
commands, a round trip per shard).

A job is named by its stream and entry id (entry ids are only unique within one stream).
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from wire.keys import ALL_JOBS_STREAMS, JOBS_GROUP

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
"""How often an idle producer looks at every partition of a cluster."""
BLOCK_MS = 2000
"""The longest blocking wait on a standalone Redis (then the loop goes round: shutdown, groups)."""


@dataclass(frozen=True, slots=True)
class JobRef:
    stream: bytes
    entry_id: bytes


@dataclass(frozen=True, slots=True)
class QueuedJob:
    ref: JobRef
    fields: dict[bytes, bytes]


class PartitionedJobs:
    def __init__(self, redis: "Redis | RedisCluster", consumer: str) -> None:
        self._redis = redis
        self._consumer = consumer
        self._streams = [s.encode() for s in ALL_JOBS_STREAMS]
        self._cursor = 0
        self._groups_ready: set[bytes] = set()

    async def read(self, count: int) -> list[QueuedJob]:
        """At most ``count`` new jobs, going on round the partitions; ``[]`` after a whole empty pass."""
        found: list[QueuedJob] = []
        scanned = 0
        while scanned < len(self._streams) and len(found) < count:
            window = min(count - len(found), len(self._streams) - scanned)
            streams = [self._streams[(self._cursor + i) % len(self._streams)] for i in range(window)]
            self._cursor = (self._cursor + window) % len(self._streams)
            scanned += window
            found += await self._read_window(streams)
        return found

    async def next(self, count: int) -> list[QueuedJob]:
        """At most ``count`` new jobs, waiting for the first if none is queued.

        With room for a job from every partition (a producer's usual state) the read is the wait
        itself: one blocking XREADGROUP over every partition returns at once with the jobs queued
        (one per partition at most), or at the first one posted. With less, the partitions are read
        in windows of ``count``, so a producer near its concurrency claims no job it has no slot
        for, and waits only after a whole empty pass.
        """
        if count >= len(self._streams) and not isinstance(self._redis, RedisCluster):
            return await self._read_streams(self._streams, block_ms=BLOCK_MS)
        return await self.read(count) or await self.wait()

    async def wait(self) -> list[QueuedJob]:
        """Wait for new jobs: up to one per partition that has one, often exactly one."""
        if isinstance(self._redis, RedisCluster):
            await asyncio.sleep(POLL_SECONDS)
            return []
        return await self._read_streams(self._streams, block_ms=BLOCK_MS)

    async def _read_window(self, streams: list[bytes]) -> list[QueuedJob]:
        if not isinstance(self._redis, RedisCluster):
            # One command for the whole window (one entry at most from each stream), not one per
            # partition (docs/measurements.md, jobs-window).
            return await self._read_streams(streams, block_ms=None)
        await self._ensure_groups(s for s in streams if s not in self._groups_ready)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xreadgroup(JOBS_GROUP, self._consumer, {stream: ">"}, count=1)
            replies = await pipe.execute(raise_on_error=False)
        jobs = []
        for stream, reply in zip(streams, replies, strict=True):
            if _group_lost(reply):
                self._groups_ready.discard(stream)
            else:
                jobs += _queued(reply)
        return jobs

    async def _read_streams(self, streams: list[bytes], *, block_ms: int | None) -> list[QueuedJob]:
        """One XREADGROUP over ``streams`` (a standalone Redis: no slots to respect)."""
        await self._ensure_groups(s for s in streams if s not in self._groups_ready)
        try:
            reply = await self._redis.xreadgroup(
                JOBS_GROUP, self._consumer, dict.fromkeys(streams, ">"), count=1, block=block_ms
            )
        except ResponseError as exc:
            if not _group_lost(exc):
                raise
            self._groups_ready.difference_update(streams)
            return []
        return _queued(reply)

    async def _ensure_groups(self, streams: Iterable[bytes]) -> None:
        missing = list(streams)
        if not missing:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in missing:
                pipe.xgroup_create(stream, JOBS_GROUP, id="0", mkstream=True)
            replies = await pipe.execute(raise_on_error=False)
        for stream, reply in zip(missing, replies, strict=True):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
            self._groups_ready.add(stream)

    async def ack(self, ref: JobRef) -> None:
        """Done with the job: acknowledged and deleted (the stream holds only jobs someone waits for)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(ref.stream, JOBS_GROUP, ref.entry_id)
            pipe.xdel(ref.stream, ref.entry_id)
            await pipe.execute()

    async def refresh(self, mine: Iterable[JobRef]) -> None:
        """Re-claim this producer's jobs: their idle time restarts, so nobody takes them over."""
        by_stream: dict[bytes, list[bytes]] = defaultdict(list)
        for ref in mine:
            by_stream[ref.stream].append(ref.entry_id)
        if not by_stream:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xclaim(stream, JOBS_GROUP, self._consumer, 0, list(ids), justid=True)
            await pipe.execute()

    async def abandoned(self, idle_ms: int, count: int) -> list[QueuedJob]:
        """Claim at most ``count`` jobs idle for ``idle_ms`` (their producer stopped), at most one per
        partition per window of ``count`` partitions, pipelined. An entry deleted meanwhile comes
        back with no fields: the caller acknowledges it."""
        claimed: list[QueuedJob] = []
        for first in range(0, len(self._streams), count):
            if len(claimed) >= count:
                break
            window = self._streams[first : first + count - len(claimed)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream in window:
                    pipe.xautoclaim(stream, JOBS_GROUP, self._consumer, idle_ms, start_id="0-0", count=1)
                replies = await pipe.execute(raise_on_error=False)
            for stream, reply in zip(window, replies, strict=True):
                if _group_lost(reply):
                    continue  # never read from since Redis lost it: nothing is pending there
                claimed += [QueuedJob(JobRef(stream, entry_id), fields or {}) for entry_id, fields in reply[1]]
        return claimed


def _group_lost(reply: Any) -> bool:
    """Is this reply Redis saying it lost the group (a restart without persistence)? Other errors
    are raised."""
    if not isinstance(reply, Exception):
        return False
    if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
        return True
    raise reply


def _queued(reply: Any) -> list[QueuedJob]:
    """The jobs of a multi-stream XREADGROUP reply."""
    return [
        QueuedJob(JobRef(stream, entry_id), fields)
        for stream, entries in _entries(reply)
        for entry_id, fields in entries
    ]


def _entries(reply: Any) -> list[tuple[Any, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """XREADGROUP's reply as (stream, entries) pairs, under RESP2 (a list) or RESP3 (a map)."""
    if not reply:
        return []
    return list(reply.items()) if isinstance(reply, dict) else list(reply)
