"""The load tester's SSE parser against the WHATWG spec's examples and line-ending rules."""

import pytest

from loadtest.sse_parser import SSEParser


def parse(*chunks: bytes) -> tuple[list[tuple[str, str, str]], SSEParser]:
    parser = SSEParser()
    events = [(e.type, e.data, e.last_event_id) for chunk in chunks for e in parser.feed(chunk)]
    return events, parser


def test_spec_example_stock_ticker() -> None:
    events, _ = parse(b"data: YHOO\ndata: +2\ndata: 10\n\n")
    assert events == [("message", "YHOO\n+2\n10", "")]


def test_spec_example_comments_and_ids() -> None:
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
    events, parser = parse(stream)
    assert events == [("message", "first event", "1"), ("message", "second event", ""), ("message", " third event", "")]
    assert parser.comments == 1


def test_spec_example_empty_data_and_unterminated_event() -> None:
    events, _ = parse(b"data\n\ndata\ndata\n\ndata:")
    assert events == [("message", "", ""), ("message", "\n", "")]


def test_spec_example_space_after_colon_is_optional() -> None:
    events, _ = parse(b"data:test\n\ndata: test\n\n")
    assert events == [("message", "test", ""), ("message", "test", "")]


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending(eol: bytes) -> None:
    stream = b"id: 7-0" + eol + b"event: delta" + eol + b"data: a" + eol + b"data: b" + eol + eol
    events, _ = parse(stream)
    assert events == [("delta", "a\nb", "7-0")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    events, _ = parse(b"data: a\r", b"\n\r", b"\n")
    assert events == [("message", "a", "")]


def test_byte_at_a_time_with_utf8() -> None:
    stream = "id: 1-0\ndata: 🚀 naïve\n\n".encode()
    events, _ = parse(*[stream[i : i + 1] for i in range(len(stream))])
    assert events == [("message", "🚀 naïve", "1-0")]


def test_retry_only_digits_and_nul_in_id_ignored() -> None:
    _, parser = parse(b"retry: 2500\n\nretry: 12x\n\n")
    assert parser.retry_ms == 2500
    events, parser = parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert [e[2] for e in events] == ["1", "1"]


def test_bom_is_dropped_once() -> None:
    events, _ = parse(b"\xef\xbb", b"\xbfdata: x\n\n")
    assert events == [("message", "x", "")]


def test_unknown_fields_ignored_and_id_persists() -> None:
    events, _ = parse(b"foo: bar\nid: 3\ndata: x\n\ndata: y\n\n")
    assert events == [("message", "x", "3"), ("message", "y", "3")]
