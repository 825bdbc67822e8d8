"""One answer's deltas on their way to Redis: one in flight at most, the tokens that come meanwhile
sent together as the next.

A model faster than a Redis round trip (a small model, a burst after a tool call, a producer
behind) would otherwise cost Redis and the producer a delta per token and queue them behind each
other; here it costs a delta per round trip, and at a trickle each token still goes out alone and at
once. The index of a delta is its first token's, and the fence counts tokens (``wire.deltas``),
so ``max_tokens``, a retry's skip and a takeover's resume count the model's tokens whatever deltas
carried them. Exactly once stays per delta: a delta sent again is sent as it was first sent.
"""

import logging

from producer.generation import GenerationFailed
from producer.metrics import ProducerMetrics
from producer.publisher import Appended, PendingDelta, Publisher

log = logging.getLogger(__name__)

_JOINED_AT = 64
"""Waiting tokens are joined into one string this many at a time: while Redis is away a fast model
fills the wait, and what it holds is then its text, not a string object per token (bounded by
``max_tokens`` either way)."""


class DeltaOutbox:
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
        self._metrics = metrics
        self._conversation_id = conversation_id
        self._response_id = response_id
        self._owner = owner
        self._first = index
        self.next_index = index
        """The next token's index: the tokens sent, in flight or waiting."""
        self._unsent = index
        """The first waiting token's index (``next_index`` when none waits)."""
        self._waiting: list[str] = []
        """The text of the tokens that came while a delta was in flight."""
        self._pending: PendingDelta | None = None
        """The delta in flight, or answered and not yet looked at."""
        self._sent: list[tuple[int, int, str]] = []
        """This run's deltas (index, tokens, text), bounded by ``max_tokens``: what to send again
        if Redis loses some."""

    def add(self, text: str) -> None:
        """Send a token now, or after the delta in flight is appended, with the others that came.
        Run per token: the common case (the last delta appended, nothing waiting) is kept short."""
        self.next_index += 1
        pending = self._pending
        if pending is not None:
            if not pending.appended():
                waiting = self._waiting
                waiting.append(text)
                if self.next_index - self._unsent == 1:
                    if not pending.answered():
                        # The first to wait: the reply sends it (at a trickle no callback is made).
                        pending.when_answered(self._send_waiting)
                elif len(waiting) >= _JOINED_AT:
                    self._waiting = ["".join(waiting)]
                return
            self._metrics.tokens.value += pending.tokens
            self._pending = None
        if self._waiting:  # the reply is here and its callback has not run yet
            self._waiting.append(text)
            self._send_waiting()
        else:
            self._send(text, 1)

    @property
    def blocked(self) -> bool:
        """The delta in flight was answered with something other than appended: ``settle`` it."""
        pending = self._pending
        return pending is not None and pending.answered() and not pending.appended()

    async def settle(self) -> Appended:
        """The outcome of the delta in flight (waiting for its reply), after sending lost ones
        again if Redis lost some; if it went through, the waiting tokens go out."""
        pending = self._pending
        assert pending is not None
        outcome = await pending.outcome()
        if self._pending is not pending:
            return outcome  # appended, and retired meanwhile by its reply's callback (which sent what waited)
        if outcome is Appended.BEHIND:
            outcome = await self._send_again(pending)
        self._pending = None
        if outcome is Appended.NOT_OURS:
            # Another producer took it over (this one looked dead), or the conversation expired.
            log.warning("response %s is no longer this producer's; stopping", self._response_id)
        elif outcome is not Appended.CANCEL_REQUESTED:
            self._metrics.tokens.value += pending.tokens
            self._send_waiting()
        return outcome

    async def drain(self) -> Appended:
        """Send what waits and settle every delta: the last one lands before the answer is finished
        (finishing stores its text). Anything but appended stops it and is returned."""
        while self._pending is not None:
            outcome = await self.settle()
            if outcome is Appended.NOT_OURS or outcome is Appended.CANCEL_REQUESTED:
                return outcome
        return Appended.OK

    def abandon(self) -> None:
        """The writer stops without the outcome (cancelled, or failed on the way)."""
        self._waiting = []
        if self._pending is not None:
            self._pending.abandon()
            self._pending = None

    def _send_waiting(self) -> None:
        """The waiting tokens as one delta, if nothing is in flight (or what was is appended)."""
        pending = self._pending
        if pending is not None:
            if not pending.appended():
                return  # in flight, or refused: ``settle`` deals with it
            self._metrics.tokens.value += pending.tokens
            self._pending = None
        waiting = self._waiting
        if waiting:
            self._waiting = []
            self._send(waiting[0] if len(waiting) == 1 else "".join(waiting), self.next_index - self._unsent)

    def _send(self, text: str, tokens: int) -> None:
        index = self._unsent
        self._unsent = index + tokens
        self._pending = self._publisher.delta_soon(
            self._conversation_id, self._response_id, self._owner, index, text, tokens
        )
        self._sent.append((index, tokens, text))

    async def _send_again(self, pending: PendingDelta) -> Appended:
        """Redis lost deltas it had acknowledged (a failover to a replica that lagged): append them
        again from this run's copy, each as it was sent, up to ``pending``'s. Raises if they are
        not all here."""
        publisher = self._publisher
        answer = (self._conversation_id, self._response_id, self._owner)
        expected = await publisher.next_index(*answer)
        again = [sent for sent in self._sent if expected <= sent[0] <= pending.index]
        if expected < self._first or not again or again[0][0] != expected:
            raise GenerationFailed("Redis lost part of this answer written before this producer took it")
        log.warning("response %s: Redis lost tokens %d..%d; sending them again", answer[1], expected, pending.index - 1)
        self._metrics.resent.value += pending.index - expected
        outcome = Appended.OK
        for index, tokens, text in again:
            outcome = await publisher.delta(*answer, index, text, tokens)
            if outcome is not Appended.OK and outcome is not Appended.DUPLICATE:
                return outcome
        return outcome
