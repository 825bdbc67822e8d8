"""Resource bounds under abuse, on real processes: floods get 429, memory stays bounded, others are served.

One address (203.0.113.9, through the trusted-proxy header) holds 50 streams that replay a large
history and never read, floods connections, creates and posts; another address chats meanwhile.
"""

import asyncio
import functools
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from launch.cluster import LocalCluster
from launch.processes import RedisServer
from loadtest.sse_parser import SSEEvent
from tests.conftest import Proc
from tests.sse_client import raw_event_stream, read_events, wait_for_sockets
from tests.test_real_redis import producer_env

pytestmark = pytest.mark.timeout(120)


def _ends(response_id: str, event: SSEEvent) -> bool:
    return event.type == "done" and response_id in event.data


BAD = {"X-Forwarded-For": "203.0.113.9"}
GOOD = {"X-Forwarded-For": "198.51.100.2"}
READERS = 50
KIB_PER_READER = 1024
"""The documented bound: a client replaying history and reading nothing costs the node at most this."""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_floods_from_one_address_are_refused_and_the_others_are_served(
    redis_process: RedisServer, spawn: Callable[..., Proc]
) -> None:
    env = {
        "REDIS_URL": redis_process.url,
        "STREAMFAN_LIMITS_EXEMPT": "",
        "STREAMFAN_MAX_MESSAGE_CHARS": "200000",
        "STREAMFAN_MAX_BODY_BYTES": "1048576",
        "STREAMFAN_MAX_TOKENS_LIMIT": "100000",
        "STREAMFAN_CREATES_PER_MINUTE": "30",
    }
    node = spawn("server", env)
    spawn("producer", producer_env(redis_process, tokens_per_second=5000))
    sockets: list[socket.socket] = []
    async with aiohttp.ClientSession() as session:
        base = node.url

        async def create(headers: dict[str, str]) -> tuple[int, str, str]:
            async with session.post(f"{base}/api/conversations", headers=headers) as resp:
                body = await resp.json()
                return resp.status, body.get("id", ""), body.get("token", "")

        # A large history: ~16,000 events (~2.5 MB).
        _, cid, token = await create(BAD)
        auth = {"Authorization": f"Bearer {token}"}
        big = " ".join(f"w{i}" for i in range(16_000))
        stream = await session.get(f"{base}/api/conversations/{cid}/events", headers={**auth, **BAD})
        async with session.post(
            f"{base}/api/conversations/{cid}/messages",
            json={"content": big, "max_tokens": 100000},
            headers={**auth, **BAD},
        ) as resp:
            assert resp.status == 202
        got = await read_events(stream, within=60)
        stream.close()
        assert got.text() == big
        before = rss_kib(node.popen.pid)

        # 50 clients replay it and never read; then a connection flood from the same address.
        sockets += [
            raw_event_stream(node.port, cid, f"Bearer {token}", X_Forwarded_For=BAD["X-Forwarded-For"])
            for _ in range(READERS)
        ]
        await wait_for_sockets(session, [base], READERS)  # every reader's stream counted against its address
        flood = [
            raw_event_stream(node.port, cid, f"Bearer {token}", X_Forwarded_For=BAD["X-Forwarded-For"])
            for _ in range(30)
        ]
        sockets += flood
        statuses = []
        for sock in flood:
            sock.settimeout(5)
            statuses.append(sock.recv(64).split(b" ")[1])
        assert statuses.count(b"429") == 30 - (64 - READERS) and statuses.count(b"200") == 64 - READERS

        # Create and post floods from the same address.
        creates = [status for status, _, _ in await asyncio.gather(*(create(BAD) for _ in range(40)))]
        assert 429 in creates and creates.count(201) <= 10
        posts = []
        for _ in range(60):
            async with session.post(f"{base}/api/conversations/{cid}/cancel", json={}, headers={**auth, **BAD}) as resp:
                posts.append(resp.status)
        assert posts.count(429) >= 10 and 500 not in posts

        # Meanwhile another address chats as usual, on time.
        status, good_cid, good_token = await create(GOOD)
        assert status == 201
        good_auth = {"Authorization": f"Bearer {good_token}", **GOOD}
        events = await session.get(f"{base}/api/conversations/{good_cid}/events", headers=good_auth)
        async with session.post(
            f"{base}/api/conversations/{good_cid}/messages", json={"content": "still served"}, headers=good_auth
        ) as resp:
            assert resp.status == 202
        answer = await read_events(events, within=10)
        events.close()
        assert answer.text() == "still served"

        grown = rss_kib(node.popen.pid) - before
        print(f"node RSS grew {grown} KiB with {READERS} stuck replays of a {len(big)}-char answer")
        assert grown < READERS * KIB_PER_READER, f"{grown} KiB for {READERS} stuck replays"
    for sock in sockets:
        sock.close()


