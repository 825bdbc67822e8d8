"""The one write path per client: order across replay, live, heartbeat and reset; its bounds."""

import asyncio
import tracemalloc
from typing import cast

from server.client_stream import http_chunk
from server.feed import ChannelFeed, FeedServices, Spawn
from server.metrics import NodeMetrics
from server.store import ConversationStore
from tests.fakes import FakeTransport, make_follower, sent_ids
from wire.keys import ConversationKeys
from wire.sse import encode_event


def frame(event_id: str, text: str) -> bytes:
    return encode_event(event_id, "delta", text)


async def test_one_write_path_keeps_order_across_replay_live_heartbeat_and_reset() -> None:
    transport = FakeTransport()
    client = make_follower(transport)
    client.stream.send_control(b"retry: 1000\n\n")
    client.deliver((3, 0), frame("3-0", "live during replay"))  # buffered while catching up
    if client.live:  # the hub beats live followers only
        client.stream.heartbeat(0.0)
    await client.replay([((1, 0), frame("1-0", "one")), ((2, 0), frame("2-0", "two")), ((3, 0), frame("3-0", "x"))])
    client.go_live()  # 3-0 came from history already: not twice
    client.deliver((3, 0), frame("3-0", "again"))
    client.stream.heartbeat(1.0)
    client.stream.heartbeat(1.0)  # one beat per tick per connection
    client.deliver((4, 0), frame("4-0", "four"))
    reset = encode_event("2-0", "reset", '{"reason":"unknown_cursor"}')
    client.reset((2, 0), reset)
    client.deliver((4, 0), frame("4-0", "four"))  # after the head: new again
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
    client = make_follower(transport, writer=StuckWriter(), send_timeout=0.05, on_slow=lambda: slow.append(True))
    await client.replay([((i, 0), frame(f"{i}-0", "x" * 1000)) for i in range(1, 500)])
    assert client.closed and transport.aborted and slow == [True]
    assert transport.data.count(b"event: delta") == 1  # one frame in flight, never the whole page


async def test_muxed_followers_share_one_connection_and_name_their_conversation() -> None:
    transport = FakeTransport()
    a = make_follower(transport, conversation_id="conversation-aaaaaaaaa")
    b = make_follower(transport, conversation_id="conversation-bbbbbbbbb")
    b.stream = a.stream  # one connection, two conversations
    await a.replay([((1, 0), frame("1-0", "a1"))])
    await b.replay([((1, 0), frame("1-0", "b1")), ((2, 0), frame("2-0", "b2"))])
    a.go_live()
    b.go_live()
    a.stream.heartbeat(1.0)
    b.stream.heartbeat(1.0)
    ids = ["conversation-aaaaaaaaa/1-0", "conversation-bbbbbbbbb/1-0", "conversation-bbbbbbbbb/2-0"]
    assert sent_ids(transport) == ids
    assert transport.data.count(b":\n\n") == 1


async def test_a_muxed_follower_names_its_conversation_once_for_frames_buffered_during_catch_up() -> None:
    from server.follower import mux_frame

    transport = FakeTransport()
    follower = make_follower(transport, conversation_id="conversation-aaaaaaaaa")
    prefix = b"id: conversation-aaaaaaaaa/"
    live = mux_frame(prefix, frame("2-0", "live while catching up"))  # the feed hands muxed frames
    follower.deliver((2, 0), live)
    await follower.replay([((1, 0), frame("1-0", "from history"))])
    follower.go_live()
    assert sent_ids(transport) == ["conversation-aaaaaaaaa/1-0", "conversation-aaaaaaaaa/2-0"]


