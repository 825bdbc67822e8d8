"""The OpenAI Responses dialect, resumable: ``/v1/responses`` (stream, background, resume, cancel).

Each response is one streamfan conversation (``resp_<conversation id>``). Its events carry
``sequence_number``s derived from the stored stream, so every node numbers them alike and
``GET /v1/responses/{id}?stream=true&starting_after=N`` replays from any node, from any number: the
history is read from the start (cheap: one answer) and events up to N are skipped. The sequence:
``response.created`` (0), ``response.in_progress`` (1), ``response.output_item.added`` (2),
``response.content_part.added`` (3), one ``response.output_text.delta`` per chunk (4 + its index),
then ``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``
and ``response.completed`` (or ``response.incomplete`` at the token limit, ``response.failed``).
Keys: ``STREAMFAN_API_KEYS``, as for Chat Completions.
"""

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from server.context import HUB, SETTINGS, STORE
from server.follower import AnswerEvents, TranslatingFollower
from server.openai_chat import OpenAIError, check_key, read_payload
from server.sse_endpoint import catch_up, event_stream_response
from server.store import Busy, Overloaded, new_id
from wire.events import EventType

_ID_PREFIX = "resp_"
_OPENING = ("response.created", "response.in_progress", "response.output_item.added", "response.content_part.added")
"""A response's first events, numbered 0 to 3 on every node; its deltas follow from ``_FIRST_DELTA``."""
_FIRST_DELTA = len(_OPENING)
_CLOSING = ("response.output_text.done", "response.content_part.done", "response.output_item.done")
"""After the last delta: these, then the terminal event (``response.completed`` or its kin)."""
_TERMINAL = len(_CLOSING)
"""The terminal event's place after the closing events' base."""
_STATUS = {"stop": "completed", "length": "incomplete", "cancelled": "cancelled", "failed": "failed"}


def response_object(
    response_id: str, model: str, status: str, text: str, usage: dict[str, Any] | None
) -> dict[str, Any]:
    item = {
        "id": f"msg_{response_id.removeprefix(_ID_PREFIX)}",
        "type": "message",
        "status": "completed" if status == "completed" else "in_progress",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]
        if text or status != "in_progress"
        else [],
    }
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": [item] if item["content"] or status != "in_progress" else [],
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "error": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion},
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
    }


def _event(kind: str, body: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **body}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


class ResponsesFollower(TranslatingFollower):
    """Writes one answer as Responses events, numbered from the stored stream."""

    __slots__ = ("after", "answer", "done", "model", "response_id", "text")

    def __init__(self, stream: Any, *, max_pending: int, response_id: str, answer: str, model: str, after: int) -> None:
        super().__init__(stream, max_pending=max_pending)
        self.response_id = response_id
        self.answer = AnswerEvents(answer, inside=False)
        """The streamfan answer this follows (its conversation's only one), read from the start."""
        self.model = model
        self.after = after
        """Events numbered up to this are not written (the client has them)."""
        self.text: list[str] = []
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def numbered(self, sequence: int, kind: str, body: dict[str, Any]) -> bytes:
        return b"" if sequence <= self.after else _event(kind, {"sequence_number": sequence, **body})

    def translate(self, frame: bytes) -> bytes:
        event = self.answer.take(frame)
        if event is None:
            return b""
        event_type, data = event.type, event.body
        item_id = f"msg_{self.response_id.removeprefix(_ID_PREFIX)}"
        where: dict[str, Any] = {"item_id": item_id, "output_index": 0, "content_index": 0}
        if event_type not in (EventType.DELTA, EventType.DONE):  # its user_message (or a regenerate)
            started = response_object(self.response_id, self.model, "in_progress", "", None)
            item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            empty = {"type": "output_text", "text": "", "annotations": []}
            bodies: tuple[dict[str, Any], ...] = (
                {"response": started},
                {"response": started},
                {"output_index": 0, "item": item},
                {**where, "part": empty},
            )
            return b"".join(
                self.numbered(n, kind, body) for n, (kind, body) in enumerate(zip(_OPENING, bodies, strict=True))
            )
        if event_type == EventType.DELTA:
            self.text.append(event.text)
            number = _FIRST_DELTA + len(self.text) - 1
            return self.numbered(number, "response.output_text.delta", {**where, "delta": event.text, "logprobs": []})
        text = "".join(self.text)
        base = _FIRST_DELTA + len(self.text)
        status = _STATUS.get(data["finish_reason"], "completed")
        if not self.done.done():
            self.done.set_result({"status": status, "base": base, "error": data.get("error")})
        part = {"type": "output_text", "text": text, "annotations": []}
        finished = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
        closing: tuple[dict[str, Any], ...] = (
            {**where, "text": text, "logprobs": []},
            {**where, "part": part},
            {"output_index": 0, "item": finished},
        )
        return b"".join(
            self.numbered(base + n, kind, body) for n, (kind, body) in enumerate(zip(_CLOSING, closing, strict=True))
        )


