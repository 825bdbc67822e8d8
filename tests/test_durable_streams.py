"""Durable Streams over HTTP (issue 25): create, append (idempotent producers), close, catch-up,
long-poll and SSE reads, forks, access, HEAD and DELETE on an embedded node; every refusal a JSON
4xx, readable cross-origin; off unless configured.

Longer than 300 lines: one test per rule of the protocol as the node serves it, sharing the
in-process node and its SSE parsing; the official suite (``test_durable_conformance``) covers the
protocol's letter, these the node's own choices (access, bounds, shared reads).
"""

import asyncio
import base64
import json
import random
import socket
from typing import Any

import pytest

from server.context import HUB
from server.durable_store import DurableStore
from tests.conftest import node_settings
from wire import durable
from wire.durable import DurableKeys

URL = "/v1/stream/chat/room-1"
KEY = "k" * 32
JSON = {"Content-Type": "application/json"}


async def open_node(client_factory: Any, mode: str = "open") -> Any:
    settings = node_settings(
        durable_streams=mode, api_keys=(KEY,), durable_long_poll_seconds=0.2, durable_sse_seconds=1
    )
    return await client_factory(settings)


async def test_the_endpoints_are_off_unless_configured_and_keyed_when_asked(client_factory: Any) -> None:
    client = await client_factory(node_settings())
    response = await client.put(URL, headers=JSON)
    assert response.status == 404 and (await response.json())["error"] == "not_found"
    keyed = await open_node(client_factory, "keys")
    for method in ("PUT", "POST", "GET", "HEAD", "DELETE"):
        response = await keyed.request(method, URL, headers=JSON, data=b"{}")
        assert response.status == 401, method
    response = await keyed.put(URL, headers={**JSON, "Authorization": f"Bearer {KEY}"})
    assert response.status == 201


async def test_create_append_and_read_a_json_stream(client_factory: Any) -> None:
    client = await open_node(client_factory)
    created = await client.put(URL, headers=JSON, data=b'[{"n":1}]')
    assert created.status == 201 and created.headers["Location"].endswith(URL)
    assert (await client.put(URL, headers=JSON)).status == 200  # same configuration: idempotent
    assert (await client.put(URL, headers={"Content-Type": "text/plain"})).status == 409
    appended = await client.post(URL, headers=JSON, data=b'[{"n":2},{"n":3}]')  # one level flattened
    assert appended.status == 204
    tail = appended.headers["Stream-Next-Offset"]
    everything = await client.get(URL)
    assert await everything.json() == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert everything.headers["Stream-Next-Offset"] == tail and everything.headers["Stream-Up-To-Date"] == "true"
    again = await client.get(URL, headers={"If-None-Match": everything.headers["ETag"]})
    assert again.status == 304
    first = created.headers["Stream-Next-Offset"]
    rest = await client.get(URL, params={"offset": first})
    assert await rest.json() == [{"n": 2}, {"n": 3}]
    now = await client.get(URL, params={"offset": "now"})
    assert await now.json() == [] and now.headers["Stream-Next-Offset"] == tail
    head = await client.head(URL)
    assert head.status == 200 and head.headers["Stream-Next-Offset"] == tail
    assert head.headers["Cache-Control"] == "no-store"
    assert (await client.delete(URL)).status == 204
    assert (await client.get(URL)).status == 404


async def test_an_idempotent_producer_over_http(client_factory: Any) -> None:
    client = await open_node(client_factory)
    await client.put(URL, headers={"Content-Type": "text/plain"})

    async def send(epoch: int, seq: int, body: bytes) -> Any:
        headers = {
            "Content-Type": "text/plain",
            "Producer-Id": "p",
            "Producer-Epoch": str(epoch),
            "Producer-Seq": str(seq),
        }
        return await client.post(URL, headers=headers, data=body)

    first = await send(0, 0, b"a")
    assert first.status == 200 and first.headers["Producer-Seq"] == "0"
    retry = await send(0, 0, b"a")  # the reply was lost: the same append again
    assert retry.status == 204 and retry.headers["Stream-Next-Offset"] == first.headers["Stream-Next-Offset"]
    gap = await send(0, 2, b"c")
    assert gap.status == 409 and gap.headers["Producer-Expected-Seq"] == "1"
    assert (await send(1, 0, b"b")).status == 200
    zombie = await send(0, 1, b"z")
    assert zombie.status == 403 and zombie.headers["Producer-Epoch"] == "1"
    assert await (await client.get(URL)).read() == b"ab"


