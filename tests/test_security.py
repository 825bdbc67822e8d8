"""Safe on the open internet: tokens that expire, rotate and revoke; limits; every bad input a JSON 4xx."""

import asyncio
import hashlib
import json
import time
from typing import Any

from itsdangerous import TimestampSigner

from server.auth import Tokens
from tests.conftest import SECRET, fast_producer, node_settings
from tests.test_api import create, post

OPEN = node_settings(limits_exempt=())
"""Limits apply to the test client too (it connects from loopback, exempt by default)."""


async def test_a_cursor_beyond_64_bits_is_a_400_not_an_endless_reconnect(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    for cursor in ("99999999999999999999-0", "18446744073709551616-0", "1-18446744073709551616", "\u0661-\u0662"):
        resp = await client.get(f"/api/conversations/{cid}/events", headers={**auth, "Last-Event-ID": cursor})
        assert resp.status == 400 and (await resp.json())["error"] == "bad_cursor", cursor
    resp = await client.get(
        f"/api/conversations/{cid}/events", headers={**auth, "Last-Event-ID": "18446744073709551615-0"}
    )
    assert resp.status == 200  # the largest id a stream can have is still a cursor
    resp.close()


async def test_every_authorized_use_refreshes_the_cookie_and_the_token(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    resp = await client.get(f"/api/conversations/{cid}", headers=auth)
    body = await resp.json()
    cookie = resp.cookies["streamfan_token"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == f"/api/conversations/{cid}"
    assert int(cookie["max-age"]) == 86400 and body["token"].startswith(cid + ":0.")
    events = await client.get(f"/api/conversations/{cid}/events")  # a browser: the cookie is the credential
    assert "streamfan_token" in events.cookies
    events.close()
    api_client = await client.get(f"/api/conversations/{cid}/events", headers=auth)  # keeps its own token
    assert api_client.status == 200 and "streamfan_token" not in api_client.cookies
    api_client.close()


async def test_expired_rotated_and_revoked_tokens(client_factory: Any) -> None:
    client = await client_factory(settings=node_settings(previous_secrets=(b"an-older-secret-0123456789",)))
    cid, auth = await create(client)
    # Issued two days ago: expired, and said so (401, not 404), so a page can tell it from "gone".
    old = TimestampSigner([SECRET], salt="streamfan.conversation.v2", digest_method=hashlib.sha256)
    old.get_timestamp = lambda: int(time.time()) - 2 * 86400  # type: ignore[method-assign]
    resp = await client.get(
        f"/api/conversations/{cid}", headers={"Authorization": f"Bearer {old.sign(cid + ':0').decode()}"}
    )
    assert resp.status == 401 and (await resp.json())["error"] == "token_expired"
    # Signed with the previous secret: still valid during a rotation.
    rotated = Tokens([b"an-older-secret-0123456789"], 3600).issue(cid)
    resp = await client.get(f"/api/conversations/{cid}", headers={"Authorization": f"Bearer {rotated}"})
    assert resp.status == 200
    # A token for another conversation, or forged, is a 404.
    other, _ = await create(client)
    resp = await client.get(f"/api/conversations/{other}", headers=auth)
    assert resp.status == 404
    # DELETE revokes every token of the conversation and deletes it.
    await post(client, cid, auth, "soon gone")
    resp = await client.delete(f"/api/conversations/{cid}", headers=auth)
    assert resp.status == 204
    for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/messages"), ("DELETE", "")):
        resp = await client.request(method, f"/api/conversations/{cid}{path}", headers=auth, json={"content": "x"})
        assert resp.status == 404 and (await resp.json())["error"] == "not_found", (method, path)


async def test_hostile_bodies_and_headers_are_json_4xx_never_500(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    url = f"/api/conversations/{cid}/messages"
    json_headers = {**auth, "Content-Type": "application/json"}
    cases = [
        (b'{"content": "\\ud800 lone surrogate"}', 400, "bad_field"),
        (b'{"content": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 413, "payload_too_large"),
        (b"[" * 5000 + b"]" * 5000, 400, "bad_json"),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, 400, "bad_json"),
    ]
    for body, status, code in cases:
        resp = await client.post(url, data=body, headers=json_headers)
        assert resp.status == status and (await resp.json())["error"] == code, body[:30]
    create_deep = await client.post("/api/conversations", data=b"[" * 5000 + b"]" * 5000)
    assert create_deep.status == 400
    client.session.cookie_jar.clear()
    for headers in ({"Authorization": "Bearer \udcff\udcfe"}, {"Cookie": "streamfan_token=\udcff"}):
        raw = {k: v.encode("utf-8", "surrogateescape").decode("latin-1") for k, v in headers.items()}
        resp = await client.get(f"/api/conversations/{cid}/events", headers=raw)
        assert resp.status in (401, 404) and resp.headers["Content-Type"].startswith("application/json")
    checks = [
        (
            "OPTIONS",
            "/api/conversations",
            {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            403,
        ),
        ("HEAD", f"/api/conversations/{cid}/events", auth, 405),
        ("GET", "/static/nope.js", {}, 404),
        ("GET", "/static/../server/app.py", {}, 404),
        ("GET", "/static/%2e%2e/server/app.py", {}, 404),
    ]
    for method, path, headers, status in checks:
        resp = await client.request(method, path, headers=headers)
        assert resp.status == status, (method, path)
        if method != "HEAD":
            assert resp.headers["Content-Type"].startswith("application/json"), (method, path)


async def test_a_slow_body_gets_408(client_factory: Any) -> None:
    client = await client_factory(settings=node_settings(body_timeout_seconds=0.3))
    cid, auth = await create(client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = (
        f"POST /api/conversations/{cid}/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth['Authorization']}\r\nContent-Length: 100\r\n\r\n" + '{"content": '
    )
    writer.write(head.encode())
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408")


async def test_rates_and_stream_counts_are_limited_per_client_with_429(client_factory: Any) -> None:
    settings = node_settings(limits_exempt=(), creates_per_minute=6, posts_per_minute=3, streams_per_ip=3)
    client = await client_factory(settings=settings)
    statuses = []
    for _ in range(4):
        resp = await client.post("/api/conversations")
        statuses.append(resp.status)
    assert statuses == [201, 201, 429, 429]
    assert int(resp.headers["Retry-After"]) >= 1 and (await resp.json())["error"] == "rate_limited"


async def test_stream_caps_and_trusted_proxies(client_factory: Any) -> None:
    from server.peers import parse_networks

    settings = node_settings(limits_exempt=(), streams_per_ip=2, trusted_proxies=parse_networks("127.0.0.0/8"))
    client = await client_factory(settings=settings)
    cid, auth = await create(client)
    url = f"/api/conversations/{cid}/events"
    streams = [await client.get(url, headers=auth) for _ in range(2)]
    refused = await client.get(url, headers=auth)
    assert refused.status == 429 and (await refused.json())["error"] == "too_many_streams"
    # Behind a trusted proxy each forwarded client counts on its own.
    other = await client.get(url, headers={**auth, "X-Forwarded-For": "203.0.113.7"})
    assert other.status == 200
    for stream in [*streams, other]:
        stream.close()
    await asyncio.sleep(0.1)
    again = await client.get(url, headers=auth)  # a closed stream frees its place
    assert again.status == 200
    again.close()


async def test_forwarded_https_from_a_trusted_proxy_only_makes_the_cookie_secure(client_factory: Any) -> None:
    from server.peers import parse_networks

    trusting = await client_factory(settings=node_settings(trusted_proxies=parse_networks("127.0.0.1")))
    resp = await trusting.post("/api/conversations", headers={"X-Forwarded-Proto": "https"})
    assert resp.cookies["streamfan_token"]["secure"] and resp.headers["Strict-Transport-Security"]
    page = await trusting.get("/", headers={"X-Forwarded-Proto": "https"})  # the page too, not only the API
    assert page.status == 200 and page.headers["Strict-Transport-Security"] == "max-age=31536000"
    wary = await client_factory(settings=node_settings(trusted_proxies=()))
    resp = await wary.post("/api/conversations", headers={"X-Forwarded-Proto": "https"})
    assert not resp.cookies["streamfan_token"]["secure"] and "Strict-Transport-Security" not in resp.headers


async def test_the_message_list_is_capped_and_the_history_paginated(client_factory: Any) -> None:
    from dataclasses import replace

    from wire.env import Retention

    retention = replace(Retention(), max_messages=10)
    client = await client_factory(
        settings=node_settings(retention=retention), producer=fast_producer(retention=retention)
    )
    cid, auth = await create(client)
    events = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    for i in range(8):
        posted = await post(client, cid, auth, f"message {i}")
        async with asyncio.timeout(10):
            while True:
                body = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
                if body["active_response_id"] != posted["response_id"]:
                    break
                await asyncio.sleep(0.02)
    events.close()
    page = await (await client.get(f"/api/conversations/{cid}?limit=4", headers=auth)).json()
    assert page["total_messages"] == 10 and page["first_position"] == 6 and len(page["messages"]) == 4
    assert [m["content"] for m in page["messages"]] == ["message 6", "message 6", "message 7", "message 7"]
    older = await (await client.get(f"/api/conversations/{cid}?limit=4&before=6", headers=auth)).json()
    assert [m["content"] for m in older["messages"]] == ["message 4", "message 4", "message 5", "message 5"]
    for query in ("limit=0", "limit=5000", "before=-1", "limit=x"):
        resp = await client.get(f"/api/conversations/{cid}?{query}", headers=auth)
        assert resp.status == 400, query
    assert json.dumps(page)


def test_malformed_http_is_logged_in_one_line_but_a_handler_bug_keeps_its_traceback() -> None:
    import io
    import logging

    from aiohttp.http_exceptions import BadStatusLine

    from server.errors import QuietBadRequests

    out = io.StringIO()
    logger = logging.Logger("aiohttp.server.test")
    logger.addHandler(logging.StreamHandler(out))
    logger.addFilter(QuietBadRequests())
    for _ in range(1000):
        try:
            raise BadStatusLine("GET \x00 HTTP/1.1")
        except BadStatusLine:
            logger.error("Error handling request", exc_info=True)
    try:
        raise TypeError("a real bug")
    except TypeError:
        logger.error("Error handling request", exc_info=True)
    text = out.getvalue()
    assert text.count("bad request (BadStatusLine") == 1 and text.count("Traceback") == 1 and "a real bug" in text


async def test_the_openai_endpoints_bound_their_bodies_too(client_factory: Any) -> None:
    key = "sk-test-0123456789abcdef"
    client = await client_factory(settings=node_settings(body_timeout_seconds=0.3, api_keys=(key,)))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: 100\r\n\r\n" + '{"messages": '
        ).encode()
    )
    status = await asyncio.wait_for(reader.readline(), 5)
    body = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408")
    assert b'"type": "invalid_request_error"' in body  # in OpenAI's error format