async def test_a_full_redis_is_a_503_never_a_silent_eviction(spawn: Callable[..., Proc]) -> None:
    redis = RedisServer()
    redis.start()
    try:
        redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        node = spawn("server", {"REDIS_URL": redis.url})
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{node.url}/api/conversations") as resp:
                body = await resp.json()
            auth = {"Authorization": f"Bearer {body['token']}"}
            redis.cli("CONFIG", "SET", "maxmemory", "1")  # below what it uses already: every write is refused
            async with session.post(
                f"{node.url}/api/conversations/{body['id']}/messages", json={"content": "x"}, headers=auth
            ) as resp:
                assert resp.status == 503 and (await resp.json())["error"] == "unavailable"
                assert resp.headers["Retry-After"]
    finally:
        redis.remove()


async def test_the_balancer_refuses_floods_with_json_429(tmp_path: Path) -> None:
    limits = {
        "STREAMFAN_NGINX_STREAMS_PER_IP": "3",
        "STREAMFAN_NGINX_API_RATE": "2r/s",
        "STREAMFAN_NGINX_API_BURST": "3",
    }
    cluster = LocalCluster(nodes=1, producers=1, workdir=tmp_path, nginx_limits=limits)
    await asyncio.to_thread(cluster.start)
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(8):
                async with session.post(f"{cluster.url}/api/conversations") as resp:
                    statuses.append(resp.status)
                    if resp.status == 429:
                        assert (await resp.json())["error"] == "rate_limited" and resp.headers["Retry-After"]
                    else:
                        body = await resp.json()
            assert statuses.count(429) >= 3
            await asyncio.sleep(2)
            auth = {"Authorization": f"Bearer {body['token']}"}
            url = f"{cluster.url}/api/conversations/{body['id']}/events"
            streams = [await session.get(url, headers=auth) for _ in range(3)]
            refused = await session.get(url, headers=auth)
            assert [s.status for s in streams] == [200, 200, 200] and refused.status == 429
            for stream in [*streams, refused]:
                stream.close()

            # The one exempt address (compose's: the balancer's own loopback, where the load tester
            # runs) is counted by neither limit.
            cluster.nginx_limits = {**limits, "STREAMFAN_NGINX_LIMITS_EXEMPT": "127.0.0.1"}
            await asyncio.to_thread(cluster.restart_balancer, signal.SIGQUIT)
            streams = [await session.get(url, headers=auth) for _ in range(5)]
            assert [s.status for s in streams] == [200] * 5
            for stream in streams:
                stream.close()
            calls = []
            for _ in range(8):
                async with session.get(f"{cluster.url}/api/conversations/{body['id']}", headers=auth) as resp:
                    calls.append(resp.status)
            assert calls == [200] * 8
    finally:
        await asyncio.to_thread(cluster.stop)


@pytest.mark.parametrize(("event_chars", "messages"), [(60_000, 20), (100, 120)], ids=["60kB-events", "100B-events"])
async def test_never_reading_replays_cost_the_node_a_bounded_number_of_bytes(
    redis_process: RedisServer, spawn: Callable[..., Proc], event_chars: int, messages: int
) -> None:
    """Issue 23: a replay page was 200 events, 20 KB or 12 MB depending on the events; ten clients
    replaying 60 kB events and reading nothing cost the node 4.2-5.2 MiB each. The bound is in
    bytes now (STREAMFAN_REPLAY_PAGE_BYTES, and the live frames held during catch-up)."""
    env = {
        "REDIS_URL": redis_process.url,
        "STREAMFAN_MAX_MESSAGE_CHARS": "70000",
        "STREAMFAN_MAX_BODY_BYTES": "1048576",
    }
    node = spawn("server", env)
    spawn("producer", producer_env(redis_process, tokens_per_second=5000))
    word = "x" * event_chars  # one token: the echo answer is one delta of the same size
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{node.url}/api/conversations") as resp:
            body = await resp.json()
        cid, auth = body["id"], {"Authorization": f"Bearer {body['token']}"}
        for _ in range(messages):
            stream = await session.get(f"{node.url}/api/conversations/{cid}/events", headers=auth)
            async with session.post(
                f"{node.url}/api/conversations/{cid}/messages", json={"content": word}, headers=auth
            ) as resp:
                assert resp.status == 202
                rid: str = (await resp.json())["response_id"]
            await read_events(stream, until=functools.partial(_ends, rid), within=30)
            stream.close()
    await asyncio.sleep(0.5)
    before = rss_kib(node.popen.pid)
    readers = [raw_event_stream(node.port, cid, f"Bearer {body['token']}") for _ in range(10)]
    try:
        await asyncio.sleep(2.0)  # every replay has filled what the socket takes and waits
        grown = rss_kib(node.popen.pid) - before
    finally:
        for sock in readers:
            sock.close()
    history_kib = messages * 2 * event_chars // 1024
    print(f"node RSS grew {grown} KiB for 10 stuck replays of a {history_kib} KiB history")
    assert grown < 10 * 512, f"{grown} KiB for 10 stuck replays ({history_kib} KiB of history each)"
