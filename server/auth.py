"""Conversation capabilities: a token is an HMAC of the conversation id under the shared secret.

Any node verifies a token without a lookup. The browser gets it twice: in the JSON body (for the
``Authorization: Bearer`` header) and as an HttpOnly, SameSite=Strict cookie scoped to the
conversation's path, so ``EventSource`` authenticates with no secret in the URL. A missing token is
401; a wrong token, or an id that is not well formed, is 404: nothing tells which ids exist.
"""

import base64
import hashlib
import hmac
import re
from typing import Final

from aiohttp import web

from server.errors import JSONError

COOKIE_NAME: Final = "streamfan_token"
_TOKEN_PREFIX: Final = "v1."
_ID_RE: Final = re.compile(r"\A[A-Za-z0-9_-]{16,64}\Z")
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def conversation_path(conversation_id: str) -> str:
    return f"/api/conversations/{conversation_id}"


def issue_token(secret: bytes, conversation_id: str) -> str:
    mac = hmac.new(secret, b"conversation:" + conversation_id.encode(), hashlib.sha256).digest()
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def set_token_cookie(
    response: web.StreamResponse, request: web.Request, conversation_id: str, token: str, max_age: int
) -> None:
    response.set_cookie(
        COOKIE_NAME,
        token,
        path=conversation_path(conversation_id),
        max_age=max_age,
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
    )


def _presented_token(request: web.Request) -> tuple[str | None, bool]:
    """The token and whether it came from the cookie (ambient authority: checked against CSRF)."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), False
        raise JSONError(401, "Authorization must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    cookie = request.cookies.get(COOKIE_NAME)
    return (cookie, True) if cookie else (None, False)


def authorize(request: web.Request, secret: bytes, allowed_origins: tuple[str, ...]) -> str:
    """The conversation id of the request, once its token proves access to it."""
    conversation_id = request.match_info["conversation_id"]
    token, from_cookie = _presented_token(request)
    if token is None:
        raise JSONError(401, "a conversation token is required", headers={"WWW-Authenticate": "Bearer"})
    if not _ID_RE.match(conversation_id) or not hmac.compare_digest(
        token.encode(), issue_token(secret, conversation_id).encode()
    ):
        raise JSONError(404, "no such conversation")
    if from_cookie and request.method not in _SAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin is not None and origin not in allowed_origins and origin != _own_origin(request):
            raise JSONError(403, "cross-origin request refused")
    return conversation_id


def _own_origin(request: web.Request) -> str:
    # Behind a TLS-terminating balancer the page's origin is https although this hop is http. A
    # cross-site form cannot set this header, so honouring it does not weaken the CSRF check.
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    return f"{scheme}://{request.host}"
