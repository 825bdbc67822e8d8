"""The conversation REST API: create, post a message, read the history, cancel the answer, delete.

Every bad input is a JSON 4xx: bodies are read within ``STREAMFAN_BODY_TIMEOUT_SECONDS`` (408)
and ``STREAMFAN_MAX_BODY_BYTES`` (413), must be JSON objects of sane depth, and text must be valid
Unicode (no lone surrogates, no NUL). Creating, posting, cancelling and deleting are rate-limited
per client address (429 with ``Retry-After``).
"""

from typing import Any

from aiohttp import web

from server import inputs
from server.auth import COOKIE_NAME, Access, conversation_path
from server.context import GATE, SETTINGS, STORE
from server.errors import JSONError
from server.inputs import json_body
from server.store import MESSAGES_PAGE, Busy, IdempotencyKeyReused, Overloaded, new_id, refusal

_MAX_KEY_CHARS = 128
_MAX_PAGE = 1000


def _text_field(body: dict[str, Any], name: str, limit: int) -> str:
    return inputs.text(body.get(name), name, limit)


async def _access(request: web.Request) -> Access:
    return await request.app[GATE].conversation(request, request.app[STORE])


async def create_conversation(request: web.Request) -> web.StreamResponse:
    gate = request.app[GATE]
    address = gate.client(request)
    if gate.limited(address):
        gate.creates.take(address)
    await json_body(request, required=False)
    conversation_id = new_id()
    token = gate.tokens.issue(conversation_id)
    response = web.json_response({"id": conversation_id, "token": token}, status=201)
    access = Access(conversation_id, 0, from_cookie=False)
    gate.grant(response, request, access, token)
    await gate.join(response, request, access, request.app[STORE])
    response.headers["Location"] = f"/api/conversations/{conversation_id}"
    return response


async def post_message(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    request.app[GATE].take_post(request)
    access = await _access(request)
    body = await json_body(request, required=True)
    content = _text_field(body, "content", settings.max_message_chars)
    max_tokens = inputs.whole_number(
        body.get("max_tokens", settings.default_max_tokens), "max_tokens", 1, settings.max_tokens_limit
    )
    key = _idempotency_key(request, body)
    try:
        result = await request.app[STORE].post_message(access.conversation_id, content, max_tokens, key)
    except IdempotencyKeyReused:
        raise JSONError(
            422,
            "this idempotency key was used for another message; use a new key for each message",
            code="idempotency_key_reused",
        ) from None
    if isinstance(result, Busy | Overloaded):
        raise refusal(result)
    response = web.json_response(
        {"message_id": result.message_id, "response_id": result.response_id, "event_id": result.event_id},
        status=202,
    )
    request.app[GATE].grant(response, request, access)
    return response


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


def _whole_number(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise JSONError(400, f"'{name}' must be a whole number from {low} to {high}", code="bad_field", field=name)
    return int(raw)


async def get_conversation(request: web.Request) -> web.StreamResponse:
    """The history: the newest ``limit`` messages (``before``: end before that position)."""
    access = await _access(request)
    limit = _whole_number(request, "limit", MESSAGES_PAGE, 1, _MAX_PAGE)
    before = _whole_number(request, "before", None, 0, 10**9)
    assert limit is not None
    snapshot = await request.app[STORE].snapshot(access.conversation_id, limit, before)
    gate = request.app[GATE]
    snapshot["token"] = token = gate.tokens.issue(access.conversation_id, access.generation)
    response = web.json_response(snapshot, headers={"Cache-Control": "no-store"})
    gate.grant(response, request, access, token)
    await gate.join(response, request, access, request.app[STORE])
    return response


async def regenerate_answer(request: web.Request) -> web.StreamResponse:
    """A new version of the last answer (``response_id``), for the same user message: 202, or 409."""
    settings = request.app[SETTINGS]
    request.app[GATE].take_post(request)
    access = await _access(request)
    body = await json_body(request, required=True)
    replaces = body.get("response_id")
    if not isinstance(replaces, str) or not replaces:
        raise JSONError(400, "'response_id' must name the answer to regenerate", code="bad_field", field="response_id")
    result = await request.app[STORE].regenerate(access.conversation_id, replaces, settings.default_max_tokens)
    if result is None:
        raise JSONError(409, "only the last answer can be regenerated", code="not_last")
    if isinstance(result, Busy | Overloaded):
        raise refusal(result)
    return web.json_response({"response_id": result.response_id, "event_id": result.event_id}, status=202)


async def cancel_answer(request: web.Request) -> web.StreamResponse:
    """Cancel the active answer (or, with ``response_id``, only that one): 202, or 409 if none."""
    request.app[GATE].take_post(request)
    access = await _access(request)
    body = await json_body(request, required=False)
    wanted = body.get("response_id")
    if wanted is not None and not isinstance(wanted, str):
        raise JSONError(400, "'response_id' must be a string", code="bad_field", field="response_id")
    store = request.app[STORE]
    active = await store.active_response(access.conversation_id)
    if active is None or (wanted is not None and wanted != active):
        raise JSONError(409, "no such answer is generating", code="not_generating")
    outcome = await store.cancel(access.conversation_id, active)
    if outcome == "gone":
        raise JSONError(409, "the answer finished first", code="not_generating")
    return web.json_response({"response_id": active, "status": outcome}, status=202)


async def delete_conversation(request: web.Request) -> web.StreamResponse:
    """Delete the conversation and revoke every token of it: 204; the cookie is cleared."""
    request.app[GATE].take_post(request)
    access = await _access(request)
    gate = request.app[GATE]
    await request.app[STORE].delete(access.conversation_id, gate.tokens.max_age)
    response = web.Response(status=204)
    response.del_cookie(COOKIE_NAME, path=conversation_path(access.conversation_id))
    return response
