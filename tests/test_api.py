"""The node's HTTP API end to end, in process: embedded broker (fakeredis) and echo producer.

Longer than 300 lines: one test per rule of the HTTP API, sharing the in-process node fixtures.
"""

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError

from loadtest.sse_parser import SSEParser
from producer.generator import Pacing
from server.errors import JSONError, guarded
from tests.conftest import fast_producer, node_settings
from tests.sse_client import assert_strictly_increasing, read_events

TRICKY = '  leading spaces\nline two\r\nCRLF line\rlone CR\n\n🚀 emoji, naïve café, 日本語 </script> "quotes" \\ back'


async def create(client: Any) -> tuple[str, dict[str, str]]:
    resp = await client.post("/api/conversations")
    assert resp.status == 201
    body = await resp.json()
    return body["id"], {"Authorization": f"Bearer {body['token']}"}


async def post(client: Any, cid: str, auth: dict[str, str], content: str, **extra: Any) -> dict[str, Any]:
    resp = await client.post(f"/api/conversations/{cid}/messages", json={"content": content, **extra}, headers=auth)
    assert resp.status == 202, await resp.text()
    return dict(await resp.json())


async def raw_stream(client: Any, cid: str, auth: dict[str, str]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A conversation's event stream on a bare socket: its request sent, nothing read yet."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        f"GET /api/conversations/{cid}/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {auth['Authorization']}\r\n\r\n".encode()
    )
    return reader, writer


async def read_until_done(reader: asyncio.StreamReader) -> bytes:
    body = b""
    async with asyncio.timeout(10):
        while b"event: done" not in body:
            body += await reader.read(65536)
    return body


async def test_create_returns_id_token_and_a_scoped_httponly_cookie(client_factory: Any) -> None:
    client = await client_factory()
    resp = await client.post("/api/conversations")
    assert resp.status == 201
    body = await resp.json()
    assert len(body["id"]) >= 16 and body["token"].startswith(body["id"] + ":0.")
    cookie = resp.headers["Set-Cookie"]
    assert f"Path=/api/conversations/{body['id']}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    other = await (await client.post("/api/conversations")).json()
    assert other["id"] != body["id"] and other["token"] != body["token"]


