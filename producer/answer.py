"""Writing one answer: claim it, stream the generator's chunks through the publisher, finish it.

The claim (``wire.scripts.START``) is idempotent for its owner, so a retry after a lost reply goes
on; a job recovered from a producer that stopped is taken over and, by the ``STREAMFAN_TAKEOVER``
policy, continued from its chunks so far (generators that are ``Resumable``) or ended as failed.
"""

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator

from producer.delta_outbox import DeltaOutbox
from producer.generation import Completion, GenerationFailed, Generator, Resumable, WithHistory
from producer.metrics import ProducerMetrics
from producer.publisher import Appended, Publisher
from wire.events import FinishReason, Job

log = logging.getLogger(__name__)


class AnswerWriter:
    def __init__(
        self,
        publisher: Publisher,
        generator: Generator,
        metrics: ProducerMetrics,
        *,
        owner: str,
        takeover: str,
        orphan_seconds: float | None = None,
    ) -> None:
        """``orphan_seconds``: cancel an answer nobody followed that long (``None``: keep them all)."""
        self._publisher = publisher
        self._generator = generator
        self.metrics = metrics
        self._owner = owner
        self._takeover_policy = takeover
        self._orphan_seconds = orphan_seconds

    async def answer(self, job: Job, posted_at: float | None, *, recovered: bool) -> None:
        """Claim the answer, generate it chunk by chunk, and finish it (stop, length or cancelled)."""
        owner = self._owner
        completion = Completion()
        claim = await self._publisher.claim(job.conversation_id, job.response_id, owner, recovered=recovered)
        if claim.status == "resume":
            chunks = await self._takeover(job, claim.next_index)
            if chunks is None:
                return
            index = claim.next_index
        elif claim.status == "ok":
            # ``next_index`` > 0 only when this producer's own earlier attempt got that far.
            index = claim.next_index
            generator = self._generator
            if isinstance(generator, WithHistory):
                history = await self._publisher.history(job.conversation_id)
                chunks = generator.generate_with_history(history, job.max_tokens, completion)
            else:
                chunks = generator.generate(job.prompt, job.max_tokens)
            if index:
                chunks = _skip(chunks, index)
        else:
            return  # finished already, cancelled while queued, superseded, or a live producer runs it
        await self._stream(job, chunks, index, posted_at, completion)

    async def _takeover(self, job: Job, next_index: int) -> AsyncIterator[str] | None:
        """A half-written answer whose producer stopped: continue it, or end it as failed (the policy)."""
        self.metrics.takeovers.inc()
        generator = self._generator
        if self._takeover_policy == "continue" and isinstance(generator, Resumable):
            log.warning("response %s lost its producer mid-answer; continuing it", job.response_id)
            text = await self._publisher.draft(job.conversation_id)
            return generator.resume(job.prompt, job.max_tokens, text, next_index)
        log.warning("response %s lost its producer mid-answer; ending it as failed", job.response_id)
        await self._publisher.finish(
            job.conversation_id,
            job.response_id,
            self._owner,
            FinishReason.FAILED,
            "the producer writing this answer stopped",
        )
        self.metrics.jobs.inc_labels(FinishReason.FAILED.value)
        return None

    async def _stream(
        self, job: Job, chunks: AsyncIterator[str], index: int, posted_at: float | None, completion: Completion
    ) -> None:
        reason = FinishReason.STOP
        error = ""
        first_at = 0.0
        first_index = index
        metrics = self.metrics
        loop = asyncio.get_running_loop()
        orphan_seconds = self._orphan_seconds
        check_at = loop.time() + orphan_seconds if orphan_seconds else math.inf
        outbox = DeltaOutbox(self._publisher, metrics, job.conversation_id, job.response_id, self._owner, index)
        try:
            try:
                async for text in chunks:
                    if loop.time() >= check_at:
                        assert orphan_seconds is not None
                        check_at = loop.time() + orphan_seconds / 4
                        if not await self._publisher.watched(job.conversation_id):
                            metrics.orphans.inc()
                            reason, error = FinishReason.CANCELLED, "nobody was following this answer"
                            break
                    if outbox.next_index >= job.max_tokens:
                        reason = FinishReason.LENGTH
                        break
                    if not text:
                        continue
                    if outbox.next_index == first_index:
                        first_at = time.time()
                        if posted_at is not None and first_index == 0:
                            metrics.time_to_first_token.observe(max(0.0, first_at - posted_at))
                    if outbox.add(text):  # the delta before was refused (or failed): settle it
                        outcome = await outbox.settle()
                        if outcome is Appended.NOT_OURS:
                            return
                        if outcome is Appended.CANCEL_REQUESTED:
                            reason = FinishReason.CANCELLED
                            break
            except GenerationFailed as exc:
                log.warning("response %s failed upstream: %s", job.response_id, exc)
                reason, error = FinishReason.FAILED, str(exc)
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()  # a cancel reaches the model server: it stops generating
            try:
                outcome = await outbox.drain()
            except GenerationFailed as exc:
                outcome, reason, error = Appended.OK, FinishReason.FAILED, str(exc)
            if outcome is Appended.NOT_OURS:
                return
            if outcome is Appended.CANCEL_REQUESTED and reason is not FinishReason.FAILED:
                reason = FinishReason.CANCELLED
        finally:
            outbox.abandon()  # cancelled or failed on the way: nobody will read its reply
        if reason is FinishReason.STOP and completion.finish_reason == "length":
            reason = FinishReason.LENGTH
        usage = None
        if completion.prompt_tokens is not None or completion.completion_tokens is not None:
            usage = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}
        await self._publisher.finish(job.conversation_id, job.response_id, self._owner, reason, error, usage=usage)
        metrics.jobs.inc_labels(reason.value)
        elapsed = time.time() - first_at
        tokens = outbox.next_index - first_index
        if tokens > 1 and elapsed > 0:
            metrics.tokens_per_second.observe((tokens - 1) / elapsed)


async def _skip(chunks: AsyncIterator[str], count: int) -> AsyncIterator[str]:
    """``chunks`` after the first ``count`` non-empty ones (already published by an earlier attempt)."""
    async for text in chunks:
        if count:
            count -= bool(text)
            continue
        yield text
