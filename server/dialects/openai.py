"""What the OpenAI doors share: their error shape, their API keys, their model list."""

import asyncio
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from server.context import SETTINGS
from server.errors import JSONError
from server.store import ConversationStore

log = logging.getLogger(__name__)

_KEPT_HEADERS = ("Retry-After", "Allow", "WWW-Authenticate")


class OpenAIError(JSONError):
    """An error in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str | None = None,
        code: str | None = None,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        super().__init__(status, message, code=code, headers=headers, type=kind, param=param)

    @staticmethod
    def document(status: int, code: str | None, message: str, extra: Mapping[str, object]) -> dict[str, object]:
        return {"error": {"message": message, "type": extra["type"], "param": extra["param"], "code": code}}

    @classmethod
    def of(cls, error: JSONError) -> JSONError:
        """A native error in OpenAI's shape (its field as ``param``, its code and headers kept)."""
        if isinstance(error, OpenAIError):
            return error
        field = error.extra.get("field")
        headers = {name: error.headers[name] for name in _KEPT_HEADERS if name in error.headers}
        return cls(
            error.status,
            error.message,
            code=error.code,
            param=field if isinstance(field, str) else None,
            headers=headers,
        )


def has_key(request: web.Request) -> bool:
    """The request presents one of ``STREAMFAN_API_KEYS`` (the server-wide keys: servers only)."""
    keys: tuple[str, ...] = request.app[SETTINGS].api_keys
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and any(
        hmac.compare_digest(presented.strip().encode(), key.encode()) for key in keys
    )


def check_key(request: web.Request) -> None:
    if not has_key(request):
        raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")


async def list_models(request: web.Request) -> web.StreamResponse:
    check_key(request)
    name = request.app[SETTINGS].model_name
    return web.json_response(
        {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "streamfan"}]}
    )


def busy() -> OpenAIError:
    """The post was refused (too many answers wait for a model): a status, before any stream."""
    return OpenAIError(503, "The model is busy; try again shortly.", code="overloaded", headers={"Retry-After": "1"})


async def cancel_unfinished(
    store: ConversationStore, conversation_id: str, response_id: str, done: "asyncio.Future[Any] | None" = None
) -> None:
    """The client of a non-background answer left before its end: OpenAI stops the answer then, and
    so does streamfan (it ends ``cancelled``, its text so far kept). Shielded: it runs while the
    handler is being cancelled (aiohttp cancels it when the client disconnects)."""
    if done is None or not done.done():
        try:
            await asyncio.shield(store.cancel(conversation_id, response_id))
        except (RedisError, OSError) as exc:  # the headers are out: nothing to answer; it runs to its end
            log.warning("could not cancel an answer whose client left: %r", exc)
