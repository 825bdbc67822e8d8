"""Chunks to Redis: queued by the answers, sent together as ``DELTAS`` calls.

Each chunk's index is still checked against its answer's owner inside the call
(``wire.deltas``), so how chunks are grouped changes the cost, never the guarantee. Per call, not
per chunk, was most of the producer's CPU at load: chunks that come less than the send interval
after the last send wait for it and share the next call (docs/measurements.md, deltas-interval),
and while a call is in flight the next ones gather instead of piling up behind it.
"""

import asyncio
import functools
import math
import operator
import time
from typing import Any

from redisio.calls import ScriptCalls
from redisio.pipe import Script
from wire import deltas
from wire.env import Retention
from wire.keys import ConversationKeys

_DELTAS = Script(deltas.DELTAS)
_DONE = asyncio.Future.done

_FRESH_KEPT = 10_000
"""Answers refreshed in one period at most; past it the next period begins early (some are
refreshed sooner, harmlessly)."""
_KEYS = operator.itemgetter(0)
_CONVERSATION_ID = operator.attrgetter("conversation_id")


def _hand_out(done: "asyncio.Future[Any]", futures: list["asyncio.Future[Any]"], chunks: int) -> None:
    """A ``DELTAS`` call's outcome to each of its chunks: its own reply, or the call's error."""
    if done.cancelled():
        for future in futures:
            future.cancel()
        return
    error = done.exception()
    if error is not None:
        for future in futures:
            if not future.done():  # withdrawn after it was sent: its outcome is not needed
                future.set_exception(error)
        return
    for future, reply in zip(futures, deltas.delta_replies(done.result(), chunks), strict=True):
        try:
            future.set_result(reply)
        except asyncio.InvalidStateError:
            pass  # withdrawn after it was sent: its reply is not needed (rare: not checked per chunk)


class ChunkSender:
    def __init__(self, calls: ScriptCalls, retention: Retention, *, by_slot: bool, send_interval: float) -> None:
        """``by_slot``: one call per partition (a Redis Cluster: a script's keys share a slot).
        ``send_interval``: the shortest time between two sends, in seconds."""
        self._calls = calls
        self._retention = retention
        self._by_slot = by_slot
        self._send_interval = send_interval
        self._queued: list[deltas.DeltaItem] = []
        """Chunks waiting to be sent."""
        self._replies: list[asyncio.Future[Any]] = []
        """Their replies' futures, in the same order."""
        self._sent_at = -math.inf
        """When chunks last went out (loop time)."""
        self._in_flight = 0
        """``DELTAS`` calls sent and not answered yet."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop the chunks are sent on, looked up once: ``get_running_loop`` is a ``getpid``
        system call per chunk on Python 3.11 (0.25 µs here)."""
        self._fresh: set[str] = set()
        """The answers whose TTLs were refreshed since ``_period_began``: ``DELTAS`` refreshes
        them only when asked, at most a quarter of the retention after the last time."""
        self._fresh_before: set[str] = set()
        """Those refreshed in the period before (a period is an eighth of the retention)."""
        self._period_began = -math.inf
        self.clock = time.monotonic

    def queue(self, keys: ConversationKeys, fence: str, index: int, text: str, tokens: int) -> "asyncio.Future[Any]":
        """Queue one delta of the answer whose fence is ``fence`` (``tokens`` of the model's tokens
        from ``index`` on); its own reply (or the call's error) arrives in the future. Cancelling
        the future before it is sent withdraws the delta."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queued and not self._in_flight:
            self._schedule(loop)
        self._queued.append((keys, fence, index, text, tokens))
        self._replies.append(future)
        return future

    def touched(self, conversation_id: str) -> None:
        """The answer's TTLs were just refreshed (by its claim)."""
        self._fresh.add(conversation_id)

    def forget(self, conversation_id: str) -> None:
        """The answer ended here."""
        self._fresh.discard(conversation_id)
        self._fresh_before.discard(conversation_id)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send at the end of this loop turn, or once the interval since the last send has passed:
        under load a call carries the interval's chunks, at a trickle none waits."""
        delay = self._sent_at + self._send_interval - loop.time()
        if delay > 0:
            loop.call_later(delay, self._send)
        else:
            loop.call_soon(self._send)

    def _send(self) -> None:
        items, futures = self._queued, self._replies
        self._queued, self._replies = [], []
        if any(map(_DONE, futures)):  # some were withdrawn (rare: checked in C, not per chunk in Python)
            kept = [position for position, future in enumerate(futures) if not future.done()]
            items, futures = [items[p] for p in kept], [futures[p] for p in kept]
        if not items:
            return
        loop = self._loop
        assert loop is not None  # set by the first ``queue``
        self._sent_at = loop.time()
        calls = deltas.delta_calls(items, self._retention, by_slot=self._by_slot, touch=self._due(items))
        self._in_flight += len(calls)
        for call in calls:
            reply = self._calls.script(_DELTAS, call.keys, call.args)
            # One call carries every item in order (a standalone Redis): its futures are the items'.
            group = futures if len(calls) == 1 else [futures[p] for p in call.positions]
            # One callback for both (each is a loop handle of its own).
            reply.add_done_callback(functools.partial(self._answered, futures=group, chunks=call.chunks))

    def _answered(self, done: "asyncio.Future[Any]", futures: list["asyncio.Future[Any]"], chunks: int) -> None:
        """A call ended (replied, failed or withdrawn): its chunks get their outcomes, and what
        gathered meanwhile goes out."""
        self._in_flight -= 1
        if not self._in_flight and self._queued:
            assert self._loop is not None
            self._schedule(self._loop)  # first: a hand-out that raised would leave them waiting
        _hand_out(done, futures, chunks)

    def _due(self, items: list[deltas.DeltaItem]) -> set[str]:
        """The conversations among ``items`` whose TTLs this send refreshes: those not refreshed in
        this period or the one before, so each is refreshed an eighth to a quarter of the retention
        after the last time. In sets, in C: per chunk a dict lookup and a comparison in Python were
        a tenth of a send's Python (``producer_alone.py calls``)."""
        now = self.clock()
        if now - self._period_began >= self._retention.ttl_seconds / 8 or len(self._fresh) >= _FRESH_KEPT:
            self._fresh_before, self._fresh = self._fresh, set()
            self._period_began = now
        due = set(map(_CONVERSATION_ID, map(_KEYS, items)))
        due -= self._fresh
        due -= self._fresh_before
        self._fresh |= due
        return due