def test_a_frame_is_framed_once_for_all_its_followers_not_once_per_client() -> None:
    """Issue 26, S3's shape (2,000 tabs on one conversation): every follower built the same HTTP
    chunk of the same frame for itself, one allocation and one format per client per event. The
    feed makes each form once per frame; the followers write that one object."""
    feed = ChannelFeed(ConversationKeys("c1").channel.encode(), _services())
    written: list[bytes] = []

    class Recording(FakeTransport):
        def write(self, data: bytes) -> None:
            written.append(data)
            super().write(data)

    followers = [make_follower(Recording()) for _ in range(3)]
    muxed = [make_follower(Recording(), conversation_id="c1") for _ in range(2)]
    for follower in followers + muxed:
        follower.go_live()
        feed.followers.add(follower)
    feed.on_frames([frame("5-0", "hello")])
    assert len(written) == 5
    plain = [data for data in written if data.endswith(frame("5-0", "hello") + b"\r\n")]
    mux = [data for data in written if data not in plain]
    assert plain[0] == http_chunk(frame("5-0", "hello")) and len(mux) == 2
    assert len({id(data) for data in plain}) == 1  # one object for the three plain followers
    assert len({id(data) for data in mux}) == 1  # and one for the two multiplexed ones


def test_a_run_of_frames_reaches_each_live_follower_in_one_write_and_in_order() -> None:
    """Issue 26: a node that fell behind (S3's 2,000 tabs at the machine's limit) wrote each client
    one write per frame, so the further behind, the more it spent per event: the backlog grew
    without bound. A read's frames of one conversation now go to each client in one write;
    followers catching up, or holding some of the frames already, still take them one by one."""
    feed = ChannelFeed(ConversationKeys("c1").channel.encode(), _services())
    frames = [frame(f"{n}-0", f"part {n}") for n in (5, 6, 7)]
    transports = {name: _Counting() for name in ("live", "muxed", "behind", "catching_up")}
    live = make_follower(transports["live"])
    muxed = make_follower(transports["muxed"], conversation_id="c1")
    behind = make_follower(transports["behind"])
    catching_up = make_follower(transports["catching_up"])
    for follower in (live, muxed, behind):
        follower.go_live()
    behind.skip_until = (6, 0)  # it has 5 and 6 already (from the history)
    for follower in (live, muxed, behind, catching_up):
        feed.followers.add(follower)
    feed.on_frames(frames)
    assert transports["live"].writes == 1 and bytes(transports["live"].data) == http_chunk(b"".join(frames))
    assert transports["muxed"].writes == 1 and sent_ids(transports["muxed"]) == ["c1/5-0", "c1/6-0", "c1/7-0"]
    assert sent_ids(transports["behind"]) == ["7-0"]
    assert transports["catching_up"].writes == 0 and catching_up.pending == [
        ((n, 0), f) for n, f in zip((5, 6, 7), frames, strict=True)
    ]
    assert feed.forwarded == (7, 0)
    feed.on_frames([frames[2], frame("8-0", "part 8")])  # 7 again (the history had it): not twice
    assert sent_ids(transports["live"]) == ["5-0", "6-0", "7-0", "8-0"]


class _Counting(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def _services() -> FeedServices:
    return FeedServices(
        store=cast(ConversationStore, None),
        page_size=10,
        timeout_seconds=1,
        metrics=NodeMetrics(),
        spawn=cast(Spawn, None),
    )


def test_a_channel_with_a_native_tab_costs_its_feed_and_follower_set_alone() -> None:
    """Issue 26, S1 (10,000 tabs over 5,000 conversations, two workers): a conversation whose tabs
    the kernel spread over both workers has a feed in each, and every feed kept two copies of what
    its channel's name already says: the conversation's id (81 B) and the multiplexed id line's
    prefix (70 B), which only a multiplexed follower uses. Traced per feed with one native tab:
    the feed's own object and its follower set (320 B), not those two as well (473)."""
    names = [ConversationKeys(f"conversation-{n:016d}").channel.encode() for n in range(2000)]
    services = _services()
    follower = make_follower(FakeTransport())
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        feeds = [ChannelFeed(name, services) for name in names]
        for feed in feeds:
            feed.followers.add(follower)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_feed = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / len(feeds)
    assert per_feed < 400, per_feed
    assert feeds[7].conversation_id == "conversation-0000000000000007"  # still known, from the name
