"""SSE framing: exact bytes, no way to inject a field, and the Lua-built frames match Python's."""

from typing import Any

import pytest
from fakeredis.aioredis import FakeRedis

from loadtest.sse_parser import SSEParser
from tests.fakes import append_deltas, last_event_id, start_answer
from wire import scripts
from wire.events import delta_text
from wire.keys import ConversationKeys
from wire.sse import encode_comment, encode_event, encode_retry, frame_data, frame_event_id, frame_from_entry


def test_event_bytes_are_exact() -> None:
    assert encode_event("5-0", "delta", '{"a":1}') == b'id: 5-0\nevent: delta\ndata: {"a":1}\n\n'


def test_multiline_data_becomes_several_data_lines() -> None:
    assert encode_event("1-0", "t", "a\nb\r\nc\rd") == b"id: 1-0\nevent: t\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    assert encode_event("1-0", "t", "") == b"id: 1-0\nevent: t\ndata: \n\n"


@pytest.mark.parametrize("bad_id", ["1\n2", "1\r2", "1\x002", "x\r\nevent: evil"])
def test_ids_cannot_carry_line_breaks_or_nul(bad_id: str) -> None:
    with pytest.raises(ValueError):
        encode_event(bad_id, "t", "d")


@pytest.mark.parametrize("bad_type", ["a\nb", "a\rb", "delta\n\ndata: evil"])
def test_types_cannot_carry_line_breaks(bad_type: str) -> None:
    with pytest.raises(ValueError):
        encode_event("1-0", bad_type, "d")


def test_injected_fields_in_data_stay_data() -> None:
    frame = encode_event("1-0", "delta", "x\n\nid: 999-0\nevent: done\ndata: evil")
    events = list(SSEParser().feed(frame))
    assert len(events) == 1
    assert events[0].type == "delta" and events[0].last_event_id == "1-0"
    assert events[0].data == "x\n\nid: 999-0\nevent: done\ndata: evil"


def test_retry_and_comments() -> None:
    assert encode_retry(1500) == b"retry: 1500\n\n"
    with pytest.raises(ValueError):
        encode_retry(-1)
    assert encode_comment() == b":\n\n"
    assert encode_comment("a\nb") == b":a\n:b\n\n"


def test_frame_event_id() -> None:
    assert frame_event_id(b"id: 17-3\nevent: x\ndata: y\n\n") == b"17-3"
    with pytest.raises(ValueError):
        frame_event_id(b"event: x\n\n")


async def test_published_frame_equals_python_encoding_and_replayed_frame(fake_redis: FakeRedis) -> None:
    keys = ConversationKeys("c" * 22)
    await start_answer(fake_redis, keys, "r1")
    pubsub = fake_redis.pubsub()
    await pubsub.ssubscribe(keys.channel)
    await pubsub.get_message(timeout=1)
    text = delta_text('  🚀 naïve\r\n"quoted" \\ </script>\u2028\n\nevent: evil\n')
    [(ok,)] = await append_deltas(fake_redis, [(keys, "r1", "p", 0, text)])
    assert ok == 1
    event_id = (await last_event_id(fake_redis, keys)).encode()
    message = await pubsub.get_message(timeout=1)
    assert message is not None
    published = message["data"]
    assert published == encode_event(event_id.decode(), "delta", text)
    entries: Any = await fake_redis.xrange(keys.events)
    [(stored_id, fields)] = entries
    assert frame_from_entry(stored_id, fields[b"t"], fields[b"d"]) == published
    assert (
        frame_data(published) == text.encode() == await fake_redis.eval(scripts.ANSWER_TEXT, 2, keys.state, keys.events)
    )
    [event] = SSEParser().feed(published)
    assert (event.type, event.data) == ("delta", text)  # what an EventSource hands on: the text
    await pubsub.aclose()


@pytest.mark.parametrize("text", ["a\revent: evil", "a\r\nevent: evil", "\r"])
async def test_a_chunk_with_a_cr_is_refused_before_writing(fake_redis: FakeRedis, text: str) -> None:
    """SSE cannot carry a CR (the producer turns line breaks into LF): the script refuses one."""
    keys = ConversationKeys("d" * 22)
    await start_answer(fake_redis, keys, "r1")
    [(code,)] = await append_deltas(fake_redis, [(keys, "r1", "p", 0, text)])
    assert code == -4
    assert await fake_redis.exists(keys.events, keys.draft) == 0


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("plain", "plain"),
        ('q"uote\\back', 'q"uote\\back'),
        ("line\nbreak\r\nend\r\x00\t", "line\ndata: break\ndata: end\ndata: \x00\t"),
        (" \u2028 🚀 naïve 日本語", " \u2028 🚀 naïve 日本語"),
        ("\n", "\ndata: "),
        ("", ""),
    ],
)
def test_a_deltas_frame_carries_its_text_in_data_lines(text: str, lines: str) -> None:
    """What DELTAS publishes for a chunk (its text as data lines) is what encode_event makes, and an
    EventSource reads the text back."""
    frame = encode_event("1-0", "delta", text)
    assert frame == f"id: 1-0\nevent: delta\ndata: {lines}\n\n".encode()
    [event] = SSEParser().feed(frame)
    assert event.data == delta_text(text) and frame_data(frame) == delta_text(text).encode()
