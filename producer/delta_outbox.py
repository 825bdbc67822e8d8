"""One answer's deltas on their way to Redis: one in flight at most, the tokens that come meanwhile
sent together as the next.

A model faster than a Redis round trip (a small model, a burst after a tool call, a producer
behind) would otherwise cost Redis and the producer a delta per token and queue them behind each
other; here it costs a delta per round trip, and at a trickle each token still goes out alone and at
once. The index of a delta is its first token's, and the fence counts tokens (``wire.deltas``),
so ``max_tokens``, a retry's skip and a takeover's resume count the model's tokens whatever deltas
carried them. Exactly once stays per delta: a delta sent again is sent as it was first sent.
"""

import asyncio
import logging
from typing import Any

from producer.generation import GenerationFailed
from producer.metrics import ProducerMetrics
from producer.publisher import OUTCOMES, TRANSIENT, Appended, Publisher
from wire.events import delta_text

log = logging.getLogger(__name__)

_JOINED_AT = 64
"""Waiting tokens are joined into one string this many at a time: while Redis is away a fast model
fills the wait, and what it holds is then its text, not a string object per token (bounded by
``max_tokens`` either way)."""


def _appended(reply: "asyncio.Future[Any]") -> bool:
    """Is the delta appended already (its reply here and OK)?"""
    return reply.done() and not reply.cancelled() and reply.exception() is None and reply.result()[0] == 1


class DeltaOutbox:
    """Per token this runs once (``add``), so its common case (the last delta appended, nothing
    waiting) is one method and no object but the reply's future: the outbox holds the delta in
    flight itself, and its chunks go to the publisher's queue for the answer without a lookup.
    The layers this replaced (a wrapper per delta, three calls to queue one) were a fifth of the
    producer's own CPU per chunk (docs/benchmarks.md, session 15)."""

    def __init__(
        self,
        publisher: Publisher,
        metrics: ProducerMetrics,
        conversation_id: str,
        response_id: str,
        owner: str,
        index: int,
    ) -> None:
        """``index``: the answer's first token this run writes (Redis holds those before it)."""
        self._publisher = publisher
        self._tokens = metrics.tokens
        self._resent = metrics.resent
        self._answer = (conversation_id, response_id, owner)
        self._queue = publisher.delta_queue(conversation_id, response_id, owner)
        self._first = index
        self.next_index = index
        """The next token's index: the tokens sent, in flight or waiting."""
        self._unsent = index
        """The first waiting token's index (``next_index`` when none waits)."""
        self._waiting: list[str] = []
        """The text of the tokens that came while a delta was in flight."""
        self._reply: asyncio.Future[Any] | None = None
        """The reply of the delta in flight (the last of ``_sent``), or answered and not yet looked at."""
        self._sent: list[tuple[int, int, str]] = []
        """This run's deltas (index, tokens, text), bounded by ``max_tokens``: what to send again
        if Redis loses some."""

    def add(self, text: str) -> bool:
        """Send a token now, or after the delta in flight is appended, with the others that came.
        True when the delta in flight was answered with something other than appended: ``settle``
        it before adding more."""
        self.next_index += 1
        reply = self._reply
        if reply is not None:
            # ``_appended``, inlined: this runs per token
            if not (reply.done() and not reply.cancelled() and reply.exception() is None and reply.result()[0] == 1):
                waiting = self._waiting
                waiting.append(text)
                if self.next_index - self._unsent == 1:
                    if not reply.done():
                        # The first to wait: the reply sends it (at a trickle no callback is made).
                        reply.add_done_callback(self._replied)
                elif len(waiting) >= _JOINED_AT:
                    self._waiting = ["".join(waiting)]
                return reply.done()
            self._tokens.value += self._sent[-1][1]
            self._reply = None
        if self._waiting:  # the reply is here and its callback has not run yet
            self._waiting.append(text)
            self._send_waiting()
        else:
            self._send(text, 1)
        return False  # a queued delta is answered a loop turn later at the soonest, failed or not

    async def settle(self) -> Appended:
        """The outcome of the delta in flight (waiting for its reply), after sending lost ones
        again if Redis lost some; if it went through, the waiting tokens go out."""
        reply = self._reply
        assert reply is not None
        index, tokens, text = self._sent[-1]
        try:
            result = await reply  # almost always here already: no wake-up
        except TRANSIENT:
            outcome = await self._publisher.delta(*self._answer, index, text, tokens)  # idempotent: again
        else:
            outcome = OUTCOMES[int(result[0])]
        if self._reply is not reply:
            return outcome  # appended, and retired meanwhile by its reply's callback (which sent what waited)
        if outcome is Appended.BEHIND:
            outcome = await self._send_again(index)
        self._reply = None
        if outcome is Appended.NOT_OURS:
            # Another producer took it over (this one looked dead), or the conversation expired.
            log.warning("response %s is no longer this producer's; stopping", self._answer[1])
        elif outcome is not Appended.CANCEL_REQUESTED:
            self._tokens.value += tokens
            self._send_waiting()
        return outcome

    async def drain(self) -> Appended:
        """Send what waits and settle every delta: the last one lands before the answer is finished
        (finishing stores its text). Anything but appended stops it and is returned."""
        while self._reply is not None:
            outcome = await self.settle()
            if outcome is Appended.NOT_OURS or outcome is Appended.CANCEL_REQUESTED:
                return outcome
        return Appended.OK

    def abandon(self) -> None:
        """The writer stops without the outcome (cancelled, or failed on the way): withdraw the
        call, or consume its error."""
        self._waiting = []
        reply = self._reply
        if reply is not None:
            if not reply.done():
                reply.cancel()
            elif not reply.cancelled():
                reply.exception()
            self._reply = None

    def _replied(self, _: "asyncio.Future[Any]") -> None:
        self._send_waiting()

    def _send_waiting(self) -> None:
        """The waiting tokens as one delta, if nothing is in flight (or what was is appended)."""
        reply = self._reply
        if reply is not None:
            if not _appended(reply):
                return  # in flight, or refused: ``settle`` deals with it
            self._tokens.value += self._sent[-1][1]
            self._reply = None
        waiting = self._waiting
        if waiting:
            self._waiting = []
            self._send(waiting[0] if len(waiting) == 1 else "".join(waiting), self.next_index - self._unsent)

    def _send(self, text: str, tokens: int) -> None:
        if "\r" in text or not text.isascii():
            text = delta_text(text)  # as every view of the answer holds it (two C checks when it is already)
        index = self._unsent
        self._unsent = index + tokens
        self._reply = self._queue(index, text, tokens)
        self._sent.append((index, tokens, text))

    async def _send_again(self, upto: int) -> Appended:
        """Redis lost deltas it had acknowledged (a failover to a replica that lagged): append them
        again from this run's copy, each as it was sent, up to the one at ``upto``. Raises if they
        are not all here."""
        publisher = self._publisher
        answer = self._answer
        expected = await publisher.next_index(*answer)
        again = [sent for sent in self._sent if expected <= sent[0] <= upto]
        if expected < self._first or not again or again[0][0] != expected:
            raise GenerationFailed("Redis lost part of this answer written before this producer took it")
        log.warning("response %s: Redis lost tokens %d..%d; sending them again", answer[1], expected, upto - 1)
        self._resent.value += upto - expected
        outcome = Appended.OK
        for index, tokens, text in again:
            outcome = await publisher.delta(*answer, index, text, tokens)
            if outcome is not Appended.OK and outcome is not Appended.DUPLICATE:
                return outcome
        return outcome
