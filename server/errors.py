"""Every error leaves the node as JSON ``{"error": code, "message": text}`` with a 4xx/5xx status.

Imports nothing from the node: every other module may raise these.
"""

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

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
        body = {"error": code or _CODES.get(status, "error"), "message": message, **extra}
        super().__init__(text=json.dumps(body), content_type="application/json", headers=headers)


def guarded(handler: Handler) -> Handler:
    """``handler`` with every error turned into the JSON error document.

    Applied per route rather than as a middleware: aiohttp builds a middleware chain for every
    request and keeps it referenced while the handler runs, which costs each long-lived event
    stream about 600 bytes for nothing (its handler raises only ``JSONError``s, before streaming).
    """

    async def wrapped(request: web.Request) -> web.StreamResponse:
        return await _guarded(request, handler)

    return functools.update_wrapper(wrapped, handler)


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
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        raise JSONError(500, "internal error") from None
