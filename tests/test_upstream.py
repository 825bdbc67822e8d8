"""A real model behind streamfan: the ``openai`` generator against a fake OpenAI-compatible server.

The fake speaks the real chunk format (the role in the first delta, ``finish_reason`` in the last,
an ``include_usage`` chunk, ``data: [DONE]``) and misbehaves on cue from the prompt: ``fail`` (500s
before the first token), ``error:`` (an error mid-stream), ``slow:`` (a slow first token),
``hang:`` (never ends: a cancel must reach it) and ``length:`` (cut at the token limit). No network.
"""

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import fast_producer, node_settings
from tests.fakes import eventually
from tests.sse_client import read_events
from tests.test_api import create, post


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_first = 0
        self.drop_first = 0
        """Requests answered with the role chunk and then a dropped connection (no text)."""
        self.end_first = 0
        """Requests answered with the role chunk and then a clean end (no text, no finish reason)."""
        self.cancelled = 0

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        assert request.headers["Authorization"] == "Bearer test-key" and body["stream"] is True
        if self.fail_first:
            self.fail_first -= 1
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=500)
        prompt = body["messages"][-1]["content"]
        mode, _, _ = prompt.partition(":")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> None:
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
            chunk["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
            await response.write(b"data: " + json.dumps({**chunk, **extra}).encode() + b"\n\n")

        if mode == "slow":
            await asyncio.sleep(3)
        await send({"role": "assistant", "content": ""})
        if self.drop_first:
            self.drop_first -= 1
            assert request.transport is not None
            request.transport.abort()
            return response
        if self.end_first:
            self.end_first -= 1
            return response
        words = f"echo: {prompt}".split(" ")
        pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
        if mode == "split":  # an emoji cut between its UTF-16 halves, and a half with no other
            pieces = ["a ", "\ud83d", "\ude80", " b \ud83d"]
        try:
            for i, piece in enumerate(pieces if mode != "hang" else iter(lambda: " more", None)):
                await send({"content": piece})
                await asyncio.sleep(0.05 if mode == "hang" else 0.002)
                if mode == "error" and i == 2:
                    await response.write(
                        b'data: {"error": {"message": "the GPU caught fire", "type": "server_error"}}\n\n'
                    )
                    return response
        except (ConnectionError, asyncio.CancelledError):
            self.cancelled += 1
            raise
        await send({}, "length" if mode == "length" else "stop")
        if body.get("stream_options", {}).get("include_usage"):
            await send(
                None, usage={"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)}
            )
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def upstream(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.completions)
    server = await aiohttp_server(app)
    monkeypatch.setenv("OPENAI_BASE_URL", str(server.make_url("/v1")))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("STREAMFAN_OPENAI_MODEL", "fake-model")
    monkeypatch.setenv("STREAMFAN_OPENAI_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("STREAMFAN_OPENAI_SYSTEM_PROMPT", "Be brief.")
    return fake


async def node(client_factory: Any) -> Any:
    return await client_factory(settings=node_settings(), producer=fast_producer(generator="openai"))


async def answer(client: Any, cid: str, auth: dict[str, str], content: str) -> tuple[dict[str, Any], Any]:
    stream = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    posted = await post(client, cid, auth, content)
    got = await read_events(stream, until=lambda e: e.type == "done" and posted["response_id"] in e.data, within=10)
    stream.close()
    history = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
    return history["messages"][-1], got


async def test_the_answer_comes_from_the_model_with_the_whole_conversation_and_its_usage(
    client_factory: Any, upstream: FakeUpstream
) -> None:
    client = await node(client_factory)
    cid, auth = await create(client)
    first, got = await answer(client, cid, auth, "hello there")
    assert first["content"] == got.text() == "echo: hello there" and first["finish_reason"] == "stop"
    assert first["usage"] == {"prompt_tokens": 11, "completion_tokens": 3}
    await answer(client, cid, auth, "and again")
    assert upstream.requests[-1]["model"] == "fake-model"
    assert upstream.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "echo: hello there"},
        {"role": "user", "content": "and again"},
    ]


async def test_an_emoji_the_model_server_cut_in_two_arrives_whole(client_factory: Any, upstream: FakeUpstream) -> None:
    """JSON can spell half an emoji (``"\\ud83d"``), and servers that slice text by UTF-16 code
    units send one: its other half is held for the next piece, and a half that has none is U+FFFD."""
    client = await node(client_factory)
    cid, auth = await create(client)
    stored, got = await answer(client, cid, auth, "split: it")
    assert stored["content"] == got.text() == "a \U0001f680 b \ufffd"


async def test_failures_before_the_first_token_are_retried(client_factory: Any, upstream: FakeUpstream) -> None:
    upstream.fail_first = 2
    client = await node(client_factory)
    cid, auth = await create(client)
    message, _ = await answer(client, cid, auth, "worth the wait")
    assert message["content"] == "echo: worth the wait" and len(upstream.requests) == 3


@pytest.mark.parametrize("how", ["drop_first", "end_first"])
async def test_an_upstream_lost_after_its_role_chunk_and_before_any_text_is_retried(
    client_factory: Any, upstream: FakeUpstream, how: str
) -> None:
    setattr(upstream, how, 1)
    client = await node(client_factory)
    cid, auth = await create(client)
    message, got = await answer(client, cid, auth, "second time lucky")
    assert message["content"] == got.text() == "echo: second time lucky" and message["finish_reason"] == "stop"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("prompt", "reason", "error"),
    [
        ("error: mid-stream", "failed", "failed mid-answer"),
        ("slow: first token", "failed", "timed out"),
        ("length: a long one", "length", None),
    ],
)
async def test_upstream_trouble_ends_the_answer_with_a_reason(
    client_factory: Any, upstream: FakeUpstream, prompt: str, reason: str, error: str | None
) -> None:
    client = await node(client_factory)
    cid, auth = await create(client)
    message, got = await answer(client, cid, auth, prompt)
    [done] = got.of_type("done")
    assert message["finish_reason"] == done["finish_reason"] == reason
    if error:
        assert error in message["error"] and error in done["error"]


async def test_a_cancel_reaches_the_model_server(client_factory: Any, upstream: FakeUpstream) -> None:
    client = await node(client_factory)
    cid, auth = await create(client)
    stream = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    posted = await post(client, cid, auth, "hang: forever")
    first = await read_events(stream, count=5)
    resp = await client.post(f"/api/conversations/{cid}/cancel", json={}, headers=auth)
    assert resp.status == 202
    got = await read_events(stream, within=10)
    stream.close()
    chunks = len(first.of_type("delta")) + len(got.of_type("delta"))
    assert got.of_type("done") == [
        {"response_id": posted["response_id"], "finish_reason": "cancelled", "chunks": chunks}
    ]
    await eventually(lambda: upstream.cancelled == 1, within=5)
