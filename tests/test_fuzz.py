"""10,000 generated requests across every endpoint, header and cursor shape, to every kind of node.

Hypothesis generates them (derandomized: the same run every time, bounded): methods, paths with
real, forged and malformed ids, tokens right, wrong, expired-looking and binary, cursors of every
shape, origins, content types, and bodies from valid JSON to deep nesting and raw bytes, always as
well-formed HTTP (malformed HTTP is answered by the HTTP parser before the API). Every answer must
be below 500, and every error a JSON document; the node's log must stay small.
"""

import contextlib
import http.client
import json
import os
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launch.processes import RedisClusterServers, RedisServer, free_port, wait_for_port
from tests.conftest import ROOT, SECRET, Proc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # slow: the 10,000 generated requests on four kinds of node

EXAMPLES = 10_000


@dataclass
class Target:
    port: int
    conversations: list[tuple[str, str]]
    node: Proc
    seen: dict[int, int]


KINDS = ["embedded-redis-server", "embedded-fakeredis", "redis", "cluster"]
"""Every kind of node: the README's command on either embedded broker, on a Redis, on a Redis Cluster."""


@contextlib.contextmanager
def broker(kind: str) -> Iterator[dict[str, str]]:
    """The environment that points a node at ``kind``'s broker, for as long as the broker lives."""
    if kind.startswith("embedded-"):
        yield {"STREAMFAN_EMBEDDED_BROKER": kind.removeprefix("embedded-")}
        return
    servers: RedisServer | RedisClusterServers = RedisServer() if kind == "redis" else RedisClusterServers(3, 0)
    servers.start()
    try:
        yield {"REDIS_URL": servers.url}
    finally:
        servers.remove()


@contextlib.contextmanager
def node_process(env: dict[str, str], log: Path) -> Iterator[Proc]:
    """``python -m server`` on a free port with ``env`` (over this process's), stopped after."""
    port = free_port()
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port)],
            env={**os.environ, "STREAMFAN_SECRET": SECRET.decode(), **env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    node = Proc("fuzz-node", popen, port, log)
    try:
        wait_for_port(port, proc=popen)
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module", params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    log = tmp_path_factory.mktemp("fuzz") / "node.log"
    with broker(request.param) as where:
        env = {**where, "STREAMFAN_MAX_BODY_BYTES": "8192", "STREAMFAN_GENERATOR": "echo"}
        with node_process(env, log) as node:
            conversations = []
            for _ in range(3):
                _, _, created = send(node.port, "POST", "/api/conversations", {}, None)
                body = json.loads(created)
                conversations.append((body["id"], body["token"]))
            yield Target(node.port, conversations, node, {})


ID_CHARS = string.ascii_letters + string.digits + "-_"
text = st.text(max_size=40)
binary_text = st.binary(max_size=30).map(lambda b: b.decode("latin-1"))
ids = st.one_of(st.text(ID_CHARS, min_size=16, max_size=64), text, st.just("x" * 65))
cursors = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 2**70), st.integers(0, 2**70)),
    st.sampled_from(["0-0", "", "-", "1-", "-1", "1-1-1", " 1-1", "18446744073709551616-0", "\u0663-\u0661"]),
    text,
)
static_names = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["index.html\x00.js", "\x00", "js/app.js", "js/%00", "vendor/", "..%2f..%2fREADME.md", "a" * 300]),
    st.builds(lambda a, b: f"{a}\x00{b}", st.sampled_from(["js/app.js", "style.css", ""]), st.text(max_size=5)),
)
"""Paths under /static/: real files, traversal, NUL bytes (once a 500) and anything else."""
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(
        lambda c, m, k: json.dumps({"content": c, "max_tokens": m, "client_message_id": k}).encode(),
        st.one_of(text, st.just("\ud800x"), st.just("")),
        st.one_of(st.integers(-5, 10**7), st.text(max_size=5), st.booleans()),
        st.one_of(st.none(), text),
    ),
    st.binary(max_size=200),
    st.integers(1, 6000).map(lambda n: b"[" * n + b"]" * n),
    st.just(b"x" * 9000),
)


