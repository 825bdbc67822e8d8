"""The compose topology as local processes: Redis, 2 producers, 3 nodes, and nginx in front.

Longer than 300 lines: every test here shares one real cluster (module fixture); a file per test
would start it once per file.
"""

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from launch.cluster import LocalCluster, render_template
from launch.processes import Member, RedisServer, free_port, wait_for_port
from tests.conftest import ROOT, SECRET, run_loadtest
from tests.sse_client import Received, assert_strictly_increasing, follow, node_metric, read_events, wait_for_sockets

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # slow: processes: a local cluster behind nginx

LONG = " ".join(f"word{i}" for i in range(120))
PACING = {
    "STREAMFAN_SIM_TTFT_MS": "50",
    "STREAMFAN_SIM_TOKENS_PER_SECOND": "60",
    "STREAMFAN_SIM_JITTER": "0",
    "STREAMFAN_HEARTBEAT_SECONDS": "1",
    "STREAMFAN_RETRY_MS": "200",
}


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(nodes=3, producers=2, env={**PACING, "STREAMFAN_GENERATOR": "echo"}, workdir=tmp_path)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        for log in sorted((tmp_path / "logs").glob("*.log")):
            if "Traceback" in log.read_text(errors="replace"):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def create(session: aiohttp.ClientSession, base: str) -> tuple[str, dict[str, str]]:
    async with session.post(f"{base}/api/conversations") as resp:
        assert resp.status == 201
        body = await resp.json()
    return body["id"], {"Authorization": f"Bearer {body['token']}"}


async def post(session: aiohttp.ClientSession, base: str, cid: str, auth: dict[str, str], content: str) -> str:
    url = f"{base}/api/conversations/{cid}/messages"
    async with session.post(url, json={"content": content, "max_tokens": 400}, headers=auth) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["response_id"])


async def stored_answer(session: aiohttp.ClientSession, base: str, cid: str, auth: dict[str, str]) -> str:
    async with session.get(f"{base}/api/conversations/{cid}", headers=auth) as resp:
        assert resp.status == 200
        body = await resp.json()
    return str(body["messages"][-1]["content"])


def test_the_load_tester_on_a_redis_cluster_loses_nothing(tmp_path: Path) -> None:
    """The same load, with a Redis Cluster of 3 primaries (and replicas) behind the nodes."""
    env = {**PACING, "STREAMFAN_GENERATOR": "echo"}
    cluster = LocalCluster(nodes=2, producers=2, env=env, workdir=tmp_path, redis_cluster=3)
    cluster.start()
    try:
        result, _ = run_loadtest(
            tmp_path,
            *("--url", cluster.url, "--clients", "90", "--conversations", "30", "--duration", "4"),
            *("--ramp-up", "0.5", "--max-tokens", "40"),
            timeout=90,
        )
    finally:
        cluster.stop()
    assert result["answers_done"] >= 30 and result["answers_mismatched"] == 0 and result["connect_errors"] == 0


def test_the_load_tester_through_nginx_loses_nothing(local_cluster: LocalCluster, tmp_path: Path) -> None:
    result, _ = run_loadtest(
        tmp_path,
        *("--url", local_cluster.url, "--clients", "90", "--conversations", "30", "--duration", "4"),
        *("--ramp-up", "0.5", "--max-tokens", "40"),
        timeout=90,
    )
    assert result["answers_done"] >= 30 and result["answers_mismatched"] == 0 and result["connect_errors"] == 0


NODE_UNAVAILABLE = {"error": "unavailable", "message": "the service is briefly unavailable; try again"}


