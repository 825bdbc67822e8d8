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
import json
import time
from typing import Any

from aiohttp import web

from server import inputs
from server.context import GATE, HUB, SETTINGS, STORE
from server.dialects.openai import OpenAIError, busy, cancel_unfinished, check_key
from server.follower import AnswerEvents, TranslatingFollower
from server.settings import Settings
from server.store import Busy, Overloaded, new_id
from server.streaming import attach_or_end, catch_up, event_stream_response, follow_live
from wire.events import EventType

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none", "auto"),
    "response_format": ({"type": "text"},),
    "logprobs": (False,),
    "audio": (),
    "modalities": (["text"],),
}
"""Parameters that would change the answer and that streamfan does not implement: refused, not
ignored (their neutral values pass)."""


def parse_request(body: dict[str, Any], settings: Settings) -> tuple[list[dict[str, str]], int, bool, bool, str]:
    """(messages, max tokens, stream?, include usage?, model) of a Chat Completions request; every
    refusal a 400 naming its parameter, as the native API's."""
    inputs.refuse_unsupported(body, _UNSUPPORTED)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise inputs.bad_field("messages", "'messages' must be a non-empty array")
    messages: list[dict[str, str]] = []
    for i, message in enumerate(raw):
        role = _ROLES.get(str(message.get("role"))) if isinstance(message, dict) else None
        if role is None:
            raise inputs.bad_field("messages", "each message needs a role: system, developer, user or assistant")
        last = i == len(raw) - 1
        content = inputs.content_text(message.get("content"), "messages", settings.max_message_chars, required=last)
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise inputs.bad_field("messages", "the last message must be the user's")
    limit = inputs.whole_number(
        body.get("max_completion_tokens", body.get("max_tokens", settings.default_max_tokens)),
        "max_tokens",
        1,
        settings.max_tokens_limit,
    )
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    requested = body.get("model")
    model = requested if isinstance(requested, str) and requested else str(settings.model_name)
    return messages, limit, bool(body.get("stream")), include_usage, model


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
            return failed_chunk(data.get("error") or "the answer failed")
        opener = b"" if self.started else self.chunk({"role": "assistant", "content": ""})
        return opener + self.chunk({}, "length" if reason == "length" else "stop")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    check_key(request)
    settings, store, gate = request.app[SETTINGS], request.app[STORE], request.app[GATE]
    body = await inputs.json_body(request, required=True)
    messages, limit, streaming, include_usage, model = parse_request(body, settings)
    conversation_id = new_id()
    token = gate.tokens.issue(conversation_id)
    await store.seed(conversation_id, messages[:-1])
    result = await store.post_message(conversation_id, messages[-1]["content"], limit, "node:" + new_id())
    if isinstance(result, Busy | Overloaded):  # (a new conversation is never busy)
        raise busy()
    headers = {"X-Streamfan-Conversation": conversation_id, "X-Streamfan-Token": token}
    if not streaming:
        return await _whole(request, conversation_id, result.response_id, model, headers)
    return await _streamed(request, conversation_id, result.response_id, model, include_usage, headers)


async def _streamed(
    request: web.Request,
    conversation_id: str,
    response_id: str,
    model: str,
    include_usage: bool,
    headers: dict[str, str],
) -> web.StreamResponse:
    """The answer posted already: the catch-up reads the conversation from its start, so attaching
    after the post misses nothing, and everything that could be refused was refused as a status."""
    settings, hub, store = request.app[SETTINGS], request.app[HUB], request.app[STORE]
    response, stream = await event_stream_response(request, lambda r: r.headers.update(headers))
    if stream is None:  # the client left before the headers: nobody will read this answer
        await cancel_unfinished(store, conversation_id, response_id)
        return response
    follower = ChatFollower(stream, max_pending=settings.catchup_buffer_events, model=model)
    follower.answer.follow(response_id)
    follower.name = f"chatcmpl-{response_id}"
    feed = await attach_or_end(hub, conversation_id, follower, lambda why: failed_chunk(f"{why}; retry"))
    if feed is None:
        await cancel_unfinished(store, conversation_id, response_id, follower.done)
        return response
    try:
        await catch_up(follower, store, conversation_id, settings.replay_page_events)
        if await follow_live(response, follower, follower.done):
            if include_usage and follower.done.result()["finish_reason"] != "failed":
                usage = await _usage(request, conversation_id)
                stream.put(stream.framed(follower.usage_chunk(usage)))
            stream.put(stream.framed(b"data: [DONE]\n\n"))
        else:
            await cancel_unfinished(store, conversation_id, response_id, follower.done)
    except asyncio.CancelledError:
        await cancel_unfinished(store, conversation_id, response_id, follower.done)
        raise
    finally:
        hub.detach(feed, follower)
    return response


async def _usage(request: web.Request, conversation_id: str) -> dict[str, int]:
    snapshot = await request.app[STORE].snapshot(conversation_id, 1)
    usage = (snapshot["messages"][-1].get("usage") if snapshot["messages"] else None) or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _whole(
    request: web.Request, conversation_id: str, response_id: str, model: str, headers: dict[str, str]
) -> web.StreamResponse:
    store = request.app[STORE]
    await store.wait_idle(conversation_id)
    answer = (await store.snapshot(conversation_id, 1))["messages"][-1]
    if answer.get("finish_reason") == "failed":
        raise OpenAIError(502, answer.get("error") or "the answer failed")
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


def failed_chunk(message: str) -> bytes:
    """The stream's last frame when the answer cannot go on: an error object, as OpenAI streams one."""
    error = {"message": message, "type": "server_error", "param": None, "code": None}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