@pytest.mark.parametrize(
    ("method", "headers", "body", "status"),
    [
        ("POST", {"Content-Type": ""}, b"x", 400),  # no Content-Type
        ("POST", {"Content-Type": "application/json"}, b"", 400),  # empty body
        ("POST", {"Content-Type": "application/json"}, b"[]", 400),  # an empty array appends nothing
        ("POST", {"Content-Type": "application/json"}, b"{nope", 400),
        ("POST", {"Content-Type": "text/plain"}, b"x", 409),  # not the stream's type
        ("POST", {"Content-Type": "application/json", "Producer-Id": "p"}, b"{}", 400),  # not all three
        (
            "POST",
            {"Content-Type": "application/json", "Producer-Id": "p", "Producer-Epoch": "01", "Producer-Seq": "0"},
            b"{}",
            400,
        ),
        ("PUT", {"Stream-TTL": "60", "Stream-Expires-At": "2030-01-01T00:00:00Z"}, b"", 400),
        ("PUT", {"Stream-TTL": "+60"}, b"", 400),
        ("PUT", {"Stream-Expires-At": "tomorrow"}, b"", 400),
        ("GET", {}, b"", 200),
    ],
)
async def test_every_bad_request_is_a_json_4xx(
    client_factory: Any, method: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    client = await open_node(client_factory)
    await client.put(URL, headers=JSON)
    target = URL if method != "PUT" else URL + "-new"
    response = await client.request(method, target, headers=headers, data=body)
    assert response.status == status
    if status >= 400:
        assert (await response.json())["message"]


async def test_a_long_poll_answers_at_once_when_data_waits_else_when_it_comes(client_factory: Any) -> None:
    """Long-poll readers wait on the node's one subscription to the stream and are woken by an
    append (from any node); with nothing, they get a 204 at the tail once the wait is over."""
    client = await client_factory(node_settings(durable_streams="open", durable_long_poll_seconds=10))
    await client.put(URL, headers=JSON, data=b'[{"n":1}]')
    waiting = await client.get(URL, params={"offset": durable.START_OFFSET, "live": "long-poll"})
    assert await waiting.json() == [{"n": 1}] and waiting.headers["Stream-Cursor"].isdigit()
    tail = waiting.headers["Stream-Next-Offset"]

    async def append_soon() -> None:
        await asyncio.sleep(0.2)
        assert (await client.post(URL, headers=JSON, data=b'{"n":2}')).status == 204

    for offset in (tail, "now"):
        appender = asyncio.create_task(append_soon())
        woken = await client.get(URL, params={"offset": offset, "live": "long-poll"})
        await appender
        assert woken.status == 200 and (await woken.json())[-1]["n"] == 2
        assert woken.headers["Stream-Up-To-Date"] == "true"
        tail = woken.headers["Stream-Next-Offset"]
    hub = client.server.app[HUB]
    assert hub.durable.get(DurableKeys(URL.removeprefix("/v1/stream/")).channel.encode()) is not None


async def test_a_long_poll_with_nothing_new_ends_with_a_204_at_the_tail(client_factory: Any) -> None:
    client = await client_factory(node_settings(durable_streams="open", durable_long_poll_seconds=0.3))
    created = await client.put(URL, headers=JSON, data=b"[1]")
    for offset in (created.headers["Stream-Next-Offset"], "now"):
        response = await client.get(URL, params={"offset": offset, "live": "long-poll", "cursor": "99999999"})
        assert response.status == 204 and response.headers["Stream-Up-To-Date"] == "true"
        assert response.headers["Stream-Next-Offset"] == created.headers["Stream-Next-Offset"]
        assert int(response.headers["Stream-Cursor"]) > 99999999  # never back, past the client's own


async def test_live_reads_refuse_what_they_cannot_serve(client_factory: Any) -> None:
    client = await open_node(client_factory)
    await client.put(URL, headers=JSON)
    assert (await client.get(URL, params={"offset": "12-0"})).status == 400
    assert (await client.get(URL, params={"live": "long-poll"})).status == 400  # a live read needs an offset
    assert (await client.get(URL, params={"live": "sse"})).status == 400
    assert (await client.get("/v1/stream/nowhere", params={"offset": "-1", "live": "sse"})).status == 404
    assert (await client.get("/v1/stream/nowhere", params={"offset": "now", "live": "long-poll"})).status == 404
    assert (await client.post("/v1/stream/nowhere", headers=JSON, data=b"{}")).status == 404


async def test_generated_requests_never_answer_5xx(client_factory: Any) -> None:
    """Random methods, paths, offsets, headers and bodies: every answer is below 500, errors JSON."""
    rng = random.Random(25)
    client = await open_node(client_factory)
    paths = ["/v1/stream/a", "/v1/stream/a/b", "/v1/stream/%F0%9F%9A%80", "/v1/stream/" + "x" * 1100, "/v1/stream/%00"]
    kinds = ["application/json", "text/plain", "application/octet-stream", "", "application/json; charset=utf-8"]
    bodies = [b"", b"{}", b"[]", b"[[1]]", b"\xff\xfe", b"x" * 5000, b'{"a":', b"[1,2,3]", b"null"]
    values = ["0", "1", "-1", "01", "9007199254740992", "x", "", "now", durable.START_OFFSET]
    for _ in range(400):
        method = rng.choice(["PUT", "POST", "GET", "HEAD", "DELETE"])
        headers = {"Content-Type": rng.choice(kinds)}
        for name in ("Stream-TTL", "Stream-Expires-At", "Stream-Seq", "Producer-Id", "Producer-Epoch", "Producer-Seq"):
            if rng.random() < 0.3:
                headers[name] = rng.choice(values)
        for name in ("Stream-Closed", "Stream-Forked-From", "Stream-Fork-Offset", "Stream-Fork-Sub-Offset"):
            if rng.random() < 0.15:
                headers[name] = rng.choice([*values, "true", "/v1/stream/a", "/v1/stream/", "http://x/v1/stream/a/b"])
        params = {}
        if rng.random() < 0.7:
            params["offset"] = rng.choice(values)
        if rng.random() < 0.2:
            params["live"] = rng.choice(["long-poll", "sse", "x"])
        response = await client.request(
            method, rng.choice(paths), headers=headers, params=params, data=rng.choice(bodies)
        )
        assert response.status < 500, (method, headers, params, response.status, await response.text())
        if response.status >= 400 and method != "HEAD":
            assert (await response.json())["message"]


async def test_bodies_are_bounded_by_their_own_limit_and_head_tells_the_ttl(client_factory: Any) -> None:
    """A Durable Stream's message may exceed the native API's 64 KiB (the suite appends 100 KiB), up
    to ``STREAMFAN_DURABLE_MAX_BODY_BYTES``; HEAD says the TTL left and the expiry as created."""
    client = await client_factory(node_settings(durable_streams="open", durable_max_body_bytes=200 * 1024))
    created = await client.put(URL, headers={"Content-Type": "application/octet-stream", "Stream-TTL": "3600"})
    assert created.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    big = bytes(range(256)) * 400  # 100 KiB
    assert (await client.post(URL, headers={"Content-Type": "application/octet-stream"}, data=big)).status == 204
    assert await (await client.get(URL)).read() == big
    too_big = await client.post(URL, headers={"Content-Type": "application/octet-stream"}, data=big * 3)
    assert too_big.status == 413 and (await too_big.json())["error"] == "payload_too_large"
    head = await client.head(URL)
    assert 3590 <= int(head.headers["Stream-TTL"]) <= 3600
    at = "2099-01-01T00:00:00Z"
    await client.put(URL + "-at", headers={"Stream-Expires-At": at})
    assert (await client.head(URL + "-at")).headers["Stream-Expires-At"] == at


def sse_events(text: str) -> list[tuple[str, str]]:
    """``(event, data)`` pairs of an SSE body, data lines joined with LF as EventSource does."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        kind = next((line[6:].strip() for line in lines if line.startswith("event:")), "")
        if kind:
            events.append((kind, "\n".join(line[5:] for line in lines if line.startswith("data:"))))
    return events


async def test_sse_sends_each_read_as_a_data_event_and_its_control_event(client_factory: Any) -> None:
    """Text line by line (a CR, LF or CRLF in a message cannot forge an event), JSON as one array per
    read, any other type in base64; then the live tail, woken by an append."""
    client = await open_node(client_factory)
    text = {"Content-Type": "text/plain"}
    forged = "one\r\n\r\nevent: control\rdata: {}\n\nend"
    await client.put(URL, headers=text, data=forged.encode())
    response = await client.get(URL, params={"offset": "-1", "live": "sse"})
    assert response.headers["Content-Type"] == "text/event-stream" and "Content-Length" not in response.headers
    first = await response.content.readuntil(b"\n\n")
    control = await response.content.readuntil(b"\n\n")
    [(kind, data)] = sse_events(first.decode())
    assert kind == "data" and data == forged.replace("\r\n", "\n").replace("\r", "\n")
    [(kind, data)] = sse_events(control.decode())
    state = json.loads(data)
    assert kind == "control" and state["upToDate"] is True and state["streamCursor"].isdigit()
    appended = await client.post(URL, headers=text, data=b"two")
    live = (await response.content.readuntil(b"\n\n")) + await response.content.readuntil(b"\n\n")
    (_, data), (_, control_data) = sse_events(live.decode())
    assert data == "two" and json.loads(control_data)["streamNextOffset"] == appended.headers["Stream-Next-Offset"]
    response.close()

    await client.put("/v1/stream/j", headers=JSON, data=b'[{"n":1}]')
    await client.post("/v1/stream/j", headers=JSON, data=b'[{"n":2}]')
    body = await (await client.get("/v1/stream/j", params={"offset": "-1", "live": "sse"})).text()
    events = sse_events(body)  # the response ends after STREAMFAN_DURABLE_SSE_SECONDS
    assert [kind for kind, _ in events] == ["data", "control"] and json.loads(events[0][1]) == [{"n": 1}, {"n": 2}]

    binary = {"Content-Type": "application/octet-stream"}
    await client.put("/v1/stream/b", headers=binary, data=b"\x00\n\r\xff")
    response = await client.get("/v1/stream/b", params={"offset": "now", "live": "sse"})
    assert response.headers["Stream-SSE-Data-Encoding"] == "base64"
    [(kind, data)] = sse_events((await response.content.readuntil(b"\n\n")).decode())
    assert kind == "control" and json.loads(data)["upToDate"] is True  # now: no history
    await client.post("/v1/stream/b", headers=binary, data=b"\x01\x02")
    [(kind, data)] = sse_events((await response.content.readuntil(b"\n\n")).decode())
    assert kind == "data" and base64.b64decode(data) == b"\x01\x02"
    response.close()


async def test_a_closed_stream_refuses_appends_and_every_reader_sees_its_end(client_factory: Any) -> None:
    client = await open_node(client_factory)
    text = {"Content-Type": "text/plain"}
    await client.put(URL, headers=text, data=b"a")
    sse = await client.get(URL, params={"offset": "-1", "live": "sse"})
    producer = {"Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": "0"}
    closed = await client.post(URL, headers={**text, **producer, "Stream-Closed": "true"}, data=b"b")
    assert closed.status == 200 and closed.headers["Stream-Closed"] == "true"
    tail = closed.headers["Stream-Next-Offset"]
    events = sse_events(await sse.text())  # the stream's end ends the response
    assert "".join(data for kind, data in events if kind == "data") == "ab"
    assert json.loads(events[-1][1]) == {"streamNextOffset": tail, "streamClosed": True, "upToDate": True}
    refused = await client.post(URL, headers=text, data=b"c")
    assert refused.status == 409 and refused.headers["Stream-Closed"] == "true"
    assert refused.headers["Stream-Next-Offset"] == tail and (await refused.json())["error"] == "stream_closed"
    again = await client.post(URL, headers={**text, **producer, "Stream-Closed": "true"}, data=b"b")
    assert again.status == 204  # the same close, retried: a duplicate
    assert (await client.post(URL, headers={"Stream-Closed": "true"})).status == 204  # closing again
    poll = await client.get(URL, params={"offset": tail, "live": "long-poll"})
    assert poll.status == 204 and poll.headers["Stream-Closed"] == "true"  # at once: nothing will come
    read = await client.get(URL)
    assert await read.text() == "ab" and read.headers["Stream-Closed"] == "true"
    assert (await client.head(URL)).headers["Stream-Closed"] == "true"
    assert (await client.post(URL, headers=text)).status == 400  # no body and no close: nothing to do


async def test_any_origin_may_call_and_read_every_answer_but_without_credentials(client_factory: Any) -> None:
    client = await open_node(client_factory)
    preflight = await client.options(
        URL,
        headers={
            "Origin": "https://elsewhere.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-none-match",
        },
    )
    assert preflight.status == 204 and "If-None-Match" in preflight.headers["Access-Control-Allow-Headers"]
    missing = await client.get(URL, headers={"Origin": "https://elsewhere.example"})
    assert missing.status == 404 and missing.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in missing.headers
    await client.put(URL, headers=JSON)
    read = await client.get(URL, headers={"Origin": "https://elsewhere.example"})
    assert "Stream-Next-Offset" in read.headers["Access-Control-Expose-Headers"]


async def test_a_fork_inherits_up_to_its_offset_and_keeps_a_deleted_source_until_it_goes(client_factory: Any) -> None:
    """A fork copies its source's messages (offsets and all) up to the fork offset, cut at a
    sub-offset, then lives on its own; a source deleted while forks of it live is gone (410) and
    collected with its last fork."""
    client = await open_node(client_factory)
    text = {"Content-Type": "text/plain"}
    first = await client.put("/v1/stream/src", headers=text, data=b"hello")
    await client.post("/v1/stream/src", headers=text, data=b" world")
    fork = {"Stream-Forked-From": "/v1/stream/src", "Stream-Fork-Offset": first.headers["Stream-Next-Offset"]}
    untyped = {"skip_auto_headers": ["Content-Type"]}  # no Content-Type: the fork inherits its source's
    made = await client.put("/v1/stream/fork", headers={**fork, "Stream-Fork-Sub-Offset": "3"}, **untyped)
    assert made.status == 201 and made.headers["Content-Type"] == "text/plain"
    assert (await client.post("/v1/stream/fork", headers=text, data=b"!")).status == 204
    assert await (await client.get("/v1/stream/fork")).text() == "hello wo!"
    again = await client.put("/v1/stream/fork", headers={**fork, "Stream-Fork-Sub-Offset": "3"}, **untyped)
    assert again.status == 200  # the same fork again
    other = await client.put("/v1/stream/fork", headers={**fork, "Stream-Fork-Sub-Offset": "2"}, **untyped)
    assert other.status == 409
    rest = await client.get("/v1/stream/fork", params={"offset": first.headers["Stream-Next-Offset"]})
    assert await rest.text() == " wo!"  # the source's offset means the same place in the fork
    await client.post("/v1/stream/src", headers=text, data=b"?")
    assert await (await client.get("/v1/stream/fork")).text() == "hello wo!"  # the source's later appends stay there

    assert (
        await client.put("/v1/stream/f2", headers={"Stream-Forked-From": "/v1/stream/none"}, **untyped)
    ).status == 404
    mismatch = await client.put("/v1/stream/f2", headers={"Stream-Forked-From": "/v1/stream/src", **JSON})
    assert mismatch.status == 409
    beyond = {"Stream-Forked-From": "/v1/stream/src", "Stream-Fork-Offset": "ffffffffffffffff_ffffffffffffffff"}
    assert (await client.put("/v1/stream/f2", headers=beyond, **untyped)).status == 400
    assert (await client.put("/v1/stream/f2", headers={"Stream-Fork-Sub-Offset": "0"})).status == 400

    assert (await client.delete("/v1/stream/src")).status == 204
    assert (await client.get("/v1/stream/src")).status == 410  # kept for its fork, but gone
    assert (await client.put("/v1/stream/src", headers=text)).status == 409
    assert (
        await client.put("/v1/stream/f3", headers={"Stream-Forked-From": "/v1/stream/src"}, **untyped)
    ).status == 409
    assert (await client.delete("/v1/stream/fork")).status == 204
    assert (await client.head("/v1/stream/src")).status == 404  # collected with its last fork


async def test_with_keys_writers_need_a_key_and_readers_the_stream_s_token_unless_it_is_public(
    client_factory: Any,
) -> None:
    client = await open_node(client_factory, "keys")
    key = {"Authorization": f"Bearer {KEY}"}
    created = await client.put(URL, headers={**JSON, **key}, data=b'[{"n":1}]')
    token = created.headers["Stream-Read-Token"]
    reader = {"Authorization": f"Bearer {token}"}
    assert (await client.get(URL)).status == 401
    assert (await client.get(URL, headers={"Authorization": "Bearer forged"})).status == 401
    assert await (await client.get(URL, headers=reader)).json() == [{"n": 1}]
    assert (await client.head(URL, headers=reader)).status == 200
    live = await client.get(URL, headers=reader, params={"offset": "-1", "live": "long-poll"})
    assert await live.json() == [{"n": 1}]
    assert (await client.post(URL, headers={**JSON, **reader}, data=b"{}")).status == 401  # reads only
    assert (await client.delete(URL, headers=reader)).status == 401
    other = await client.put(URL + "-other", headers={**JSON, **key})
    assert other.headers["Stream-Read-Token"] != token
    assert (await client.get(URL + "-other", headers=reader)).status == 401  # one stream's token
    assert (await client.get("/v1/stream/nowhere")).status == 401  # which paths exist is not told
    assert (await client.get("/v1/stream/nowhere", headers=key)).status == 404

    await client.put("/v1/stream/public", headers={**JSON, **key, "Stream-Public": "true"}, data=b"[1]")
    assert await (await client.get("/v1/stream/public")).json() == [1]
    sse = await client.get("/v1/stream/public", params={"offset": "-1", "live": "sse"})
    assert sse.status == 200
    sse.close()
    assert (await client.post("/v1/stream/public", headers=JSON, data=b"2")).status == 401


async def test_an_sse_reader_that_takes_nothing_pins_one_read_and_is_cut_off(client_factory: Any) -> None:
    """A reader that never reads holds at most one read's bytes in the node (the next read waits for
    the socket) and is dropped after STREAMFAN_SEND_TIMEOUT_SECONDS; it would resume by offset."""
    settings = node_settings(durable_streams="open", send_timeout_seconds=1, durable_sse_seconds=30)
    client = await client_factory(settings)
    text = {"Content-Type": "text/plain"}
    await client.put(URL, headers=text)
    chunk = b"x" * 250_000
    for _ in range(48):  # 12 MB: far more than the socket buffers hold
        await client.post(URL, headers=text, data=chunk)
    host, port = client.server.host, client.server.port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    request = f"GET {URL}?offset=-1&live=sse HTTP/1.1\r\nHost: {host}\r\n\r\n"
    writer.write(request.encode())
    await writer.drain()
    await asyncio.sleep(2.5)  # a client that reads nothing (past the 64 KiB its StreamReader buffers)
    received = 0
    async with asyncio.timeout(10):
        while data := await reader.read(1 << 16):
            received += len(data)
    assert received < 48 * len(chunk) // 2  # cut off long before the stream's end
    writer.close()


async def test_readers_woken_together_share_one_read(client_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broadcast: 20 SSE readers at a stream's tail cost one read of the stream per append, not
    one each (each reader still gets every message)."""
    client = await open_node(client_factory)
    reads = 0
    original = DurableStore.read

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(DurableStore, "read", counted)
    text = {"Content-Type": "text/plain"}
    await client.put(URL, headers=text)
    readers = [await client.get(URL, params={"offset": "now", "live": "sse"}) for _ in range(20)]
    for reader in readers:
        await reader.content.readuntil(b"\n\n")  # the first control event: at the tail
    before = reads
    await client.post(URL, headers=text, data=b"to everyone")
    for reader in readers:
        data = await reader.content.readuntil(b"\n\n")
        assert sse_events(data.decode()) == [("data", "to everyone")]
    assert reads - before <= 2  # one shared read (two if a wake-up raced the first)
    for reader in readers:
        reader.close()
