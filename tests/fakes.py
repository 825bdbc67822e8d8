"""Test doubles shared by the hub and client-stream tests: a transport that records, polling helpers."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from server.client_stream import ClientStream
from server.follower import Follower
from server.hub import Hub
from server.store import ConversationStore
from wire import scripts
from wire.deltas import DELTAS, DeltaItem, delta_calls, delta_replies
from wire.env import Retention
from wire.keys import ConversationKeys


class FakeTransport:
    """Records writes; ``stalled`` ones never drain, like a client that stopped reading."""

    def __init__(self, *, stalled: bool = False) -> None:
        self.data = bytearray()
        self.stalled = stalled
        self.unsent = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data
        if self.stalled:
            self.unsent += len(data)

    def is_closing(self) -> bool:
        return self.aborted

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def abort(self) -> None:
        self.aborted = True


def sent_ids(transport: FakeTransport) -> list[str]:
    """The ids of the event frames written to ``transport``, in order."""
    lines = bytes(transport.data).split(b"\n")
    return [line.removeprefix(b"id: ").decode() for line in lines if line.startswith(b"id: ")]


def make_follower(
    transport: FakeTransport,
    *,
    max_buffer: int = 1 << 20,
    max_pending: int = 100,
    writer: Any = None,
    send_timeout: float = 5,
    on_slow: Any = None,
    conversation_id: str | None = None,
) -> Follower:
    """A follower of one conversation on a connection of its own (or, with ``conversation_id``, muxed)."""
    stream = ClientStream(
        transport,  # type: ignore[arg-type]
        writer,
        chunked=True,
        max_buffer=max_buffer,
        send_timeout=send_timeout,
        on_close=lambda: None,
        on_slow=on_slow,
    )
    return Follower(stream, max_pending=max_pending, conversation_id=conversation_id)


async def eventually(predicate: Any, within: float = 2.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling a plain condition in a test
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running_hub(redis: Any, store: ConversationStore, **options: float) -> AsyncIterator[Hub]:
    """A hub on ``redis`` with its pub/sub connection up, stopped (task cancelled and awaited) after."""
    settings = {"grace_seconds": 0.2, "timeout_seconds": 2.0, "replay_page": 3, "heartbeat_seconds": 0.1}
    hub = Hub(redis, store, **{**settings, **options})  # type: ignore[arg-type]
    task = asyncio.create_task(hub.run())
    try:
        await eventually(lambda: hub.ready)
        yield hub
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def start_answer(redis: Any, keys: ConversationKeys, response_id: str = "r", owner: str = "p") -> None:
    """A queued answer claimed by ``owner`` through the real ``START`` script (its fence made)."""
    await redis.hset(keys.state, mapping={"active": response_id, "phase": "queued", "start": "0-0"})
    argv = scripts.conversation_argv(keys.channel, 1000, 3600, response_id, owner, "{}", "0")
    assert await redis.eval(scripts.START, len(keys.all), *keys.all, *argv) == [b"ok", 0]


async def last_event_id(redis: Any, keys: ConversationKeys) -> str:
    """The id of the conversation's newest event (a chunk's reply does not carry it)."""
    [(event_id, _)] = await redis.xrevrange(keys.events, count=1)
    return str(event_id.decode())


async def append_deltas(redis: Any, items: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Append ``items`` through the real ``DELTAS`` script, as the producer does; one reply per chunk.
    An item is ``(keys, response id, owner, index, text[, tokens])`` (without a count, one token)."""
    replies: list[Any] = []
    full: list[DeltaItem] = [
        (keys, keys.fence(response_id, owner), index, text, tokens)
        for keys, response_id, owner, index, text, tokens in (item if len(item) == 6 else (*item, 1) for item in items)
    ]
    for call in delta_calls(full, Retention(max_events=1000, ttl_seconds=3600), by_slot=False):
        reply = await redis.eval(DELTAS, len(call.keys), *call.keys, *call.args)
        replies += delta_replies(reply, call.chunks)
    return replies
