"""Server-Sent Events framing (WHATWG HTML, "Server-sent events", event stream format).

A frame is ``id: <id>\\nevent: <type>\\ndata: <line>\\n...\\n\\n``. Ids and types can never carry
CR, LF or NUL; multi-line data becomes several ``data:`` lines, so no input can forge a field or end
an event early. The Lua scripts in ``wire.scripts`` build the same bytes from data already in
lines (one-line JSON, or a delta's text: ``wire.deltas.DELTAS`` makes its data lines); ``tests/test_sse.py``
holds both to that.
"""

import re
from typing import Final

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_ID: Final = re.compile(r"[\r\n\x00]")
_FORBIDDEN_IN_TYPE: Final = re.compile(r"[\r\n]")


def encode_event(event_id: str, event_type: str, data: str) -> bytes:
    if _FORBIDDEN_IN_ID.search(event_id):
        raise ValueError("an SSE id cannot contain CR, LF or NUL")
    if _FORBIDDEN_IN_TYPE.search(event_type):
        raise ValueError("an SSE event type cannot contain CR or LF")
    lines = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    return f"id: {event_id}\nevent: {event_type}\n{lines}\n".encode()


def encode_retry(milliseconds: int) -> bytes:
    if milliseconds < 0:
        raise ValueError("retry must not be negative")
    return f"retry: {milliseconds}\n\n".encode("ascii")


def encode_comment(text: str = "") -> bytes:
    """A comment line per line of ``text``; the blank line after it dispatches nothing."""
    return "".join(f":{line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


HEARTBEAT: Final = encode_comment()
"""An empty comment: keeps idle connections and proxies alive, ignored by EventSource."""


def frame_data(frame: bytes) -> bytes:
    """The data of a frame of ours, its data lines joined with LF (what an EventSource hands on)."""
    _, _, data = frame.partition(b"\ndata: ")
    return data[:-2].replace(b"\ndata: ", b"\n")


def frame_event_id(frame: bytes) -> bytes:
    """The id of a frame made by ``encode_event`` (or the Lua scripts): its first line's value."""
    if not frame.startswith(b"id: "):
        raise ValueError("not an event frame")
    return frame[4 : frame.index(b"\n")]


def frame_from_entry(event_id: bytes, event_type: bytes, data: bytes) -> bytes:
    """The frame of a stored history entry: byte-identical to what its script published.

    Stored data is in data lines already (the scripts refuse anything else), so no splitting is
    needed here.
    """
    return b"id: " + event_id + b"\nevent: " + event_type + b"\ndata: " + data + b"\n\n"
