"""A pub/sub connection stops when cancelled even if redis-py's disconnect never returns.

Found with SIGTERM right after a worker started (``tests/test_cluster.py``, 3 hangs in 20 tries):
the cancel was spent inside ``connect``, and the ``finally``'s ``disconnect`` then waited forever
for a close, so the worker outlived its supervisor. The disconnect is bounded now.
"""

import asyncio
from typing import Any

from server.pubsub import PubSubConnection


class _Sink:
    def wanted_channels(self) -> list[bytes]:
        return []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class _HangingConnection:
    """Connects, never delivers a message, and never finishes disconnecting."""

    async def connect(self) -> None:
        pass

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()


async def test_a_cancelled_connection_stops_though_its_disconnect_hangs() -> None:
    pubsub = PubSubConnection(_HangingConnection, _Sink(), iter(range(1, 100)), timeout_seconds=0.2)  # type: ignore[arg-type]
    task = asyncio.create_task(pubsub.run())
    await asyncio.sleep(0.05)
    assert pubsub.ready
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3)
    assert done, "the connection never stopped"
