"""The one write path per client: order across replay, live, heartbeat and reset; its bounds."""

import asyncio

from server.client_stream import ClientStream, http_chunk
from tests.fakes import FakeTransport, make_listener
from wire.events import delta_data
from wire.sse import encode_event


def frame(event_id: str, text: str) -> bytes:
    return encode_event(event_id, "delta", delta_data("r", 0, text, 0))


async def test_one_write_path_keeps_order_across_replay_live_heartbeat_and_reset() -> None:
    transport = FakeTransport()
    client = make_listener(transport)
    client.send_control(b"retry: 1000\n\n")
    client.deliver((3, 0), frame("3-0", "live during replay"), b"unused")  # buffered while catching up
    client.heartbeat(b":\n\n", http_chunk(b":\n\n"), 0.0)  # not while catching up
    await client.replay([((1, 0), frame("1-0", "one")), ((2, 0), frame("2-0", "two")), ((3, 0), frame("3-0", "x"))])
    client.go_live()  # 3-0 came from history already: not twice
    client.deliver((3, 0), frame("3-0", "again"), http_chunk(frame("3-0", "again")))
    client.heartbeat(b":\n\n", http_chunk(b":\n\n"), 0.0)
    client.deliver((4, 0), frame("4-0", "four"), http_chunk(frame("4-0", "four")))
    reset = encode_event("2-0", "reset", '{"reason":"unknown_cursor"}')
    client.reset((2, 0), reset)
    client.deliver((4, 0), frame("4-0", "four"), http_chunk(frame("4-0", "four")))  # after the head: new again
    expected = b"".join(
        http_chunk(f)
        for f in (
            b"retry: 1000\n\n",
            frame("1-0", "one"),
            frame("2-0", "two"),
            frame("3-0", "x"),
            b":\n\n",
            frame("4-0", "four"),
            reset,
            frame("4-0", "four"),
        )
    )
    assert bytes(transport.data) == expected


class StuckWriter:
    """A stream writer whose socket never drains (a client that stopped reading)."""

    async def drain(self) -> None:
        await asyncio.Event().wait()


async def test_replay_to_a_client_that_does_not_read_is_bounded_and_cut_off() -> None:
    transport = FakeTransport(stalled=True)
    slow: list[bool] = []
    client = ClientStream(
        transport,  # type: ignore[arg-type]
        StuckWriter(),  # type: ignore[arg-type]
        chunked=True,
        max_buffer=1 << 20,
        max_pending=100,
        send_timeout=0.05,
        on_close=lambda: None,
        on_slow=lambda: slow.append(True),
    )
    await client.replay([((i, 0), frame(f"{i}-0", "x" * 1000)) for i in range(1, 500)])
    assert client.closed and transport.aborted and slow == [True]
    assert transport.data.count(b"event: delta") == 1  # one frame in flight, never the whole page
