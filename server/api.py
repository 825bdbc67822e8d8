"""The conversation REST API: create, post a message, read the history, cancel the answer."""

import json
from typing import Any

from aiohttp import web

from server.auth import authorize, issue_token, set_token_cookie
from server.context import SETTINGS, STORE
from server.errors import JSONError
from server.store import Busy, Overloaded, new_id


async def _json_body(request: web.Request, *, required: bool) -> dict[str, Any]:
    raw = await request.read()  # over client_max_size: aiohttp raises 413
    if not raw.strip():
        if required:
            raise JSONError(400, "a JSON object body is required")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise JSONError(400, "the body is not valid JSON", code="bad_json") from None
    if not isinstance(body, dict):
        raise JSONError(400, "the body must be a JSON object", code="bad_json")
    return body


async def create_conversation(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    await _json_body(request, required=False)
    conversation_id = new_id()
    token = issue_token(settings.secret, conversation_id)
    response = web.json_response({"id": conversation_id, "token": token}, status=201)
    response.headers["Location"] = f"/api/conversations/{conversation_id}"
    set_token_cookie(response, request, conversation_id, token, settings.retention.ttl_seconds)
    return response


async def post_message(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    conversation_id = authorize(request, settings.secret, settings.cors_origins)
    body = await _json_body(request, required=True)
    content = body.get("content")
    if not isinstance(content, str) or not content.strip():
        raise JSONError(400, "'content' must be a non-empty string", code="bad_field", field="content")
    if len(content) > settings.max_message_chars:
        raise JSONError(
            400,
            f"'content' is longer than {settings.max_message_chars} characters",
            code="bad_field",
            field="content",
        )
    if "\x00" in content:
        raise JSONError(400, "'content' must not contain NUL", code="bad_field", field="content")
    max_tokens = body.get("max_tokens", settings.default_max_tokens)
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not (1 <= max_tokens <= settings.max_tokens_limit)
    ):
        raise JSONError(
            400,
            f"'max_tokens' must be a whole number from 1 to {settings.max_tokens_limit}",
            code="bad_field",
            field="max_tokens",
        )
    key = _idempotency_key(request, body)
    result = await request.app[STORE].post_message(conversation_id, content, max_tokens, key)
    if isinstance(result, Busy):
        raise JSONError(409, "an answer is still generating", code="busy", response_id=result.response_id)
    if isinstance(result, Overloaded):
        raise JSONError(
            503,
            "too many answers are waiting for a model; try again shortly",
            code="overloaded",
            headers={"Retry-After": "5"},
        )
    return web.json_response(
        {"message_id": result.message_id, "response_id": result.response_id, "event_id": result.event_id},
        status=202,
    )


_MAX_KEY_CHARS = 128


def _idempotency_key(request: web.Request, body: dict[str, Any]) -> str:
    """The post's idempotency key: the ``Idempotency-Key`` header, else ``client_message_id``.

    Without one the node makes one up, so its own retry of a post whose reply Redis lost is still
    answered with the first reply rather than a 409 or a second message.
    """
    key = request.headers.get("Idempotency-Key")
    if key is None:
        key = body.get("client_message_id")
    if key is None:
        return "node:" + new_id()
    if not isinstance(key, str) or not 1 <= len(key) <= _MAX_KEY_CHARS or not key.isprintable() or not key.isascii():
        raise JSONError(
            400,
            f"the idempotency key must be 1 to {_MAX_KEY_CHARS} printable ASCII characters",
            code="bad_field",
            field="client_message_id",
        )
    return "client:" + key


async def get_conversation(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    conversation_id = authorize(request, settings.secret, settings.cors_origins)
    snapshot = await request.app[STORE].snapshot(conversation_id)
    return web.json_response(snapshot, headers={"Cache-Control": "no-store"})


async def cancel_answer(request: web.Request) -> web.StreamResponse:
    """Cancel the active answer (or, with ``response_id``, only that one): 202, or 409 if none."""
    settings = request.app[SETTINGS]
    conversation_id = authorize(request, settings.secret, settings.cors_origins)
    body = await _json_body(request, required=False)
    wanted = body.get("response_id")
    if wanted is not None and not isinstance(wanted, str):
        raise JSONError(400, "'response_id' must be a string", code="bad_field", field="response_id")
    store = request.app[STORE]
    active = await store.active_response(conversation_id)
    if active is None or (wanted is not None and wanted != active):
        raise JSONError(409, "no such answer is generating", code="not_generating")
    outcome = await store.cancel(conversation_id, active)
    if outcome == "gone":
        raise JSONError(409, "the answer finished first", code="not_generating")
    return web.json_response({"response_id": active, "status": outcome}, status=202)