def _input(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("input")
    messages: list[dict[str, str]] = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.append({"role": "system", "content": body["instructions"]})
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    elif isinstance(raw, list):
        for item in raw:
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            if not isinstance(content, str) or item.get("role") not in ("system", "developer", "user", "assistant"):
                raise OpenAIError(400, "Each input item needs a role and text.", "invalid_request_error")
            messages.append({"role": "system" if item["role"] == "developer" else item["role"], "content": content})
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise OpenAIError(400, "'input' must end with the user's text.", "invalid_request_error")
    return messages


def _conversation(response_id: str) -> str:
    if not response_id.startswith(_ID_PREFIX):
        raise OpenAIError(404, f"No response found with id '{response_id[:80]}'.", "invalid_request_error")
    return response_id.removeprefix(_ID_PREFIX)


async def create(request: web.Request) -> web.StreamResponse:
    check_key(request)
    settings, store = request.app[SETTINGS], request.app[STORE]
    body = await read_payload(request)
    messages = _input(body)
    limit = body.get("max_output_tokens", settings.default_max_tokens)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= settings.max_tokens_limit:
        raise OpenAIError(400, f"max_output_tokens must be 1 to {settings.max_tokens_limit}.", "invalid_request_error")
    model = body.get("model") if isinstance(body.get("model"), str) else settings.model_name
    conversation_id = new_id()
    response_id = _ID_PREFIX + conversation_id
    await store.seed(conversation_id, messages[:-1])
    result = await store.post_message(conversation_id, messages[-1]["content"], limit, "node:" + new_id())
    if isinstance(result, Busy | Overloaded):
        raise OpenAIError(503, "The model is busy; try again shortly.", "server_error")
    if body.get("stream"):
        return await _stream(request, response_id, str(model), -1)
    if body.get("background"):
        return web.json_response(response_object(response_id, str(model), "in_progress", "", None))
    await store.wait_idle(conversation_id)
    return web.json_response(await _object(request, response_id, str(model)))


async def retrieve(request: web.Request) -> web.StreamResponse:
    check_key(request)
    response_id = request.match_info["response_id"]
    model = request.app[SETTINGS].model_name
    if request.query.get("stream") == "true":
        raw = request.query.get("starting_after", "-1")
        if not raw.lstrip("-").isdigit():
            raise OpenAIError(400, "starting_after must be a sequence number.", "invalid_request_error")
        return await _stream(request, response_id, model, int(raw))
    return web.json_response(await _object(request, response_id, model))


async def cancel(request: web.Request) -> web.StreamResponse:
    """Idempotent: a finished response is returned as it is."""
    check_key(request)
    response_id = request.match_info["response_id"]
    conversation_id = _conversation(response_id)
    store = request.app[STORE]
    active = await store.active_response(conversation_id)
    if active is not None:
        await store.cancel(conversation_id, active)
        await store.wait_idle(conversation_id)
    return web.json_response(await _object(request, response_id, request.app[SETTINGS].model_name))


async def _object(request: web.Request, response_id: str, model: str) -> dict[str, Any]:
    snapshot = await request.app[STORE].snapshot(_conversation(response_id), 1)
    if not snapshot["messages"]:
        raise OpenAIError(404, f"No response found with id '{response_id[:80]}'.", "invalid_request_error")
    last = snapshot["messages"][-1]
    if snapshot["active_response_id"] is not None:
        return response_object(response_id, model, "in_progress", last.get("content", ""), None)
    status = _STATUS.get(last.get("finish_reason", "stop"), "completed")
    body = response_object(response_id, model, status, last.get("content", ""), last.get("usage"))
    if status == "failed":
        body["error"] = {"code": "server_error", "message": last.get("error") or "the answer failed"}
    return body


async def _stream(request: web.Request, response_id: str, model: str, after: int) -> web.StreamResponse:
    settings, hub, store = request.app[SETTINGS], request.app[HUB], request.app[STORE]
    conversation_id = _conversation(response_id)
    snapshot = await store.snapshot(conversation_id, 2)
    answer = snapshot["active_response_id"] or next(
        (m["id"] for m in reversed(snapshot["messages"]) if m["role"] == "assistant"), None
    )
    if answer is None:
        raise OpenAIError(404, f"No response found with id '{response_id[:80]}'.", "invalid_request_error")
    response, stream = await event_stream_response(request)
    if stream is None:
        return response
    follower = ResponsesFollower(
        stream,
        max_pending=settings.catchup_buffer_events,
        response_id=response_id,
        answer=answer,
        model=model,
        after=after,
    )
    feed = await hub.attach(conversation_id, follower)  # before reading the history: nothing can be missed
    try:
        await catch_up(follower, store, conversation_id, settings.replay_page_events)
        if not follower.closed:
            follower.go_live()
            waits: list[asyncio.Future[Any]] = [follower.done, response.ended]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if follower.done.done() and not stream.closed:
            end = follower.done.result()
            final = await _object(request, response_id, model)
            kind = {"failed": "response.failed", "incomplete": "response.incomplete"}.get(
                end["status"], "response.completed"
            )
            closing = follower.numbered(end["base"] + _TERMINAL, kind, {"response": final})
            if closing:
                stream.put(stream.framed(closing))
    finally:
        hub.detach(feed, follower)
    return response
