"""A Durable Stream's live feed on this node: one subscription, however many readers wait on it.

A message on the stream's channel says only that the stream grew. Each waiting reader then reads
on from its own offset in the stream itself, so a notification lost while the pub/sub connection
was down costs nothing: a reconnect wakes every reader, and each reads what it missed. (The next
step carries the data in the notification, so a broadcast is not read once per reader.)
"""

import asyncio
from typing import Any


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
    __slots__ = ("followers", "name")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.followers: set[Any] = set()
        """The ``DurableReader``s waiting on the stream."""

    def _wake_all(self) -> None:
        for reader in self.followers:
            reader.wake()

    def on_frame(self, data: bytes) -> None:
        self._wake_all()

    def on_connected(self, generation: int) -> None:
        pass

    def on_subscribed(self, generation: int) -> None:
        self._wake_all()  # growth may have been published while the connection was down

    def on_lost(self) -> None:
        self._wake_all()
