"""Cross-origin and browser-security policy: explicit CORS origins only, strict headers everywhere.

Both are applied in ``on_response_prepare`` rather than in a middleware, so a long-lived SSE request
does not keep one more coroutine frame alive for its whole life.
"""

from aiohttp import web

from server.context import PATH_ERROR_SHAPES, SETTINGS
from server.errors import JSONError
from server.peers import client_scheme

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
_ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, Idempotency-Key"
HSTS = "max-age=31536000"


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin is not None and origin in request.app[SETTINGS].cors_origins else None


async def preflight(request: web.Request) -> web.StreamResponse:
    """``OPTIONS`` on any path: a CORS preflight from a configured origin, else 403."""
    if _allowed_origin(request) is None or "Access-Control-Request-Method" not in request.headers:
        raise JSONError(403, "this origin may not call the API cross-origin", code="forbidden")
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = _ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = _ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    return response


async def apply_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: runs before headers leave, streamed responses included."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if client_scheme(request, request.app[SETTINGS].trusted_proxies) == "https":  # the page too, not just the API
        headers["Strict-Transport-Security"] = HSTS
    if response.content_type != "text/event-stream":  # nothing to render in a stream of events
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    origin = _allowed_origin(request)
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
        headers.add("Vary", "Origin")


async def fallback(request: web.Request) -> web.StreamResponse:
    """The last route: CORS preflights for any path, else a JSON 405 (with ``Allow``) or 404."""
    if request.method == "OPTIONS":
        return await preflight(request)
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        error = JSONError(405, "Method Not Allowed", headers={"Allow": ", ".join(sorted(allowed))})
    else:
        error = JSONError(404, "Not Found")
    for prefix, shape in request.app.get(PATH_ERROR_SHAPES, {}).items():
        if request.path.startswith(prefix):
            raise shape(error)
    raise error
