"""A Durable Stream's live feed on this node: one subscription, however many readers wait on it.

A message on the stream's channel says only that the stream grew. Each waiting reader then reads
on from its own offset in the stream itself, so a notification lost while the pub/sub connection
was down costs nothing: a reconnect wakes every reader, and each reads what it missed.

Readers woken together at one offset (a broadcast: every reader of a stream at its tail) share one
read (``shared_read``): a read is shared only by readers that were woken no later than it started,
so none of them can miss an append notified before it. Measured: 1000 SSE readers of one stream
cost one Redis read per append instead of 1000.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DurableReader:
    """One long-poll or SSE reader: woken when its stream may have grown, or when it must end."""

    __slots__ = ("_woken", "closed")

    def __init__(self) -> None:
        self._woken = asyncio.Event()
        self.closed = False

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        """The node is shutting down: the reader answers what it has and ends."""
        self.closed = True
        self._woken.set()

    def arm(self) -> None:
        """Before a read: a growth notified from here on wakes the next ``wait``."""
        self._woken.clear()

    async def wait(self, seconds: float) -> bool:
        """Until woken (True) or ``seconds`` pass (False)."""
        try:
            async with asyncio.timeout(seconds):
                await self._woken.wait()
        except TimeoutError:
            return False
        return True


class DurableFeed:
    __slots__ = ("_reads", "followers", "generation", "name")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.followers: set[Any] = set()
        """The ``DurableReader``s waiting on the stream."""
        self.generation = 0
        """Counts the wake-ups: a read started at generation g sees every append notified by then."""
        self._reads: dict[tuple[str, int], asyncio.Future[Any]] = {}

    def shared_read(self, after: str, read: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """``read()`` of what follows ``after``, shared with the readers asking the same since the
        last wake-up (one of them leaving does not cancel it for the others)."""
        key = (after, self.generation)
        future = self._reads.get(key)
        if future is None:
            future = self._reads[key] = asyncio.ensure_future(read())
            future.add_done_callback(lambda _: self._reads.pop(key, None))
        return asyncio.shield(future)

    def _wake_all(self) -> None:
        self.generation += 1
        for reader in self.followers:
            reader.wake()

    def on_frames(self, frames: list[bytes]) -> None:
        self._wake_all()

    def on_connected(self, generation: int) -> None:
        pass

    def on_subscribed(self, generation: int) -> None:
        self._wake_all()  # growth may have been published while the connection was down

    def on_lost(self) -> None:
        self._wake_all()
