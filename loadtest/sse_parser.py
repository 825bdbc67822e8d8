"""An incremental Server-Sent Events parser, to the letter of the WHATWG HTML spec (9.2.6).

Feed it bytes as they arrive; it yields dispatched events. Lines end with CRLF, LF or CR (a CR at
the end of a chunk ends the line at once, and an LF opening the next chunk is then skipped). A leading BOM is
dropped, comments are ignored, an ``id`` containing NUL is ignored, ``retry`` takes only digits, and
an event with an empty data buffer is not dispatched (but its id still becomes the last event id).
"""

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    type: str
    data: str
    last_event_id: str
    """The stream's last event id when this event was dispatched (what a reconnect would send)."""


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._started = False
        self._skip_lf = False
        self._data: list[str] = []
        self._event_type = ""
        self.last_event_id = ""
        self.retry_ms: int | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        buffer = self._buffer + chunk
        if not self._started:
            if len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                self._buffer = buffer
                return
            self._started = True
            if buffer.startswith(b"\xef\xbb\xbf"):
                buffer = buffer[3:]
        start = 0
        length = len(buffer)
        if self._skip_lf and length:
            self._skip_lf = False
            if buffer[0:1] == b"\n":
                start = 1
        while start < length:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr + 1 == length:
                    self._skip_lf = True  # the LF of a CRLF may open the next chunk
                end, after = cr, cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
            else:
                end, after = lf, lf + 1
            event = self._line(buffer[start:end].decode("utf-8", errors="replace"))
            if event is not None:
                yield event
            start = after
        self._buffer = buffer[start:]

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\x00" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isdigit() and value.isascii():
                self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event_type = self._data, self._event_type
        self._data, self._event_type = [], ""
        if not data:
            return None
        return SSEEvent(event_type or "message", "\n".join(data), self.last_event_id)
