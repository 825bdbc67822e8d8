"""The Vercel AI SDK dialect (UI message stream v1): ``useChat`` on streamfan, resumable.

- ``POST /api/chat``: the default transport's body ``{id, messages, trigger, messageId}``. The chat
  id names a streamfan conversation (derived from it with the node secret, the same on every node);
  the last user message is posted (earlier ones are stored first when the conversation is new).
- ``GET /api/chat/{id}/stream`` (``resume: true``): 204 when nothing is being generated; else
  ``start``, ``text-start``, ONE ``text-delta`` with all the text so far (the client starts from an
  empty message), then the live deltas: a snapshot read atomically with its last event id, so
  nothing is lost or doubled, in O(1) events whatever the answer's length.
- ``POST /api/chat/{id}/stop``: cancels the answer being generated (idempotent).

Frames are ``data: {part}`` lines: ``start``, ``text-start``, ``text-delta``..., ``text-end``,
``finish`` (or ``error``), then ``data: [DONE]``. Parts carry no extra fields (ai 5.x to 7 reject
them); the cursor rides in the SSE ``id:`` line, which their parser ignores. Heartbeats are
comments. Headers: ``x-vercel-ai-ui-message-stream: v1``, ``x-accel-buffering: no``.
Credentials (``Authorization: Bearer``, set in the transport's ``headers``): a browser uses its
chat's own token (``POST /api/conversations`` gives a conversation id, used as the chat id, and the
token that opens it and nothing else); a server may use one of ``STREAMFAN_API_KEYS`` and any chat
id. The server-wide key never belongs in browser code: it opens every chat and ``/v1``.
"""

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any

from aiohttp import web

from server import inputs
from server.context import GATE, HUB, SETTINGS, STORE
from server.dialects.openai import has_key
from server.errors import JSONError
from server.follower import AnswerEvents, TranslatingFollower
from server.settings import Settings
from server.store import Busy, Overloaded, new_id, refusal
from server.streaming import attach_or_end, catch_up, event_stream_response, follow_live
from wire.events import EventId, EventType, parse_event_id
from wire.keys import ID_RE

HEADERS = {"x-vercel-ai-ui-message-stream": "v1", "x-accel-buffering": "no"}


def part(body: dict[str, Any], event_id: bytes = b"") -> bytes:
    data = b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    return (b"id: " + event_id + b"\n" + data) if event_id else data


