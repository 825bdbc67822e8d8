"""Every error leaves the node as JSON ``{"error": code, "message": text}`` with a 4xx/5xx status.

Imports nothing from the node: every other module may raise these.
"""

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from redis.exceptions import ClusterDownError, OutOfMemoryError, RedisClusterException, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    500: "internal",
    503: "unavailable",
}


class JSONError(web.HTTPException):
    """An HTTP error whose body is the JSON error document."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ) -> None:
        self.status_code = status
        self.message = message
        self.code = code
        self.extra = extra
        body = self.document(status, code, message, extra)
        super().__init__(text=json.dumps(body), content_type="application/json", headers=headers)

    @staticmethod
    def document(status: int, code: str | None, message: str, extra: Mapping[str, object]) -> dict[str, object]:
        """The body; a dialect whose clients expect another error shape overrides it."""
        return {"error": code or _CODES.get(status, "error"), "message": message, **extra}


def unavailable() -> JSONError:
    """Redis (or the pub/sub connection) cannot answer now: the one 503 every endpoint gives for it."""
    return JSONError(
        503, "the service is briefly unavailable; try again", code="unavailable", headers={"Retry-After": "1"}
    )


ErrorShape = Callable[[JSONError], JSONError]
"""A dialect's error document for a native error (the OpenAI doors answer in OpenAI's shape)."""


def guarded(handler: Handler, shape: ErrorShape | None = None) -> Handler:
    """``handler`` with every error turned into the JSON error document (in ``shape``, if given).

    Applied per route rather than as a middleware: aiohttp builds a middleware chain for every
    request and keeps it referenced while the handler runs, which costs each long-lived event
    stream about 600 bytes for nothing (its handler raises only ``JSONError``s, before streaming).
    """

    async def wrapped(request: web.Request) -> web.StreamResponse:
        if shape is None:
            return await _guarded(request, handler)
        try:
            return await _guarded(request, handler)
        except JSONError as exc:
            raise shape(exc) from None

    return functools.update_wrapper(wrapped, handler)


_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
    OSError,
    TimeoutError,
)


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except JSONError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        raise JSONError(exc.status, exc.reason, headers=allow) from None
    except _UNAVAILABLE as exc:
        # Redis is unreachable (restarting, a cluster shard failing over or its slot migrating, out
        # of connections): say so, and when to try again; one log line per interval, not one
        # traceback per request.
        if _redis_down.allow():
            log.warning("Redis unavailable (%r; %d more since the last report)", exc, _redis_down.take_suppressed())
        raise unavailable() from None
    except ResponseError as exc:
        if not isinstance(exc, OutOfMemoryError) and not str(exc).startswith("OOM"):
            if _internal.allow():
                log.exception("unhandled Redis error in %s %s", request.method, request.path)
            raise JSONError(500, "internal error") from None
        # maxmemory reached with noeviction: nothing is dropped, new writes wait for expiries.
        if _redis_down.allow():
            log.warning("Redis is full (maxmemory); refusing writes (%d more)", _redis_down.take_suppressed())
        raise JSONError(
            503, "storage is full; try again later", code="unavailable", headers={"Retry-After": "30"}
        ) from None
    except Exception:
        if _internal.allow():
            log.exception("unhandled error in %s %s", request.method, request.path)
        raise JSONError(500, "internal error") from None


class LogLimit:
    """At most one log line per ``interval`` seconds for one kind of event; the rest are counted."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            return True
        self._suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self._suppressed = self._suppressed, 0
        return count


_redis_down = LogLimit(10.0)
_internal = LogLimit(1.0)


class QuietBadRequests(logging.Filter):
    """For aiohttp's ``aiohttp.server`` logger: malformed HTTP is logged in one line, not a
    traceback, at most once per ``interval`` seconds (10,000 bad requests wrote 3 MB before).
    Anything else it logs (a handler's own failure) keeps its traceback, rate-limited too."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self._bad = LogLimit(interval)
        self._other = LogLimit(1.0)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return self._other.allow()
        if not self._bad.allow():
            return False
        first_line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.msg = "bad request (%s: %s); %d more since the last report"
        record.args = (type(exc).__name__, first_line, self._bad.take_suppressed())
        return True
