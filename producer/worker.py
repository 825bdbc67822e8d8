"""The producer's job loop: a Redis Stream consumer group shared by every producer.

A job is read with XREADGROUP, generated, published, and acknowledged (XACK + XDEL) only when its
answer is finished, so a producer that dies mid-answer leaves the job pending. Ownership is a
heartbeat: live producers re-claim their own jobs (XCLAIM to themselves) every fifth of
``claim_idle_seconds``, so a job idle past that belonged to a producer that stopped, and another
producer takes it over within seconds: generated from scratch if it never started, else continued
from the chunks so far (``STREAMFAN_TAKEOVER=continue``, for generators that can) or ended as
``failed`` with the text so far (``fail``). Every script a producer retries is idempotent for it,
so a lost reply never leaves an answer without an owner.
"""

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from producer.answer import AnswerWriter
from producer.generation import Generator
from producer.metrics import ProducerMetrics
from producer.publisher import Publisher
from producer.settings import ProducerSettings
from wire.backoff import Backoff
from wire.events import FinishReason, Job, parse_event_id
from wire.keys import JOBS_GROUP, JOBS_STREAM

log = logging.getLogger(__name__)

_READ_BLOCK_MS = 2000


class Worker:
    def __init__(
        self,
        redis: "Redis",
        settings: ProducerSettings,
        generator: Generator,
        metrics: ProducerMetrics | None = None,
    ) -> None:
        self._redis = redis
        self.metrics = metrics or ProducerMetrics()
        self.metrics.bind(lambda: len(self._in_flight))
        self._settings = settings
        self._publisher = Publisher(redis, settings.retention, retry_seconds=settings.publish_retry_seconds)
        self._writer = AnswerWriter(
            self._publisher,
            generator,
            self.metrics,
            owner=settings.name,
            takeover=settings.takeover,
            orphan_seconds=settings.retention.orphan_seconds if settings.orphans == "cancel" else None,
        )
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._in_flight: dict[bytes, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        self.jobs_done = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        """Consume jobs until ``shutdown`` (or cancellation, which leaves answers to be recovered)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            claims = group.create_task(self._keep_claims(), name="producer-claims")
            reader = group.create_task(self._read_loop(), name="producer-reader")
            await self._stopping.wait()
            reader.cancel()
            pending = list(self._in_flight.values())
            if pending:
                log.info("draining %d answers for up to %.1fs", len(pending), self._settings.drain_seconds)
                await asyncio.wait(pending, timeout=self._settings.drain_seconds)
            for task in list(self._in_flight.values()):
                task.cancel()  # each finishes its answer as failed on the way out
            claims.cancel()

    def shutdown(self) -> None:
        """Stop taking jobs; let answers in flight finish for ``drain_seconds``, then fail the rest."""
        self._stopping.set()

    async def _read_loop(self) -> None:
        backoff = Backoff(first=0.1, cap=5.0)
        group_ready = False
        while True:
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                await self._read_jobs()
                backoff.reset()
            except (RedisError, OSError) as exc:
                # NOGROUP after a Redis restart that lost the group: create it again.
                group_ready = False
                delay = backoff.next_delay()
                log.warning("reading jobs failed (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(JOBS_STREAM, JOBS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_jobs(self) -> None:
        await self._slots.acquire()
        free = 1
        while free < 32 and not self._slots.locked():
            await self._slots.acquire()
            free += 1
        asked = time.monotonic()
        try:
            reply: Any = await self._redis.xreadgroup(
                JOBS_GROUP, self._settings.name, {JOBS_STREAM: ">"}, count=free, block=_READ_BLOCK_MS
            )
        except BaseException:
            for _ in range(free):
                self._slots.release()
            raise
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # fakeredis (the embedded broker) swallows the cancellation of a blocking read; honour it.
            # Anything read stays pending in the group and is recovered like any unfinished job.
            for _ in range(free):
                self._slots.release()
            raise asyncio.CancelledError
        entries: list[tuple[bytes, dict[bytes, bytes]]] = [
            entry for _, stream_entries in reply or [] for entry in stream_entries
        ]
        for _ in range(free - len(entries)):
            self._slots.release()
        if not entries and time.monotonic() - asked < _READ_BLOCK_MS / 1000 / 2:
            # A blocking read that came back empty at once (fakeredis, the embedded broker, does
            # after the first job) must not turn this loop into a busy loop.
            await asyncio.sleep(0.05)
        for entry_id, fields in entries:
            self._launch(entry_id, fields, recovered=False)

    def _launch(self, entry_id: bytes, fields: dict[bytes, bytes], *, recovered: bool) -> None:
        assert self._group is not None, "jobs run inside run()'s task group"
        task = self._group.create_task(self._handle(entry_id, fields, recovered=recovered), name=f"job-{entry_id!r}")
        self._in_flight[entry_id] = task

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes], *, recovered: bool) -> None:
        """One job, start to acknowledgement. Nothing but cancellation leaves it: an error here
        must never reach the task group, which would cancel every other answer in flight."""
        try:
            try:
                job = Job.from_fields(fields)
            except ValueError:
                log.error("dropping malformed job %r", entry_id)
                self.metrics.jobs.inc_labels("malformed")
                await self._ack(entry_id)
                return
            try:
                await self._writer.answer(job, _posted_at(entry_id), recovered=recovered)
                await self._ack(entry_id)
                self.jobs_done += 1
            except (RedisError, OSError) as exc:
                # Left pending: this producer keeps it fresh while alive, another one recovers it after.
                log.error("job for response %s failed on Redis (%r); left for recovery", job.response_id, exc)
            except Exception:
                log.exception("generator failed for response %s", job.response_id)
                await self._fail(entry_id, job, "the model failed while writing this answer")
            except asyncio.CancelledError:
                if self._stopping.is_set():  # shutting down: say so now rather than after the claim timeout
                    await self._fail(entry_id, job, "the producer stopped while writing this answer")
                raise
        except (RedisError, OSError) as exc:
            log.error("acknowledging job %r failed (%r); it is recovered later", entry_id, exc)
        finally:
            self._in_flight.pop(entry_id, None)
            self._slots.release()

    async def _fail(self, entry_id: bytes, job: Job, error: str) -> None:
        """End the answer as ``failed`` (keeping the text so far) and acknowledge its job."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(5):
                await self._publisher.finish(
                    job.conversation_id, job.response_id, self._settings.name, FinishReason.FAILED, error
                )
                await self._ack(entry_id)
                self.metrics.jobs.inc_labels(FinishReason.FAILED.value)

    async def _ack(self, entry_id: bytes) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(JOBS_STREAM, JOBS_GROUP, entry_id)
            pipe.xdel(JOBS_STREAM, entry_id)
            await pipe.execute()

    async def _keep_claims(self) -> None:
        """Refresh this producer's jobs, and take over jobs whose producer died."""
        interval = self._settings.claim_idle_seconds / 5
        while True:
            await asyncio.sleep(interval)
            try:
                mine: list[int | bytes | str | memoryview] = list(self._in_flight)
                if mine:
                    await self._redis.xclaim(JOBS_STREAM, JOBS_GROUP, self._settings.name, 0, mine, justid=True)
                await self._recover_abandoned()
            except (RedisError, OSError) as exc:
                log.warning("refreshing job claims failed: %r", exc)

    async def _recover_abandoned(self) -> None:
        idle_ms = int(self._settings.claim_idle_seconds * 1000)
        start: bytes | str = "0-0"
        while not self._slots.locked():
            reply = await self._redis.xautoclaim(
                JOBS_STREAM, JOBS_GROUP, self._settings.name, idle_ms, start_id=start, count=1
            )
            start, claimed = reply[0], reply[1]
            for entry_id, fields in claimed:
                if entry_id in self._in_flight:
                    continue
                if not fields:  # the entry was deleted: nothing to do but acknowledge it
                    await self._ack(entry_id)
                    continue
                await self._slots.acquire()
                log.info("recovering abandoned job %r", entry_id)
                self._launch(entry_id, fields, recovered=True)
            if start in (b"0-0", "0-0"):
                return


def _posted_at(entry_id: bytes) -> float | None:
    """When the job was queued, by the Redis clock (a stream id starts with its milliseconds)."""
    try:
        return parse_event_id(entry_id.decode())[0] / 1000
    except ValueError:
        return None
