"""HTTP/1.1 chunked transfer decoding, incremental: the load tester's tabs read raw sockets.

The one chunked decoder of the project (the tests that read raw sockets use it too).
"""


class ChunkedDecoder:
    """Feed it the body's bytes as they come; it returns the payload of every complete chunk."""

    __slots__ = ("_rest", "ended")

    def __init__(self) -> None:
        self._rest = b""
        self.ended = False
        """The last chunk (size 0) arrived."""

    def feed(self, data: bytes) -> list[bytes]:
        body = self._rest + data if self._rest else data
        out: list[bytes] = []
        pos, size_end = 0, body.find(b"\r\n")
        while size_end != -1 and not self.ended:
            size = int(body[pos:size_end], 16)
            if size == 0:
                self.ended = True
                break
            start = size_end + 2
            if start + size + 2 > len(body):
                break
            out.append(body[start : start + size])
            pos = start + size + 2
            size_end = body.find(b"\r\n", pos)
        self._rest = body[pos:]
        return out
