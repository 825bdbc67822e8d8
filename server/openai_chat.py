"""The OpenAI Chat Completions dialect: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Every request is a streamfan conversation: its messages are stored (the last one posted as the
user's message), the producer answers it like any other, and the response names the conversation
(``X-Streamfan-Conversation``, with its token in ``X-Streamfan-Token``), so the same answer can be
followed or resumed on any node through ``/api/conversations/{id}/events``.

The stream is the OpenAI format exactly: ``data: {chat.completion.chunk}`` per delta (the first
with ``role: "assistant"``), a last chunk with ``finish_reason``, a ``choices: []`` usage chunk when
``stream_options.include_usage``, then ``data: [DONE]``; a failed answer is ``data: {"error": ...}``.
No ``id:`` or ``retry:`` line is ever sent and heartbeats are comments: the official Python SDK
fails on a data-less frame once it has seen either, and the JS SDK on an ``event:`` without data.

Keys: ``STREAMFAN_API_KEYS`` (comma-separated; not the conversation tokens). With none, these
endpoints do not exist (404).
"""

import asyncio
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from server.api import json_body
from server.context import GATE, HUB, SETTINGS, STORE
from server.errors import JSONError
from server.follower import AnswerEvents, TranslatingFollower
from server.sse_endpoint import catch_up, event_stream_response
from server.store import Busy, Overloaded, new_id
from wire.events import EventType


class OpenAIError(JSONError):
    """An error in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(status, message, code=code, type=kind)

    @staticmethod
    def document(status: int, code: str | None, message: str, extra: Mapping[str, object]) -> dict[str, object]:
        return {"error": {"message": message, "type": extra["type"], "param": None, "code": code}}


async def read_payload(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (within the node's body timeout and size), or an OpenAI-style 4xx."""
    try:
        return await json_body(request, required=True)
    except JSONError as exc:
        raise OpenAIError(exc.status, exc.message, "invalid_request_error") from None


def check_key(request: web.Request) -> None:
    keys: tuple[str, ...] = request.app[SETTINGS].api_keys
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    valid = scheme.lower() == "bearer" and any(
        hmac.compare_digest(presented.strip().encode(), key.encode()) for key in keys
    )
    if not valid:
        raise OpenAIError(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")


async def list_models(request: web.Request) -> web.StreamResponse:
    check_key(request)
    name = request.app[SETTINGS].model_name
    return web.json_response(
        {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "streamfan"}]}
    )


def _text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        parts = [p.get("text") for p in content if p.get("type") == "text"]
        if all(isinstance(t, str) for t in parts):
            return "".join(str(t) for t in parts)
    return None


def _request(body: Any, settings: Any) -> tuple[list[dict[str, str]], int, bool, bool, str]:
    if not isinstance(body, dict):
        raise OpenAIError(400, "The body must be a JSON object.", "invalid_request_error")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise OpenAIError(400, "'messages' must be a non-empty array.", "invalid_request_error")
    messages: list[dict[str, str]] = []
    for message in raw:
        role = message.get("role") if isinstance(message, dict) else None
        text = _text(message.get("content")) if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant") or text is None:
            raise OpenAIError(400, "Each message needs a role and text content.", "invalid_request_error")
        if len(text) > settings.max_message_chars or "\x00" in text:
            raise OpenAIError(400, "A message is too long or holds NUL.", "invalid_request_error")
        messages.append({"role": "system" if role == "developer" else str(role), "content": text})
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise OpenAIError(400, "The last message must be the user's, with text.", "invalid_request_error")
    limit = body.get("max_completion_tokens", body.get("max_tokens", settings.default_max_tokens))
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= settings.max_tokens_limit:
        raise OpenAIError(400, f"max_tokens must be 1 to {settings.max_tokens_limit}.", "invalid_request_error")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    requested = body.get("model")
    model = requested if isinstance(requested, str) and requested else str(settings.model_name)
    return messages, int(limit), bool(body.get("stream")), include_usage, model


