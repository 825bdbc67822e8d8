"""Conversation capabilities: signed, expiring, rotatable, revocable tokens.

A token is ``<conversation id>:<generation>`` signed with a timestamp by itsdangerous
(``TimestampSigner``, HMAC-SHA256). Any node verifies it without a lookup of the signature; the
newest of ``STREAMFAN_SECRET`` signs and every secret in ``STREAMFAN_PREVIOUS_SECRETS`` still
verifies (rotation without logging everyone out). A token expires ``STREAMFAN_TOKEN_MAX_AGE_SECONDS``
after it was issued and is re-issued on every authorized use (the cookie is refreshed), so a
conversation in use never loses its credential. Revocation: ``DELETE`` bumps the conversation's
generation, and a token of an older generation is refused (the caller checks it against Redis).

The browser gets the token twice: in the JSON body (for ``Authorization: Bearer``) and as an
HttpOnly, SameSite=Strict cookie scoped to the conversation's path, so ``EventSource``
authenticates with no secret in the URL. A missing token is 401, an expired one 401
``token_expired``; a forged one, or an id that is not well formed, is 404: nothing tells which ids
exist. A request authenticated by the cookie (ambient authority) that changes state must come from
the page's own origin (``Origin``/``Sec-Fetch-Site``) and carry JSON, so no form or cross-site
script can ride on it.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from itsdangerous import BadSignature, SignatureExpired, Signer, TimestampSigner

from server.errors import JSONError
from wire.keys import ID_RE

COOKIE_NAME: Final = "streamfan_token"
SESSION_COOKIE: Final = "streamfan_session"
"""A browser's session: HttpOnly, SameSite=Strict, path ``/api``; it may read (never write) the
conversations whose tokens this browser presented (``Gate.join``), over one multiplexed stream."""
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_SALT: Final = "streamfan.conversation.v2"


def conversation_path(conversation_id: str) -> str:
    return f"/api/conversations/{conversation_id}"


@dataclass(frozen=True, slots=True)
class Access:
    """A verified token: the conversation it opens, and its generation (checked against Redis)."""

    conversation_id: str
    generation: int
    from_cookie: bool


class Tokens:
    def __init__(self, secrets: Sequence[bytes], max_age_seconds: int) -> None:
        """``secrets``: the current one last (it signs); all of them verify."""
        self._signer = TimestampSigner(list(secrets), salt=_SALT, digest_method=hashlib.sha256)
        self.max_age = max_age_seconds

    def issue(self, conversation_id: str, generation: int = 0) -> str:
        return self._signer.sign(f"{conversation_id}:{generation}").decode("ascii")

    def verify(self, token: str, conversation_id: str) -> int:
        """The token's generation if it opens ``conversation_id``; else a JSON 401/404."""
        try:
            value = self._signer.unsign(token.encode("ascii"), max_age=self.max_age).decode("ascii")
        except SignatureExpired:
            raise JSONError(
                401, "the conversation token expired", code="token_expired", headers={"WWW-Authenticate": "Bearer"}
            ) from None
        except (BadSignature, UnicodeError, ValueError):
            raise JSONError(404, "no such conversation") from None
        owner, _, generation = value.rpartition(":")
        if owner != conversation_id or not generation.isdigit():
            raise JSONError(404, "no such conversation")
        return int(generation)


class Sessions:
    """Signed, expiring session ids (itsdangerous), like the tokens but for a browser."""

    def __init__(self, secrets: Sequence[bytes], max_age_seconds: int) -> None:
        self._signer = TimestampSigner(list(secrets), salt="streamfan.session.v1", digest_method=hashlib.sha256)
        self.max_age = max_age_seconds

    def issue(self, session_id: str) -> str:
        return self._signer.sign(session_id).decode("ascii")

    def verify(self, value: str | None) -> str | None:
        """The session id, or ``None`` for no, a forged or an expired cookie."""
        if not value:
            return None
        try:
            session_id = self._signer.unsign(value.encode("ascii"), max_age=self.max_age).decode("ascii")
        except (BadSignature, UnicodeError, ValueError):
            return None
        return session_id if ID_RE.match(session_id) else None


def set_token_cookie(
    response: web.StreamResponse, conversation_id: str, token: str, max_age: int, *, secure: bool
) -> None:
    response.set_cookie(
        COOKIE_NAME,
        token,
        path=conversation_path(conversation_id),
        max_age=max_age,
        httponly=True,
        samesite="Strict",
        secure=secure,
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


def authorize(request: web.Request, tokens: Tokens, own_origin: str, allowed_origins: tuple[str, ...]) -> Access:
    """The conversation of the request, once its token proves access to it (not yet revocation)."""
    conversation_id = request.match_info["conversation_id"]
    token, from_cookie = _presented_token(request)
    if token is None:
        raise JSONError(401, "a conversation token is required", headers={"WWW-Authenticate": "Bearer"})
    if not ID_RE.match(conversation_id):
        raise JSONError(404, "no such conversation")
    generation = tokens.verify(token, conversation_id)
    if from_cookie and request.method not in _SAFE_METHODS:
        _check_same_origin(request, own_origin, allowed_origins)
    return Access(conversation_id, generation, from_cookie)


def _check_same_origin(request: web.Request, own_origin: str, allowed_origins: tuple[str, ...]) -> None:
    """A state change on the cookie's authority must come from a page of ours, as JSON."""
    origin = request.headers.get("Origin")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if origin is None and fetch_site is None:
        raise JSONError(403, "a cookie-authenticated request must say its origin", code="forbidden")
    if origin is not None and origin != own_origin and origin not in allowed_origins:
        raise JSONError(403, "cross-origin request refused", code="forbidden")
    if fetch_site is not None and fetch_site not in ("same-origin", "none") and origin not in allowed_origins:
        raise JSONError(403, "cross-site request refused", code="forbidden")
    if request.content_type != "application/json":
        raise JSONError(415, "a cookie-authenticated request must send application/json", code="unsupported_media")


class StreamReadTokens:
    """A Durable Stream's read token: its path signed (itsdangerous ``Signer``, HMAC-SHA256), so any
    node checks it without a lookup. It lasts as long as the stream (a stream's URL is its identity,
    and the protocol asks that a deleted stream's URL not be reused); rotating the secret retires it."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        self._signer = Signer(list(secrets), salt="streamfan.durable-read.v1", digest_method=hashlib.sha256)

    def issue(self, path: str) -> str:
        return self._signer.get_signature(path.encode()).decode("ascii")

    def opens(self, token: str, path: str) -> bool:
        try:
            return self._signer.verify_signature(path.encode(), token.encode("ascii"))
        except UnicodeError:
            return False
