"""Who may do what, per request: host, client address, token and its revocation, rate limits.

One place composes the rules the handlers share: the Host is one we serve; the client address and
scheme come from trusted proxies only (``server.peers``); the token opens this conversation
(``server.auth``) and is of its current generation (not revoked, a Redis read); the client is within
its rates (``server.limits``); every authorized response refreshes the cookie, ``Secure`` for an
https client (HSTS goes on every https response: ``server.http_policy``).
"""

from dataclasses import dataclass

from aiohttp import web

from server.auth import SESSION_COOKIE, Access, Sessions, StreamReadTokens, Tokens, authorize, set_token_cookie
from server.errors import JSONError
from server.limits import RateLimit, StreamCount
from server.peers import client_ip, client_scheme, within
from server.settings import Settings
from server.store import ConversationStore, new_id


@dataclass(frozen=True, slots=True)
class Gate:
    settings: Settings
    tokens: Tokens
    sessions: Sessions
    creates: RateLimit
    posts: RateLimit
    streams_per_ip: StreamCount
    stream_reads: StreamReadTokens

    @classmethod
    def from_settings(cls, settings: Settings) -> "Gate":
        return cls(
            settings,
            Tokens([*settings.previous_secrets, settings.secret], settings.token_max_age_seconds),
            Sessions([*settings.previous_secrets, settings.secret], settings.token_max_age_seconds),
            RateLimit("new conversations", settings.creates_per_minute / 60, max(1, settings.creates_per_minute // 3)),
            RateLimit("messages", settings.posts_per_minute / 60, max(1, settings.posts_per_minute // 3)),
            StreamCount("from this address", settings.streams_per_ip),
            StreamReadTokens([*settings.previous_secrets, settings.secret]),
        )

    def client(self, request: web.BaseRequest) -> str:
        """The client's address (for limits and logs), checking the Host on the way."""
        hosts = self.settings.allowed_hosts
        if hosts and request.host.rsplit(":", 1)[0].lower().strip("[]") not in hosts:
            raise JSONError(421, "this host is not served here", code="misdirected")
        return client_ip(request, self.settings.trusted_proxies)

    def limited(self, address: str) -> bool:
        return not within(address, self.settings.limits_exempt)

    def https(self, request: web.BaseRequest) -> bool:
        return client_scheme(request, self.settings.trusted_proxies) == "https"

    def own_origin(self, request: web.BaseRequest) -> str:
        return f"{client_scheme(request, self.settings.trusted_proxies)}://{request.host}"

    async def conversation(self, request: web.Request, store: ConversationStore) -> Access:
        """The request's verified, unrevoked access to its conversation, or a JSON 4xx."""
        self.client(request)
        access = authorize(request, self.tokens, self.own_origin(request), self.settings.cors_origins)
        await self.unrevoked(access.conversation_id, access.generation, store)
        return access

    @staticmethod
    async def unrevoked(conversation_id: str, generation: int, store: ConversationStore) -> None:
        """A 404 unless tokens of ``generation`` still open the conversation (deleting it revokes them)."""
        if await store.generation(conversation_id) != generation:
            raise JSONError(404, "no such conversation")

    def take_post(self, request: web.BaseRequest) -> None:
        """One post (a message, a cancel, a stop) from the request's address, if it is limited: 429 past the rate."""
        address = self.client(request)
        if self.limited(address):
            self.posts.take(address)

    def grant(
        self, response: web.StreamResponse, request: web.BaseRequest, access: Access, token: str | None = None
    ) -> str:
        """A fresh token for ``access`` (returned) in the conversation's cookie (``Secure`` on https)."""
        token = token or self.tokens.issue(access.conversation_id, access.generation)
        set_token_cookie(response, access.conversation_id, token, self.tokens.max_age, secure=self.https(request))
        return token

    def session(self, request: web.BaseRequest) -> str | None:
        """The browser session of the request, if its cookie is ours and fresh."""
        return self.sessions.verify(request.cookies.get(SESSION_COOKIE))

    async def join(
        self, response: web.StreamResponse, request: web.BaseRequest, access: Access, store: ConversationStore
    ) -> None:
        """Add the conversation to the browser's session (made now if it has none), so the browser's
        one multiplexed stream may carry it. Only a browser (cookie or session) gets a session."""
        session_id = self.session(request)
        if session_id is None and not access.from_cookie and request.headers.get("Sec-Fetch-Site") is None:
            return  # an API client: it has its tokens
        session_id = session_id or new_id()
        await store.join_session(session_id, access.conversation_id, access.generation, self.sessions.max_age)
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.issue(session_id),
            path="/api",
            max_age=self.sessions.max_age,
            httponly=True,
            samesite="Strict",
            secure=self.https(request),
        )
