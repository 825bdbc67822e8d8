"""An incremental Server-Sent Events parser, to the letter of the WHATWG HTML spec (9.2.6).

Feed it bytes as they arrive; it yields dispatched events. Lines end with CRLF, LF or CR (a CR at
the end of a chunk ends the line at once, and an LF opening the next chunk is then skipped). A leading BOM is
dropped, comments are ignored, an ``id`` containing NUL is ignored, ``retry`` takes only digits, and
an event with an empty data buffer is not dispatched (but its id still becomes the last event id).
"""

from typing import NamedTuple


class SSEEvent(NamedTuple):
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

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by ``chunk`` (a load client calls this for every read: keep it lean)."""
        events: list[SSEEvent] = []
        buffer = self._buffer + chunk
        if not self._started:
            if len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                self._buffer = buffer
                return events
            self._started = True
            if buffer.startswith(b"\xef\xbb\xbf"):
                buffer = buffer[3:]
        start = 0
        length = len(buffer)
        if self._skip_lf and length:
            self._skip_lf = False
            if buffer[0:1] == b"\n":
                start = 1
        if buffer.find(b"\r", start) == -1:
            # The common case, lines ending in LF only: split the complete lines at C speed. (An LF
            # is never inside a UTF-8 sequence, so the lines decode as one block.)
            last = buffer.rfind(b"\n", start)
            if last != -1:
                self._lines(buffer[start:last].decode("utf-8", errors="replace").split("\n"), events)
                start = last + 1
            self._buffer = buffer[start:]
            return events
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
            self._lines([buffer[start:end].decode("utf-8", errors="replace")], events)
            start = after
        self._buffer = buffer[start:]
        return events

    def _lines(self, lines: list[str], events: list[SSEEvent]) -> None:
        """Process complete lines (the spec's "process the field" and "dispatch the event")."""
        data, event_type, last_id = self._data, self._event_type, self.last_event_id
        for line in lines:
            if not line:  # a blank line dispatches; an empty data buffer dispatches nothing
                if data:
                    events.append(SSEEvent(event_type or "message", "\n".join(data), last_id))
                    data = []
                event_type = ""
                continue
            if line[0] == ":":
                self.comments += 1
                continue
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event_type = value
            elif name == "id":
                if "\x00" not in value:
                    last_id = value
            elif name == "retry" and value.isdigit() and value.isascii():
                self.retry_ms = int(value)
        self._data, self._event_type, self.last_event_id = data, event_type, last_id