def conversation_of(request: web.Request, chat_id: object) -> str:
    """The conversation a chat id names for a holder of an API key: an HMAC under the node secret,
    so every node agrees and nobody picks another chat's conversation without a key."""
    if not isinstance(chat_id, str) or not 1 <= len(chat_id) <= 200:
        raise JSONError(400, "'id' must be the chat's id (1 to 200 characters)", code="bad_field", field="id")
    mac = hmac.new(request.app[SETTINGS].secret, b"ai-sdk-chat:" + chat_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


async def chat_conversation(request: web.Request, chat_id: object) -> str:
    """The conversation this request may use as the chat ``chat_id``.

    A server presents an API key and may name any chat (``conversation_of``). A browser presents
    its chat's own credential, never the server-wide key: ``POST /api/conversations`` gives it a
    conversation id, which is its chat id, and that conversation's token, which opens that chat
    only (checked, revocation included, as the native API checks it).
    """
    if has_key(request):
        return conversation_of(request, chat_id)
    refused = JSONError(
        401,
        "this chat's token (or an API key) is required",
        code="unauthorized",
        headers={"WWW-Authenticate": "Bearer"},
    )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or not isinstance(chat_id, str) or not ID_RE.match(chat_id):
        raise refused
    gate = request.app[GATE]
    try:
        generation = gate.tokens.verify(token.strip(), chat_id)
    except JSONError as exc:
        raise (exc if exc.status == 401 else refused) from None  # an expired token says so
    await gate.unrevoked(chat_id, generation, request.app[STORE])
    if request.method == "POST":
        gate.take_post(request)  # a browser's posts and stops count as the native API's do
    return chat_id


class UIMessageFollower(TranslatingFollower):
    """Writes one answer as UI message stream parts."""

    __slots__ = ("answer", "done", "part_id", "started")

    def __init__(self, stream: Any, *, max_pending: int, response_id: str, text_so_far: str | None) -> None:
        super().__init__(stream, max_pending=max_pending)
        self.answer = AnswerEvents(response_id, inside=True)
        """Both uses start inside the answer: after the post that started it, or at a resume's
        snapshot of it."""
        self.part_id = f"text-{response_id}"
        self.started = text_so_far is not None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if text_so_far is not None:
            opening = part({"type": "start", "messageId": response_id}) + part(
                {"type": "text-start", "id": self.part_id}
            )
            if text_so_far:
                opening += part({"type": "text-delta", "id": self.part_id, "delta": text_so_far})
            stream.put(stream.framed(opening))

    def translate(self, frame: bytes) -> bytes:
        event = self.answer.take(frame)
        if event is None or event.type in (EventType.USER_MESSAGE, EventType.REGENERATE):
            return b""
        event_id, data = event.event_id, event.body
        out = b""
        if not self.started:
            self.started = True
            out += part({"type": "start", "messageId": self.answer.response_id}) + part(
                {"type": "text-start", "id": self.part_id}
            )
        if event.type == EventType.DELTA:
            return out + part({"type": "text-delta", "id": self.part_id, "delta": event.text}, event_id)
        if not self.done.done():
            self.done.set_result(None)
        out += part({"type": "text-end", "id": self.part_id})
        if data["finish_reason"] == "failed":
            out += part({"type": "error", "errorText": data.get("error") or "the answer failed"}, event_id)
        else:
            out += part({"type": "finish"}, event_id)
        return out + b"data: [DONE]\n\n"


def _messages(raw: object, settings: Settings) -> list[dict[str, str]]:
    """The UI messages as role/content (their text parts joined), checked as the native API checks
    a message; the last is the user's, with text."""
    if not isinstance(raw, list) or not raw:
        raise inputs.bad_field("messages", "'messages' must be a non-empty array")
    plain: list[dict[str, str]] = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise inputs.bad_field("messages", "each message needs a role: system, user or assistant")
        parts = message.get("parts")
        if not isinstance(parts, list):
            raise inputs.bad_field("messages", "each message needs its 'parts'")
        texts = [p for p in parts if isinstance(p, dict) and p.get("type") == "text"]  # steps, sources: not text
        last = i == len(raw) - 1
        content = inputs.content_text(texts, "messages", settings.max_message_chars, required=last)
        plain.append({"role": str(message["role"]), "content": content})
    if plain[-1]["role"] != "user":
        raise inputs.bad_field("messages", "the last message must be the user's")
    return plain


async def chat(request: web.Request) -> web.StreamResponse:
    settings, store = request.app[SETTINGS], request.app[STORE]
    body = await inputs.json_body(request, required=True)
    conversation_id = await chat_conversation(request, body.get("id"))
    plain = _messages(body.get("messages"), settings)
    if (await store.snapshot(conversation_id, 1))["total_messages"] == 0:
        await store.seed(conversation_id, plain[:-1])
    result = await store.post_message(
        conversation_id, plain[-1]["content"], settings.default_max_tokens, "node:" + new_id()
    )
    if isinstance(result, Busy | Overloaded):
        raise refusal(result)
    response, stream = await event_stream_response(request, lambda r: r.headers.update(HEADERS))
    if stream is None:
        return response
    follower = UIMessageFollower(stream, max_pending=settings.catchup_buffer_events, response_id="", text_so_far=None)
    follower.answer.follow(result.response_id)
    follower.part_id = f"text-{result.response_id}"
    follower.position = parse_event_id(result.event_id)  # the answer follows its user message
    await _follow(request, response, follower, conversation_id)
    return response


async def resume(request: web.Request) -> web.StreamResponse:
    """``GET /api/chat/{id}/stream``: the answer in progress, compacted, then live; 204 if none."""
    settings, store = request.app[SETTINGS], request.app[STORE]
    conversation_id = await chat_conversation(request, request.match_info["chat_id"])
    snapshot = await store.snapshot(conversation_id, 1)
    active = snapshot["active_response_id"]
    if active is None:
        return web.Response(status=204)
    draft = snapshot["messages"][-1]["content"] if snapshot["messages"] else ""
    response, stream = await event_stream_response(request, lambda r: r.headers.update(HEADERS))
    if stream is None:
        return response
    follower = UIMessageFollower(
        stream, max_pending=settings.catchup_buffer_events, response_id=active, text_so_far=draft
    )
    position: EventId = parse_event_id(snapshot["last_event_id"])
    follower.position = position
    await _follow(request, response, follower, conversation_id)
    return response


async def _follow(request: web.Request, response: Any, follower: UIMessageFollower, conversation_id: str) -> None:
    """Attach, catch up from the follower's position, then live until the answer ends or the
    client leaves (a useChat client resumes; it stops an answer with ``/stop``)."""
    settings, store, hub = request.app[SETTINGS], request.app[STORE], request.app[HUB]
    feed = await attach_or_end(
        hub,
        conversation_id,
        follower,
        lambda why: part({"type": "error", "errorText": f"{why}; resume"}) + b"data: [DONE]\n\n",
    )
    if feed is None:
        return
    try:
        await catch_up(follower, store, conversation_id, settings.replay_page_events)
        await follow_live(response, follower, follower.done)
    finally:
        hub.detach(feed, follower)


async def stop(request: web.Request) -> web.StreamResponse:
    """``POST /api/chat/{id}/stop``: cancel the answer being generated; 204 whether or not one was."""
    store = request.app[STORE]
    conversation_id = await chat_conversation(request, request.match_info["chat_id"])
    active = await store.active_response(conversation_id)
    if active is not None:
        await store.cancel(conversation_id, active)
    return web.Response(status=204)