async def test_answer_streams_byte_exact_and_matches_history(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    events = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    assert events.status == 200
    assert events.headers["Content-Type"] == "text/event-stream"
    assert events.headers["Cache-Control"] == "no-cache"
    assert events.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in events.headers
    posted = await post(client, cid, auth, TRICKY)
    received = await read_events(events)
    assert received.retry_ms == 1000
    assert received.events[0].type == "user_message"
    assert received.events[-1].type == "done"
    assert_strictly_increasing(received.ids)
    deltas = received.of_type("delta")
    assert received.of_type("done")[0]["chunks"] == len(deltas) > 1
    # The answer (the simulated model echoes the prompt) has its line breaks as LF: what an
    # EventSource can carry, and what the history stores too (wire.events.delta_text).
    answer = TRICKY.replace("\r\n", "\n").replace("\r", "\n")
    assert received.text(posted["response_id"]) == answer
    history = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    assert history["messages"][0]["content"] == TRICKY
    assert history["messages"][1] | {"content": ""} == {
        "id": posted["response_id"],
        "role": "assistant",
        "content": "",
        "status": "complete",
        "finish_reason": "stop",
    }
    assert history["messages"][1]["content"] == answer
    assert history["last_event_id"] == received.ids[-1]
    events.close()


async def test_a_delta_is_its_text_on_the_wire_without_chunk_framing(client_factory: Any) -> None:
    """The bytes of the native stream, as a socket sees them: the body is the frames themselves
    (ended by the connection, no chunked framing), and a delta's frame is its id, its type and its
    text; the done event counts the deltas."""
    client = await client_factory()
    cid, auth = await create(client)
    reader, writer = await raw_stream(client, cid, auth)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    assert b"transfer-encoding" not in head and b"\r\nconnection: close\r\n" in head
    assert await reader.readexactly(len(b"retry: 1000\n\n")) == b"retry: 1000\n\n"
    await post(client, cid, auth, "two\nlines")
    body = await read_until_done(reader)
    writer.close()
    frames = body.split(b"\n\n")
    deltas = [f for f in frames if b"\nevent: delta\n" in f]
    assert all(re.fullmatch(rb"id: \d+-\d+\nevent: delta\n(data: [^\n]*\n?)+", f + b"\n") for f in deltas)
    assert "".join(e.data for e in SSEParser().feed(b"\n\n".join(deltas) + b"\n\n")) == "two\nlines"
    (done,) = [e for e in SSEParser().feed(body) if e.type == "done"]
    assert json.loads(done.data)["chunks"] == len(deltas)


async def test_an_open_stream_holds_no_keep_alive_timer(client_factory: Any) -> None:
    """aiohttp arms a keep-alive timer per connection (75 s); a native stream, which ends with its
    connection, cancels it (about 570 bytes per open stream)."""
    client = await client_factory()
    cid, auth = await create(client)
    events = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    assert events.status == 200
    handlers = client.server.handler.connections  # the stream's, and any idle keep-alive connection
    assert any(h._keepalive_handle is None and not h._keepalive for h in handlers)
    events.close()


async def test_an_open_stream_keeps_no_request_parser_and_no_request_queue(client_factory: Any) -> None:
    """A native stream is the connection's last request: its protocol's request parser and its
    queue of parsed requests are released when the headers go out (about 2.3 KiB per open stream,
    docs/measurements.md ``stream-parser``)."""
    client = await client_factory()
    cid, auth = await create(client)
    events = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    assert events.status == 200
    streams = [h for h in client.server.handler.connections if not h._keepalive]
    assert streams and all(h._parser is None and h._messages.maxlen == 0 for h in streams)
    events.close()


async def test_bytes_a_client_sends_after_its_stream_request_are_ignored(client_factory: Any) -> None:
    """A request pipelined behind a stream's, or garbage, changes nothing: the stream goes on to
    its answer's end (the connection closes with the stream, so nothing behind it is answered)."""
    client = await client_factory()
    cid, auth = await create(client)
    reader, writer = await raw_stream(client, cid, auth)
    await reader.readuntil(b"retry: 1000\n\n")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x00\xffnot http at all\r\n\r\n")
    await writer.drain()
    await post(client, cid, auth, "still streaming")
    body = await read_until_done(reader)
    writer.close()
    assert b"HTTP/1.1" not in body
    assert "".join(e.data for e in SSEParser().feed(body) if e.type == "delta") == "still streaming"


async def test_no_cursor_replays_everything_then_goes_live(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    first = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    await post(client, cid, auth, "one two three")
    live = await read_events(first)
    late = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    replayed = await read_events(late)
    assert [(e.type, e.data, e.last_event_id) for e in replayed.events] == [
        (e.type, e.data, e.last_event_id) for e in live.events
    ]
    posted = await post(client, cid, auth, "four five")
    second = await read_events(late)
    assert second.text(posted["response_id"]) == "four five"
    assert_strictly_increasing(replayed.ids + second.ids)


async def test_resume_with_last_event_id_loses_and_doubles_nothing(client_factory: Any) -> None:
    slow = fast_producer(pacing=Pacing(ttft_seconds=0.01, tokens_per_second=100, jitter=0))
    client = await client_factory(producer=slow)
    cid, auth = await create(client)
    text = " ".join(f"w{i}" for i in range(40))
    first = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    posted = await post(client, cid, auth, text)
    head = await read_events(first, count=8)
    first.close()
    cursor = head.ids[-1]
    await asyncio.sleep(0.1)  # more is published while no one listens
    resumed = await client.get(f"/api/conversations/{cid}/events", headers={**auth, "Last-Event-ID": cursor})
    tail = await read_events(resumed)
    assert tail.events[0].last_event_id > cursor or len(tail.ids[0]) > len(cursor)
    assert_strictly_increasing(head.ids + tail.ids)
    assert head.text() + tail.text() == text
    assert tail.of_type("done")[0]["response_id"] == posted["response_id"]


async def test_cursor_in_query_and_header_wins(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    await post(client, cid, auth, "a b c d")
    full = await read_events(await client.get(f"/api/conversations/{cid}/events", headers=auth))
    third = full.ids[2]
    by_query = await read_events(
        await client.get(f"/api/conversations/{cid}/events", params={"last_event_id": third}, headers=auth)
    )
    assert by_query.ids == full.ids[3:]
    both = await read_events(
        await client.get(
            f"/api/conversations/{cid}/events",
            params={"last_event_id": full.ids[0]},
            headers={**auth, "Last-Event-ID": third},
        )
    )
    assert both.ids == full.ids[3:]


async def test_unknown_cursor_gets_an_explicit_reset(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    await post(client, cid, auth, "hello there")
    full = await read_events(await client.get(f"/api/conversations/{cid}/events", headers=auth))
    resp = await client.get(f"/api/conversations/{cid}/events", headers={**auth, "Last-Event-ID": "1-0"})
    reset = await read_events(resp, until=lambda e: e.type == "reset")
    assert reset.events[-1].type == "reset"
    assert json.loads(reset.events[-1].data) == {"reason": "unknown_cursor"}
    assert reset.events[-1].last_event_id == full.ids[-1]
    posted = await post(client, cid, auth, "after reset")
    after = await read_events(resp)
    assert after.text(posted["response_id"]) == "after reset"


async def test_bad_cursor_is_a_400(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    for bad in ["abc", "1-2-3", "-1", "1-", "99999999999999999999999-0"]:
        resp = await client.get(f"/api/conversations/{cid}/events", headers={**auth, "Last-Event-ID": bad})
        assert resp.status == 400, bad
        assert (await resp.json())["error"] == "bad_cursor"


async def test_tokens_are_required_and_reveal_nothing(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    _, other_auth = await create(client)
    client.session.cookie_jar.clear()
    for method, suffix in [("GET", ""), ("GET", "/events"), ("POST", "/messages"), ("POST", "/cancel")]:
        path = f"/api/conversations/{cid}{suffix}"
        missing = await client.request(method, path)
        assert missing.status == 401, path
        assert (await missing.json())["error"] == "unauthorized"
        wrong = await client.request(method, path, headers=other_auth)
        assert wrong.status == 404, path
        garbage = await client.request(method, path, headers={"Authorization": "Bearer v1.nope"})
        assert garbage.status == 404
        assert await garbage.json() == await wrong.json()
    resp = await client.get("/api/conversations/short", headers=auth)
    assert resp.status == 404


async def test_cookie_authenticates_eventsource_but_not_cross_site_posts(client_factory: Any) -> None:
    client = await client_factory()
    resp = await client.post("/api/conversations")
    cid = (await resp.json())["id"]
    events = await client.get(f"/api/conversations/{cid}/events")  # the cookie alone
    assert events.status == 200
    events.close()
    own = str(client.make_url("/")).rstrip("/")
    same = await client.post(f"/api/conversations/{cid}/messages", json={"content": "hi"}, headers={"Origin": own})
    assert same.status == 202
    no_origin = await client.post(f"/api/conversations/{cid}/cancel", json={})
    assert no_origin.status == 403
    cross_site = await client.post(
        f"/api/conversations/{cid}/cancel", json={}, headers={"Origin": own, "Sec-Fetch-Site": "cross-site"}
    )
    assert cross_site.status == 403
    as_form = await client.post(
        f"/api/conversations/{cid}/cancel", data="x=1", headers={"Origin": own, "Content-Type": "text/plain"}
    )
    assert as_form.status == 415 and (await as_form.json())["error"] == "unsupported_media"
    evil = await client.post(f"/api/conversations/{cid}/cancel", json={}, headers={"Origin": "https://evil.example"})
    assert evil.status == 403


async def test_bad_input_gets_clean_4xx(client_factory: Any) -> None:
    client = await client_factory(settings=node_settings(max_body_bytes=2048, max_message_chars=100))
    cid, auth = await create(client)
    path = f"/api/conversations/{cid}/messages"
    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 400, "bad_json"),
        (b"[1, 2]", 400, "bad_json"),
        (b"", 400, "bad_request"),
        (b"\xff\xfe", 400, "bad_json"),
        (json.dumps({}).encode(), 400, "bad_field"),
        (json.dumps({"content": ""}).encode(), 400, "bad_field"),
        (json.dumps({"content": "   "}).encode(), 400, "bad_field"),
        (json.dumps({"content": 5}).encode(), 400, "bad_field"),
        (json.dumps({"content": "x" * 101}).encode(), 400, "bad_field"),
        (json.dumps({"content": "a\u0000b"}).encode(), 400, "bad_field"),
        (json.dumps({"content": "hi", "max_tokens": True}).encode(), 400, "bad_field"),
        (json.dumps({"content": "hi", "max_tokens": 0}).encode(), 400, "bad_field"),
        (json.dumps({"content": "hi", "max_tokens": "5"}).encode(), 400, "bad_field"),
        (json.dumps({"content": "hi", "max_tokens": 10**9}).encode(), 400, "bad_field"),
        (b"x" * 4096, 413, "payload_too_large"),
    ]
    for body, status, code in cases:
        resp = await client.post(path, data=body, headers={**auth, "Content-Type": "application/json"})
        assert resp.status == status, (body[:40], await resp.text())
        assert resp.headers["Content-Type"].startswith("application/json")
        assert (await resp.json())["error"] == code, body[:40]
    resp = await client.put(path, headers=auth)
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
    resp = await client.get("/favicon.ico")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    # A 500 before (issue 23): a NUL, and (found by the generated requests) a name over 255 bytes.
    for bad in ("/static/%00", "/static/index.html%00.js", "/static/" + "a" * 300):
        resp = await client.get(bad)
        assert resp.status == 404 and (await resp.json())["error"] == "not_found", bad
    for probe in ("/", "/healthz", "/static/style.css"):  # what serves GET answers HEAD (a probe's method)
        resp = await client.head(probe)
        assert resp.status == 200, probe
    history = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
    assert history["messages"] == []  # nothing was half-stored


async def test_one_answer_at_a_time_409(client_factory: Any) -> None:
    slow = fast_producer(pacing=Pacing(ttft_seconds=0.5, tokens_per_second=50, jitter=0))
    client = await client_factory(producer=slow)
    cid, auth = await create(client)
    posted = await post(client, cid, auth, "first")
    resp = await client.post(f"/api/conversations/{cid}/messages", json={"content": "second"}, headers=auth)
    assert resp.status == 409
    body = await resp.json()
    assert body["error"] == "busy" and body["response_id"] == posted["response_id"]


@pytest.mark.parametrize("when", ["queued", "generating"])
async def test_cancel_ends_the_answer_with_done_cancelled(client_factory: Any, when: str) -> None:
    pacing = Pacing(ttft_seconds=0.3 if when == "queued" else 0.01, tokens_per_second=40, jitter=0)
    client = await client_factory(producer=fast_producer(pacing=pacing))
    cid, auth = await create(client)
    events = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    posted = await post(client, cid, auth, " ".join(["word"] * 200))
    first = await read_events(events, until=lambda e: e.type == ("delta" if when == "generating" else "user_message"))
    resp = await client.post(f"/api/conversations/{cid}/cancel", json={}, headers=auth)
    assert resp.status == 202
    received = await read_events(events)
    done = received.of_type("done")[-1]
    chunks = len(first.of_type("delta")) + len(received.of_type("delta"))
    assert done == {"response_id": posted["response_id"], "finish_reason": "cancelled", "chunks": chunks}
    history = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
    answer = history["messages"][-1]
    assert answer["status"] == "cancelled" and answer["finish_reason"] == "cancelled"
    assert len(answer["content"]) < len(" ".join(["word"] * 200))
    again = await client.post(f"/api/conversations/{cid}/cancel", json={}, headers=auth)
    assert again.status == 409
    # and the conversation goes on
    await post(client, cid, auth, "next")


async def test_max_tokens_finishes_with_length(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    events = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    await post(client, cid, auth, "a b c d e f g h", max_tokens=3)
    received = await read_events(events)
    assert received.text() == "a b c"
    assert received.of_type("done")[0]["finish_reason"] == "length"


async def test_health_and_readiness(client_factory: Any) -> None:
    client = await client_factory()
    assert (await client.get("/healthz")).status == 200
    for _ in range(50):
        resp = await client.get("/readyz")
        if resp.status == 200:
            break
        await asyncio.sleep(0.02)
    assert resp.status == 200
    assert await resp.json() == {"status": "ready", "redis": True, "subscriber": True}


async def test_no_wildcard_cors_and_explicit_origins(client_factory: Any) -> None:
    client = await client_factory()
    resp = await client.post("/api/conversations", headers={"Origin": "https://elsewhere.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    allowed = await client_factory(settings=node_settings(cors_origins=("https://app.example",)))
    resp = await allowed.post("/api/conversations", headers={"Origin": "https://app.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    pre = await allowed.options(
        "/api/conversations", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert pre.status == 204 and "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    refused = await allowed.options(
        "/api/conversations", headers={"Origin": "https://x.example", "Access-Control-Request-Method": "POST"}
    )
    assert refused.status == 403


async def test_security_headers_on_every_response(client_factory: Any) -> None:
    client = await client_factory()
    resp = await client.get("/healthz")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_chat_page_and_its_assets_are_served_under_a_strict_csp(client_factory: Any) -> None:
    client = await client_factory()
    for path in ["/", "/c/abcdefghijklmnopqrstuv"]:
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert "<script" in (await resp.text()) and "https://" not in (await resp.text())
    for asset, marker in [("/static/js/feed.js", "EventSource"), ("/static/js/markdown.js", "createElement")]:
        script = await client.get(asset)
        assert script.status == 200 and marker in await script.text()
        assert script.content_type in ("text/javascript", "application/javascript")  # ES modules need a JS type


async def test_history_beyond_retention_gets_reset_never_a_silent_gap(client_factory: Any) -> None:
    from wire.env import Retention

    # A bound well under each answer's deltas: tokens that come while a delta is in flight, or
    # within the producer's send interval, share the next one, so an answer has fewer deltas than
    # tokens (no interval here, and the model paced so that most go alone).
    settings = node_settings(retention=Retention(max_events=20))
    producer = fast_producer(
        pacing=Pacing(ttft_seconds=0.0, tokens_per_second=1000, jitter=0),
        retention=Retention(max_events=20),
        publish_interval_ms=0,
    )
    client = await client_factory(settings=settings, producer=producer)
    cid, auth = await create(client)
    url = f"/api/conversations/{cid}/events"
    first = await client.get(url, headers=auth)
    await post(client, cid, auth, " ".join(f"w{i}" for i in range(400)), max_tokens=1000)
    everything = await read_events(first, within=20)
    assert len(everything.of_type("delta")) > 40  # the premise: an answer longer than the history
    oldest = everything.ids[0]
    # An answer longer than the history is never trimmed while it is written: its text is read
    # from its events, and the snapshot has it whole.
    history = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
    assert history["messages"][-1]["content"] == everything.text()
    # The next answer trims the conversation back to its bound: its start and the old cursors go.
    tail = await client.get(url, headers={**auth, "Last-Event-ID": everything.ids[-1]})
    await post(client, cid, auth, " ".join(f"v{i}" for i in range(150)), max_tokens=1000)
    second = await read_events(tail, within=20)
    assert len(second.of_type("delta")) > 40
    fresh = await read_events(await client.get(url, headers=auth), until=lambda e: e.type == "reset")
    assert fresh.events[0].type == "reset" and json.loads(fresh.events[0].data) == {"reason": "trimmed"}
    assert fresh.events[0].last_event_id == second.ids[-1]
    stale = await read_events(
        await client.get(url, headers={**auth, "Last-Event-ID": oldest}), until=lambda e: e.type == "reset"
    )
    assert [e.type for e in stale.events] == ["reset"]
    assert json.loads(stale.events[0].data) == {"reason": "unknown_cursor"}
    # the snapshot still has the whole answer, and says where the stream continues
    history = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
    assert history["messages"][-1]["content"] == second.text()
    assert history["last_event_id"] == second.ids[-1]


async def test_every_key_of_a_conversation_expires_even_after_a_long_answer(client_factory: Any) -> None:
    from server.context import REDIS
    from wire.keys import ConversationKeys

    client = await client_factory()
    cid, auth = await create(client)
    stream = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    await post(client, cid, auth, " ".join(f"w{i}" for i in range(100)), max_tokens=200)
    await read_events(stream, within=20)
    stream.close()
    redis = client.app[REDIS]
    keys = ConversationKeys(cid)
    ttls = {key: await redis.ttl(key) for key in keys.all if await redis.exists(key)}
    assert keys.events in ttls and keys.state in ttls and keys.messages in ttls
    assert all(0 < ttl <= 86_400 for ttl in ttls.values()), ttls


@pytest.mark.parametrize(
    "error",
    [
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        SlotNotCoveredError("Slot 17 is not covered by the cluster"),
    ],
)
async def test_a_cluster_shard_failing_over_is_a_503_not_a_500(error: Exception) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise error

    request = make_mocked_request("GET", "/api/conversations/x")
    with pytest.raises(JSONError) as raised:
        await guarded(handler)(request)
    assert raised.value.status == 503 and raised.value.headers["Retry-After"] == "1"
