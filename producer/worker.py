"""The producer's job loop over the partitioned jobs streams (``producer.jobs``) all producers share.

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

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from producer.answer import AnswerWriter
from producer.generation import Generator
from producer.jobs import JobRef, PartitionedJobs, QueuedJob
from producer.metrics import ProducerMetrics
from producer.publisher import Publisher
from producer.settings import ProducerSettings
from support.backoff import Backoff
from wire.events import FinishReason, Job, parse_event_id

log = logging.getLogger(__name__)

_MAX_READ = 32


class Worker:
    def __init__(
        self,
        redis: "Redis | RedisCluster",
        settings: ProducerSettings,
        generator: Generator,
        metrics: ProducerMetrics | None = None,
    ) -> None:
        self._jobs = PartitionedJobs(redis, settings.name)
        self.metrics = metrics or ProducerMetrics()
        self.metrics.bind(lambda: len(self._in_flight))
        self._settings = settings
        self._publisher = Publisher(
            redis,
            settings.retention,
            retry_seconds=settings.publish_retry_seconds,
            send_interval=settings.publish_interval_ms / 1000,
        )
        self._writer = AnswerWriter(
            self._publisher,
            generator,
            self.metrics,
            owner=settings.name,
            takeover=settings.takeover,
            orphan_seconds=settings.retention.orphan_seconds if settings.orphans == "cancel" else None,
        )
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._in_flight: dict[JobRef, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Consume jobs until ``shutdown`` (or cancellation, which leaves answers to be recovered)."""
        try:
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
        finally:
            await self._publisher.aclose()  # after the answers: their last finishes go through it

    def shutdown(self) -> None:
        """Stop taking jobs; let answers in flight finish for ``drain_seconds``, then fail the rest."""
        self._stopping.set()

    async def _read_loop(self) -> None:
        backoff = Backoff(first=0.1, cap=5.0)
        while True:
            try:
                await self._read_jobs()
                backoff.reset()
            except (RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("reading jobs failed (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _read_jobs(self) -> None:
        """Take new jobs, each into a free slot, at most as many as there is room for; when there
        are none, wait for the next ones."""
        await self._slots.acquire()
        # The slots this read may fill (the one just taken included), leaving a recovery pass the
        # most it takes at once: so each job's slot below is free, never waited for.
        room = max(1, self._settings.concurrency - len(self._in_flight) - _MAX_READ)
        try:
            jobs = await self._jobs.next(room)
        except BaseException:
            self._slots.release()
            raise
        if not jobs:
            self._slots.release()
        for i, job in enumerate(jobs):
            if i:  # the first runs in the slot taken above
                await self._slots.acquire()
            self._launch(job, recovered=False)

    async def _take_free_slots(self, most: int) -> int:
        """Take up to ``most`` of the free slots (never waiting for one); how many were taken."""
        taken = 0
        while taken < most and not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            taken += 1
        return taken

    def _release_slots(self, taken: int, *, used: int) -> None:
        """Give back the slots taken for a read that brought ``used`` jobs (each job keeps one)."""
        for _ in range(max(0, taken - used)):
            self._slots.release()

    def _launch(self, job: QueuedJob, *, recovered: bool) -> None:
        assert self._group is not None, "jobs run inside run()'s task group"
        name = f"job-{job.ref.stream.decode()}-{job.ref.entry_id.decode()}"
        self._in_flight[job.ref] = self._group.create_task(
            self._handle(job.ref, job.fields, recovered=recovered), name=name
        )

    async def _handle(self, ref: JobRef, fields: dict[bytes, bytes], *, recovered: bool) -> None:
        """One job, start to acknowledgement. Nothing but cancellation leaves it: an error here
        must never reach the task group, which would cancel every other answer in flight."""
        try:
            try:
                job = Job.from_fields(fields)
            except ValueError:
                log.error("dropping malformed job %r", ref)
                self.metrics.jobs.inc_labels("malformed")
                await self._jobs.ack(ref)
                return
            try:
                await self._writer.answer(job, _posted_at(ref.entry_id), recovered=recovered)
                await self._jobs.ack(ref)
            except (RedisError, OSError) as exc:
                # Left pending: this producer keeps it fresh while alive, another one recovers it after.
                log.error("job for response %s failed on Redis (%r); left for recovery", job.response_id, exc)
            except Exception:
                log.exception("generator failed for response %s", job.response_id)
                await self._fail(ref, job, "the model failed while writing this answer")
            except asyncio.CancelledError:
                if self._stopping.is_set():  # shutting down: say so now rather than after the claim timeout
                    await self._fail(ref, job, "the producer stopped while writing this answer")
                raise
        except (RedisError, OSError) as exc:
            log.error("acknowledging job %r failed (%r); it is recovered later", ref, exc)
        finally:
            self._in_flight.pop(ref, None)
            self._slots.release()

    async def _fail(self, ref: JobRef, job: Job, error: str) -> None:
        """End the answer as ``failed`` (keeping the text so far) and acknowledge its job."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(5):
                await self._publisher.finish(
                    job.conversation_id, job.response_id, self._settings.name, FinishReason.FAILED, error
                )
                await self._jobs.ack(ref)
                self.metrics.jobs.inc_labels(FinishReason.FAILED.value)

    async def _keep_claims(self) -> None:
        """Refresh this producer's jobs, and take over jobs whose producer died."""
        interval = self._settings.claim_idle_seconds / 5
        while True:
            await asyncio.sleep(interval)
            try:
                await self._jobs.refresh(list(self._in_flight))
                await self._recover_abandoned()
            except (RedisError, OSError) as exc:
                log.warning("refreshing job claims failed: %r", exc)

    async def _recover_abandoned(self) -> None:
        free = await self._take_free_slots(_MAX_READ)
        if not free:
            return
        try:
            claimed = await self._jobs.abandoned(int(self._settings.claim_idle_seconds * 1000), free)
        except BaseException:
            self._release_slots(free, used=0)
            raise
        self._release_slots(free, used=len(claimed))
        for job in claimed:  # each holds one slot: its task releases it, or it is released here
            if job.ref in self._in_flight or not job.fields:  # ours already, or deleted: nothing to run
                self._slots.release()
                if not job.fields:
                    await self._jobs.ack(job.ref)
                continue
            log.info("recovering abandoned job %r", job.ref)
            self._launch(job, recovered=True)


def _posted_at(entry_id: bytes) -> float | None:
    """When the job was queued, by the Redis clock (a stream id starts with its milliseconds)."""
    try:
        return parse_event_id(entry_id.decode())[0] / 1000
    except ValueError:
        return None