class ChatFollower(TranslatingFollower):
    """A follower that writes the conversation's answer as chat.completion.chunk data lines."""

    __slots__ = ("answer", "created", "done", "model", "name", "started")

    def __init__(self, stream: Any, *, max_pending: int, model: str) -> None:
        super().__init__(stream, max_pending=max_pending)
        self.answer = AnswerEvents("", inside=False)
        """Named once posted; the catch-up reads from the start, so it sees the answer begin."""
        self.name = "chatcmpl-"
        self.model = model
        self.created = int(time.time())
        self.started = False
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        """One chunk of the answer's only choice: text, the role's opener or its finish reason."""
        return self._frame([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def usage_chunk(self, usage: dict[str, int]) -> bytes:
        """The last chunk when ``stream_options.include_usage`` asks: no choices, the usage."""
        return self._frame([], usage=usage)

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.name,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def translate(self, frame: bytes) -> bytes:
        event = self.answer.take(frame)
        if event is None or event.type in (EventType.USER_MESSAGE, EventType.REGENERATE):
            return b""
        data = event.body
        if event.type == EventType.DELTA:
            delta: dict[str, Any] = {"content": event.text}
            if not self.started:
                self.started = True
                delta = {"role": "assistant", **delta}
            return self.chunk(delta)
        if not self.done.done():
            self.done.set_result(data)
        reason = data["finish_reason"]
        if reason == "failed":
            error = {"message": data.get("error") or "the answer failed", "type": "server_error", "code": None}
            return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
        opener = b"" if self.started else self.chunk({"role": "assistant", "content": ""})
        return opener + self.chunk({}, "length" if reason == "length" else "stop")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    check_key(request)
    settings, store, gate = request.app[SETTINGS], request.app[STORE], request.app[GATE]
    body = await read_payload(request)
    messages, limit, streaming, include_usage, model = _request(body, settings)
    conversation_id = new_id()
    token = gate.tokens.issue(conversation_id)
    await store.seed(conversation_id, messages[:-1])
    headers = {"X-Streamfan-Conversation": conversation_id, "X-Streamfan-Token": token}
    if not streaming:
        return await _whole(request, conversation_id, messages[-1]["content"], limit, model, headers)
    return await _streamed(request, conversation_id, messages[-1]["content"], limit, model, include_usage, headers)


async def _post(request: web.Request, conversation_id: str, content: str, limit: int) -> str:
    result = await request.app[STORE].post_message(conversation_id, content, limit, "node:" + new_id())
    if isinstance(result, Busy | Overloaded):
        raise OpenAIError(503, "The model is busy; try again shortly.", "server_error")
    return result.response_id


async def _streamed(
    request: web.Request,
    conversation_id: str,
    content: str,
    limit: int,
    model: str,
    include_usage: bool,
    headers: dict[str, str],
) -> web.StreamResponse:
    settings, hub, store = request.app[SETTINGS], request.app[HUB], request.app[STORE]

    def add_headers(response: web.StreamResponse) -> None:
        response.headers.update(headers)

    response, stream = await event_stream_response(request, add_headers)
    if stream is None:
        return response
    # Subscribe before posting, so no event of the answer can be missed.
    follower = ChatFollower(stream, max_pending=settings.catchup_buffer_events, model=model)
    feed = await hub.attach(conversation_id, follower)
    try:
        follower.answer.follow(await _post(request, conversation_id, content, limit))
        follower.name = f"chatcmpl-{follower.answer.response_id}"
        await catch_up(follower, store, conversation_id, settings.replay_page_events)
        follower.go_live()
        waits: list[asyncio.Future[Any]] = [follower.done, response.ended]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if follower.done.done() and not stream.closed:
            if include_usage and follower.done.result()["finish_reason"] != "failed":
                usage = await _usage(request, conversation_id)
                stream.put(stream.framed(follower.usage_chunk(usage)))
            stream.put(stream.framed(b"data: [DONE]\n\n"))
    finally:
        hub.detach(feed, follower)
    return response


async def _usage(request: web.Request, conversation_id: str) -> dict[str, int]:
    snapshot = await request.app[STORE].snapshot(conversation_id, 1)
    usage = (snapshot["messages"][-1].get("usage") if snapshot["messages"] else None) or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _whole(
    request: web.Request, conversation_id: str, content: str, limit: int, model: str, headers: dict[str, str]
) -> web.StreamResponse:
    response_id = await _post(request, conversation_id, content, limit)
    store = request.app[STORE]
    await store.wait_idle(conversation_id)
    answer = (await store.snapshot(conversation_id, 1))["messages"][-1]
    if answer.get("finish_reason") == "failed":
        raise OpenAIError(502, answer.get("error") or "the answer failed", "server_error")
    usage = await _usage(request, conversation_id)
    body = {
        "id": f"chatcmpl-{response_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer["content"], "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if answer.get("finish_reason") == "length" else "stop",
            }
        ],
        "usage": usage,
    }
    return web.json_response(body, headers=headers)