async def test_redis_away_the_balancer_passes_on_the_nodes_503_and_keeps_every_node(
    local_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    """While Redis restarts, clients read the node's JSON 503 (never nginx's 502, nor the balancer's
    own "no node answered"), and once it is back every node serves at once: a 503 that every node
    would give takes none of them out of rotation."""
    # Conversations are balanced by their id: a dozen of them reach every node.
    conversations = [await create(session, local_cluster.url) for _ in range(12)]
    urls = [(f"{local_cluster.url}/api/conversations/{cid}", auth) for cid, auth in conversations]
    assert local_cluster.redis is not None
    local_cluster.redis.stop()
    try:
        for _ in range(2):
            for url, auth in urls:
                async with session.get(url, headers=auth) as resp:
                    assert resp.status == 503 and resp.headers["Retry-After"] == "1", resp.status
                    assert await resp.json() == NODE_UNAVAILABLE
    finally:
        local_cluster.redis.start()
    statuses = []
    for _ in range(3):
        for url, auth in urls:
            async with session.get(url, headers=auth) as resp:
                statuses.append(resp.status)
                if resp.status != 200:
                    assert await resp.json() == NODE_UNAVAILABLE  # a node reconnecting, never the balancer
    assert statuses[-len(urls) :] == [200] * len(urls), statuses


async def test_the_balancer_keeps_a_conversations_tabs_on_one_node(
    local_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    """Conversation-affine balancing: all tabs of a conversation share one node's subscription."""
    conversations = [await create(session, local_cluster.url) for _ in range(8)]
    streams = []
    for cid, auth in conversations:
        for _ in range(3):
            resp = await session.get(f"{local_cluster.url}/api/conversations/{cid}/events", headers=auth)
            assert resp.status == 200
            streams.append(resp)
    subscribed = 0.0
    for node in local_cluster.node_members:
        async with session.get(f"{node.url}/metrics") as r:
            subscribed += _sample(await r.text(), "streamfan_channels_subscribed")
    for resp in streams:
        resp.close()
    assert subscribed == len(conversations)  # spread at random, 24 tabs would subscribe ~17 times


async def test_metrics_on_every_node_and_producer_but_not_through_the_balancer(
    local_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    cid, auth = await create(session, local_cluster.url)
    resp = await session.get(f"{local_cluster.url}/api/conversations/{cid}/events", headers=auth)
    await post(session, local_cluster.url, cid, auth, "count me")
    await read_events(resp, within=10)
    resp.close()

    delivered = 0.0
    for node in local_cluster.node_members:
        async with session.get(f"{node.url}/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await r.text()
        for name in ("streamfan_connections_open", "streamfan_publish_to_write_seconds_bucket", "streamfan_replays"):
            assert name in text
        delivered += _sample(text, "streamfan_events_delivered_total")
    assert delivered >= 4  # user message, two words, done

    tokens = 0.0
    for producer in local_cluster.producer_members:
        async with session.get(f"{producer.url}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert "streamfan_producer_jobs_in_flight" in text
        tokens += _sample(text, "streamfan_producer_tokens_total")
    assert tokens == 2

    async with session.get(f"{local_cluster.url}/metrics") as r:
        assert r.status == 404


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


async def test_the_stream_through_nginx_is_not_buffered(
    local_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    cid, auth = await create(session, local_cluster.url)
    resp = await session.get(f"{local_cluster.url}/api/conversations/{cid}/events", headers=auth)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Encoding" not in resp.headers
    posted = await post(session, local_cluster.url, cid, auth, LONG)  # 120 words at 60/s: 2 s
    first = await read_events(resp, until=lambda e: e.type == "delta", within=10)
    # Streamed, not buffered: the first delta came through while the answer is still being written
    # (the history says which answer is active until it ends).
    async with session.get(f"{local_cluster.url}/api/conversations/{cid}", headers=auth) as history:
        assert (await history.json())["active_response_id"] == posted, "the first delta was held back until the end"
    rest = await read_events(resp, within=15)
    resp.close()
    assert first.of_type("delta") and rest.of_type("done")


async def _follow_all(
    session: aiohttp.ClientSession, cluster: LocalCluster, count: int
) -> tuple[str, dict[str, str], list[asyncio.Task[tuple[Received, int]]]]:
    cid, auth = await create(session, cluster.url)
    url = f"{cluster.url}/api/conversations/{cid}/events"
    tasks = [asyncio.create_task(follow(session, url, auth, within=40)) for _ in range(count)]
    # Every follower connected (all on one node: balanced by conversation).
    await wait_for_sockets(session, [node.url for node in cluster.node_members], count)
    async with session.get(url, headers=auth) as watcher:
        await post(session, cluster.url, cid, auth, LONG)
        await read_events(watcher, until=lambda e: e.type == "delta", within=10)  # mid-answer
    return cid, auth, tasks


async def _node_with_the_streams(session: aiohttp.ClientSession, cluster: LocalCluster) -> Member:
    """The node the balancer sent the conversation's tabs to (it keeps a conversation on one node)."""
    holding = []
    for node in cluster.node_members:
        if await node_metric(session, node.url, "streamfan_sockets_open") > 0:
            holding.append(node)
    assert len(holding) == 1, [m.name for m in holding]
    return holding[0]


async def _check_exact(
    session: aiohttp.ClientSession, cluster: LocalCluster, cid: str, auth: dict[str, str], results: list[Any]
) -> int:
    expected = await stored_answer(session, cluster.url, cid, auth)
    assert expected == LONG
    reconnects = 0
    for received, tries in results:
        assert received.text() == expected
        assert_strictly_increasing(received.ids)
        assert len(received.of_type("done")) == 1
        reconnects += tries
    return int(reconnects)


async def test_a_node_killed_mid_answer_its_clients_resume_through_nginx(
    local_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    cid, auth, tasks = await _follow_all(session, local_cluster, 9)
    victim = await _node_with_the_streams(session, local_cluster)
    victim.stop(signal.SIGKILL)
    results = await asyncio.gather(*tasks)
    reconnects = await _check_exact(session, local_cluster, cid, auth, results)
    assert reconnects >= 9, "the killed node's clients never reconnected"


async def test_a_node_sent_sigterm_exits_quickly_and_its_clients_lose_nothing(
    local_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    cid, auth, tasks = await _follow_all(session, local_cluster, 9)
    victim = await _node_with_the_streams(session, local_cluster)
    victim.popen.send_signal(signal.SIGTERM)
    await asyncio.to_thread(victim.popen.wait, 10)  # within Docker's stop grace period (10 s), then SIGKILL
    assert victim.popen.returncode == 0
    results = await asyncio.gather(*tasks)
    reconnects = await _check_exact(session, local_cluster, cid, auth, results)
    assert reconnects >= 9


async def test_an_nginx_reload_finishes_while_streams_are_open(
    local_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    assert local_cluster.nginx is not None
    cid, auth = await create(session, local_cluster.url)
    url = f"{local_cluster.url}/api/conversations/{cid}/events"
    streams = [await session.get(url, headers=auth) for _ in range(3)]
    old_workers = set(_children(local_cluster.nginx.pid))
    local_cluster.nginx.send_signal(signal.SIGHUP)  # reload
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and old_workers & set(_children(local_cluster.nginx.pid)):  # noqa: ASYNC110
        await asyncio.sleep(0.25)
    assert not old_workers & set(_children(local_cluster.nginx.pid)), "old nginx workers kept serving"
    for stream in streams:  # ended by the old workers: EventSource resumes through the new ones
        assert (await read_events(stream, within=5)).closed
        stream.close()


def _start_workers(tmp_path: Path, port: int, env: dict[str, str]) -> "subprocess.Popen[bytes]":
    """``python -m server --workers 2`` on ``port``, logging to the test's folder."""
    with (tmp_path / "workers.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_workers_die_with_their_supervisor(tmp_path: Path) -> None:
    redis = RedisServer()
    redis.start()
    try:
        port = free_port()
        env = {**os.environ, "REDIS_URL": redis.url, "STREAMFAN_SECRET": SECRET.decode()}
        supervisor = _start_workers(tmp_path, port, env)
        wait_for_port(port, proc=supervisor)
        deadline = time.monotonic() + 10
        while len(children := _children(supervisor.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(children) == 2, (children, (tmp_path / "workers.log").read_text()[-2000:])
        supervisor.kill()
        supervisor.wait()
        deadline = time.monotonic() + 20  # each worker shuts down gracefully on its SIGTERM
        while time.monotonic() < deadline and any(_running(child) for child in children):
            time.sleep(0.1)
        assert not any(_running(child) for child in children), (
            "a worker outlived its supervisor",
            [_state(child)[:200] for child in children],
            (tmp_path / "workers.log").read_text()[-2000:],
        )
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        redis.remove()


def test_workers_share_one_port_and_stop_together(tmp_path: Path) -> None:
    cluster = LocalCluster(nodes=1, producers=1, env={**PACING, "STREAMFAN_GENERATOR": "echo"}, workdir=tmp_path)
    cluster.start()
    try:
        assert cluster.redis is not None
        port = free_port()
        env = {**os.environ, "REDIS_URL": cluster.redis.url, "STREAMFAN_SECRET": SECRET.decode(), **PACING}
        supervisor = _start_workers(tmp_path, port, env)
        try:
            wait_for_port(port, proc=supervisor)
            deadline = time.monotonic() + 10
            while len(children := _children(supervisor.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(children) == 2
            assert asyncio.run(_one_answer(f"http://127.0.0.1:{port}")) == "two workers"
            # A worker that dies is replaced.
            os.kill(children[0], signal.SIGKILL)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                now = _children(supervisor.pid)
                if len(now) == 2 and children[0] not in now:
                    break
                time.sleep(0.1)
            assert len(now) == 2 and children[0] not in now, now
            children = now
            wait_for_port(port, proc=supervisor)
            assert asyncio.run(_one_answer(f"http://127.0.0.1:{port}")) == "two workers"
        finally:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(10)  # within Docker's stop grace period (10 s), then SIGKILL
        assert not any(_running(child) for child in children)
    finally:
        cluster.stop()


async def _one_answer(base: str) -> str:
    async with aiohttp.ClientSession() as session:
        cid, auth = await create(session, base)
        async with session.get(f"{base}/api/conversations/{cid}/events", headers=auth) as resp:
            await post(session, base, cid, auth, "two workers")
            return (await read_events(resp, within=10)).text()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _running(pid: int) -> bool:
    """Alive, not a zombie: an orphaned worker that exited stays a zombie until its new parent reaps
    it, and not every container's PID 1 does (this one's does not)."""
    return "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_the_nginx_templates_render_to_a_config_nginx_accepts(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    values = {
        "NGINX_RUNTIME_DIR": str(tmp_path),
        "NGINX_ERROR_LOG": str(tmp_path / "error.log"),
        "STREAMFAN_LISTEN": "127.0.0.1:1",
        "STREAMFAN_MAX_BODY": "64k",
        "STREAMFAN_UPSTREAM_SERVERS": "server 127.0.0.1:2;",
        "STREAMFAN_NGINX_STREAMS_PER_IP": "64",
        "STREAMFAN_NGINX_API_RATE": "10r/s",
        "STREAMFAN_NGINX_API_BURST": "40",
        "STREAMFAN_NGINX_LIMITS_EXEMPT": "",
        "STREAMFAN_TLS_LISTEN": "127.0.0.1:2",
        "STREAMFAN_TLS_CERT": str(cert),
        "STREAMFAN_TLS_KEY": str(key),
    }
    for name in ("nginx.conf", "streamfan.conf"):
        text = (ROOT / "deploy" / "nginx" / f"{name}.template").read_text()
        rendered = render_template(text, values)
        assert "${" not in rendered
        (tmp_path / name).write_text(rendered)
    site = (tmp_path / "streamfan.conf").read_text()
    assert "$http_host" in site and "$proxy_add_x_forwarded_for" in site  # nginx's own variables survive
    for directive in ("proxy_buffering off", "proxy_read_timeout 1h", "gzip off", "keepalive 64", "limit_conn"):
        assert directive in site
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    check = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_the_image_holds_every_package_the_processes_import() -> None:
    """No Docker daemon here to build it: at least every package must be copied into the image."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("wire", "redisio", "server", "producer", "loadtest", "launch", "web", "deploy"):
        assert f"COPY {package} ./{package}" in dockerfile, package