@st.composite
def requests(draw: st.DrawFn, conversations: list[tuple[str, str]]) -> tuple[str, str, dict[str, str], bytes | None]:
    real = draw(st.sampled_from(conversations))
    cid = draw(st.one_of(st.just(real[0]), ids))
    suffix = draw(st.sampled_from(["", "/events", "/messages", "/cancel", "/nope"]))
    path = draw(
        st.one_of(
            st.just(f"/api/conversations/{cid}{suffix}"),
            st.sampled_from(["/api/conversations", "/", "/c/" + real[0], "/healthz", "/readyz", "/static/style.css"]),
            st.sampled_from(["/static/../README.md", "/static/%2e%2e/pyproject.toml", "/metrics", "/x" * 20]),
            st.builds(lambda name: "/static/" + name, static_names),
        )
    )
    method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD", "PATCH"]))
    headers: dict[str, str] = {}
    token = draw(
        st.one_of(
            st.none(),
            st.just(real[1]),
            st.sampled_from([t for _, t in conversations]),
            st.just(real[1][:-2] + "xx"),
            st.just(real[0] + ":7." + real[1].split(".", 1)[1]),
            binary_text,
        )
    )
    if token is not None:
        where = draw(st.sampled_from(["bearer", "cookie", "scheme"]))
        if where == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        elif where == "cookie":
            headers["Cookie"] = f"streamfan_token={token}"
        else:
            headers["Authorization"] = draw(st.sampled_from(["Basic abc", "Bearer", "bearer  ", token]))
    if draw(st.booleans()):
        headers["Last-Event-ID"] = draw(cursors)
    if draw(st.booleans()):
        headers["Origin"] = draw(st.sampled_from(["http://127.0.0.1", "https://evil.example", "null", ""]))
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "multipart/form-data", ""]))
    for name in draw(
        st.lists(st.sampled_from(["X-Forwarded-For", "X-Forwarded-Proto", "Idempotency-Key"]), max_size=2)
    ):
        headers[name] = draw(binary_text)
    body = draw(st.one_of(st.none(), bodies)) if method in ("POST", "PUT", "PATCH", "DELETE") else None
    return method, path, headers, body


def send(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None, *, whole_streams: bool = False
) -> tuple[int, str, bytes]:
    """One request as well-formed HTTP; an accepted event stream is read to its end only if
    ``whole_streams`` (the native streams never end)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20 if whole_streams else 10)
    try:
        conn.putrequest(method, quote(path, safe="/%:@-._~!$&'()*+,;=?"), skip_accept_encoding=True)
        for name, value in headers.items():
            # Valid HTTP only: control characters make the HTTP parser itself answer a plain 400 before
            # any handler runs (that is the protocol layer, not the API).
            clean = "".join(ch for ch in value if ch >= " " and ch != "\x7f").strip()
            conn.putheader(name, clean.encode("latin-1", "replace"))
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        content_type = response.getheader("Content-Type", "")
        streaming = content_type.startswith("text/event-stream") and not whole_streams
        data = b"" if streaming or method == "HEAD" else response.read()
        return response.status, content_type, data
    finally:
        conn.close()


def run(target: Target, check: Callable[[int, str, bytes, str, str], None]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests(target.conversations))
    def one(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
        method, path, headers, body = request
        status, content_type, data = send(target.port, method, path, headers, body)
        target.seen[status] = target.seen.get(status, 0) + 1
        check(status, content_type, data, method, path)

    one()


def test_ten_thousand_generated_requests_get_no_5xx_and_only_json_errors(target: Target) -> None:
    def check(status: int, content_type: str, data: bytes, method: str, path: str) -> None:
        assert status < 500, (status, method, path, data[:200])
        if status >= 400 and method != "HEAD":
            assert content_type.startswith("application/json"), (status, method, path, content_type)
            assert "error" in json.loads(data), (method, path)

    run(target, check)
    assert sum(target.seen.values()) >= EXAMPLES
    assert {200, 400, 401, 404} <= set(target.seen), target.seen
    log = target.node.log.read_text(errors="replace")
    assert "Traceback" not in log and len(log) < 50_000, log[-2000:]
