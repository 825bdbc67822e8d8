"""The delta outbox alone (issue 26): what waits for the delta in flight is bounded and goes out as
one delta, and a token whose previous delta is appended costs three Python calls of ours."""

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from fakeredis.aioredis import FakeRedis

from producer.delta_outbox import DeltaOutbox
from producer.metrics import ProducerMetrics
from producer.publisher import Appended, Publisher
from tests.conftest import ROOT
from tests.fakes import start_answer
from wire.env import Retention
from wire.keys import ConversationKeys

CID = "conversation-0000000001"


async def test_tokens_waiting_through_a_long_wait_are_held_as_text_and_go_out_as_one_delta() -> None:
    """While Redis is away a fast model fills the wait: what waits is bounded by ``max_tokens``,
    held as joined text rather than a string object per token, and goes out as one delta."""
    loop = asyncio.get_running_loop()

    class Held:
        """A publisher whose replies the test gives."""

        def __init__(self) -> None:
            self.sent: list[tuple[int, str, int]] = []
            self.replies: list[asyncio.Future[Any]] = []

        def delta_queue(self, cid: str, rid: str, owner: str) -> Callable[[int, str, int], "asyncio.Future[Any]"]:
            def queue(index: int, text: str, tokens: int) -> "asyncio.Future[Any]":
                reply: asyncio.Future[Any] = loop.create_future()
                self.replies.append(reply)
                self.sent.append((index, text, tokens))
                return reply

            return queue

    held = Held()
    outbox = DeltaOutbox(cast(Publisher, held), ProducerMetrics(), CID, "r", "p", 0)
    for n in range(1000):
        outbox.add(f"t{n} ")
    assert held.sent == [(0, "t0 ", 1)] and len(outbox._waiting) <= 64
    held.replies[0].set_result([1])
    await asyncio.sleep(0)  # the reply's callback sends what waited, without the model's next token
    assert held.sent[1] == (1, "".join(f"t{n} " for n in range(1, 1000)), 999)
    held.replies[1].set_result([1])
    assert await outbox.drain() is Appended.OK and outbox.next_index == 1000


async def test_a_token_costs_the_outbox_three_python_calls_when_the_last_delta_is_appended(
    fake_redis: FakeRedis,
) -> None:
    """Issue 26: the per-token path is the producer's own CPU. It ran twelve Python calls per token
    (a wrapper object per delta, three layers to queue one, property checks); the outbox now holds the
    delta in flight and queues through one bound call: ``add``, ``_send`` and the sender's ``queue``.
    ``scripts/producer_alone.py 300 1 20 calls``: 58.5 -> 48.6 Python calls per token in all."""
    await start_answer(fake_redis, ConversationKeys(CID))
    publisher = Publisher(fake_redis, Retention(), retry_seconds=1)
    outbox = DeltaOutbox(publisher, ProducerMetrics(), CID, "r", "p", 0)
    outbox.add("first ")
    assert await outbox.drain() is Appended.OK  # settled: its reply is here, OK
    outbox.add("second ")
    reply = outbox._reply
    assert reply is not None
    await asyncio.wait([reply])  # the reply came, and nobody has looked at it yet (the common case)
    calls: list[str] = []

    def profile(frame: Any, event: str, _: Any) -> None:
        if event == "call" and Path(frame.f_code.co_filename).is_relative_to(ROOT):  # ours, not asyncio's
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        blocked = outbox.add("third")
    finally:
        sys.setprofile(None)
    # The first chunk of a send also schedules the send: once per call, not per token.
    assert not blocked and calls == ["add", "_send", "queue", "_schedule"]
    assert await outbox.drain() is Appended.OK and outbox.next_index == 3
    await publisher.aclose()
