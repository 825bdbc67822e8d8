"""Never stuck, never silent: each fault ends in a finished answer or a clear error (real Redis).

Faults are injected, not waited for: a proxy that loses one reply, ``CLIENT KILL``, SIGKILL.

Longer than 300 lines: the fault tests share their real Redis, nodes and proxy fixtures here.
"""

import asyncio
import hashlib
import signal
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from launch.processes import RedisServer
from tests.conftest import Proc
from tests.faultproxy import FaultProxy
from tests.sse_client import node_metric, raw_event_stream, read_events, wait_for_sockets
from tests.test_real_redis import Cluster, drain_socket, producer_env
from wire import scripts
from wire.keys import PARTITIONS, ConversationKeys, jobs_stream, partition_of

pytestmark = pytest.mark.timeout(90)


def sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


@pytest.fixture
async def proxied(redis_process: RedisServer, proxy: FaultProxy, spawn: Callable[..., Proc]) -> AsyncIterator[Cluster]:
    """A node on Redis directly, and a producer whose Redis traffic goes through the fault proxy."""
    node = spawn("server", {"REDIS_URL": redis_process.url, "STREAMFAN_HEARTBEAT_SECONDS": "1"})
    # STREAMFAN_REDIS_CLUSTER=0: no topology probe at start, which would wait on this test's own
    # event loop (the proxy's) while spawn() blocks it.
    producer = spawn(
        "producer", {**producer_env(redis_process), "REDIS_URL": proxy.url, "STREAMFAN_REDIS_CLUSTER": "0"}
    )
    async with aiohttp.ClientSession() as session:
        cluster = Cluster(redis_process, [node], producer, spawn, session)
        yield cluster
        for stream in cluster.streams:
            stream.close()
    # Stopped here, off the event loop: the proxy runs on this loop, and the producer drains its
    # answers through it (spawn's own teardown would block the loop, and the drain with it, for 10 s).
    await asyncio.to_thread(producer.stop)


async def test_a_lost_reply_to_start_never_leaves_the_answer_stuck(proxied: Cluster, proxy: FaultProxy) -> None:
    cid, auth = await proxied.create()
    await proxied.post(cid, auth, "warm up: the producer loads its scripts")
    await read_events(await proxied.events(cid, auth))
    stream = await proxied.events(cid, auth, cursor=(await proxied.history(cid, auth))["last_event_id"])
    proxy.lose_reply_to(sha(scripts.START))
    posted = await proxied.post(cid, auth, "hello after a lost reply")
    got = await asyncio.wait_for(read_events(stream), 30)
    assert proxy.replies_lost == 1
    assert got.text(posted["response_id"]) == "hello after a lost reply"
    history = await proxied.history(cid, auth)
    assert history["active_response_id"] is None
    assert history["messages"][-1]["finish_reason"] == "stop"
    await proxied.post(cid, auth, "and the conversation takes the next message")


@pytest.fixture
async def direct(redis_process: RedisServer, spawn: Callable[..., Proc]) -> AsyncIterator[Cluster]:
    """One node and two producers on Redis directly (producers re-claim every 0.4 s)."""
    env = {"REDIS_URL": redis_process.url, "STREAMFAN_HEARTBEAT_SECONDS": "1"}
    node = spawn("server", env)
    fast = {"STREAMFAN_JOB_CLAIM_SECONDS": "2", "STREAMFAN_SIM_TOKENS_PER_SECOND": "60"}
    producers = [spawn("producer", {**producer_env(redis_process), **fast}) for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        cluster = Cluster(redis_process, [node], producers[0], spawn, session)
        cluster.producers = producers  # type: ignore[attr-defined]
        yield cluster
        for stream in cluster.streams:
            stream.close()


async def test_pooled_connections_redis_closed_are_retried_not_500(direct: Cluster) -> None:
    cid, auth = await direct.create()
    await direct.post(cid, auth, "fill the pool")
    url = f"{direct.nodes[0].url}/api/conversations/{cid}"

    async def get() -> int:
        async with direct.session.get(url, headers=auth) as resp:
            return resp.status

    await asyncio.gather(*(get() for _ in range(64)))  # many pooled connections, now idle
    direct.redis.cli("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    statuses = await asyncio.gather(*(get() for _ in range(64)))
    assert statuses == [200] * 64


async def test_new_streams_after_redis_closed_the_nodes_connections_open_not_503(direct: Cluster) -> None:
    """A new stream's token check and replay go over one long-lived pipelined connection: closed
    by Redis while idle, it is replaced on the next stream, which is not refused."""
    cid, auth = await direct.create()
    posted = await direct.post(cid, auth, "before the connections are closed")
    await read_events(await direct.events(cid, auth))
    direct.redis.cli("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    for _ in range(3):
        got = await read_events(await direct.events(cid, auth))
        assert got.text(posted["response_id"]) == "before the connections are closed"


async def test_redis_down_is_a_503_with_retry_after_logged_once(direct: Cluster) -> None:
    cid, auth = await direct.create()
    direct.redis.stop()
    try:
        url = f"{direct.nodes[0].url}/api/conversations/{cid}"
        for _ in range(20):
            async with direct.session.get(url, headers=auth) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert (await resp.json())["error"] == "unavailable"
    finally:
        direct.redis.start()
    log = direct.nodes[0].log.read_text()
    assert log.count("Redis unavailable") <= 2 and "Traceback" not in log


async def test_a_retried_post_gets_the_first_reply_not_a_second_message(direct: Cluster) -> None:
    cid, auth = await direct.create()
    url = f"{direct.nodes[0].url}/api/conversations/{cid}/messages"
    replies = []
    for _ in range(2):
        async with direct.session.post(
            url, json={"content": "once"}, headers={**auth, "Idempotency-Key": "tab-1-msg-1"}
        ) as resp:
            assert resp.status == 202
            replies.append(await resp.json())
    assert replies[0] == replies[1]
    # The same key with another message is a client bug that would lose the message: refused.
    async with direct.session.post(
        url, json={"content": "twice"}, headers={**auth, "Idempotency-Key": "tab-1-msg-1"}
    ) as resp:
        assert resp.status == 422 and (await resp.json())["error"] == "idempotency_key_reused"
    async with direct.session.post(url, json={"content": "again", "client_message_id": "bad\nkey"}, headers=auth) as r:
        assert r.status == 400
    history = await direct.history(cid, auth)
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == ["once"]


async def test_a_lost_reply_to_a_post_is_answered_with_the_first_reply(
    redis_process: RedisServer, proxy: FaultProxy, spawn: Callable[..., Proc]
) -> None:
    node = spawn("server", {"REDIS_URL": proxy.url, "STREAMFAN_REDIS_CLUSTER": "0"})  # no probe: see above
    spawn("producer", producer_env(redis_process))
    async with aiohttp.ClientSession() as session:
        cluster = Cluster(redis_process, [node], node, spawn, session)
        cid, auth = await cluster.create()
        stream = await cluster.events(cid, auth)
        await cluster.post(cid, auth, "warm up")  # the node has loaded its scripts
        await read_events(stream, within=15)  # and its answer ended: the next post is not refused as busy
        proxy.lose_reply_to(sha(scripts.POST_MESSAGE))
        posted = await cluster.post(cid, auth, "the reply to this post is lost once")
        assert proxy.replies_lost == 1
        history = await cluster.history(cid, auth)
        users = [m for m in history["messages"] if m["role"] == "user"]
        assert [m["content"] for m in users] == ["warm up", "the reply to this post is lost once"]
        assert users[-1]["id"] == posted["message_id"]


async def test_a_malformed_job_never_stalls_the_producer(
    redis_process: RedisServer, spawn: Callable[..., Proc]
) -> None:
    node = spawn("server", {"REDIS_URL": redis_process.url})
    spawn("producer", {**producer_env(redis_process), "STREAMFAN_PRODUCER_CONCURRENCY": "2"})
    async with aiohttp.ClientSession() as session:
        cluster = Cluster(redis_process, [node], node, spawn, session)
        cid, auth = await cluster.create()
        jobs = ConversationKeys(cid).jobs  # bad jobs in the conversation's own partition, before its job
        async with asyncio.timeout(10):  # the producer created its group (and with it the stream)
            while redis_process.cli("EXISTS", jobs) != "1":  # noqa: ASYNC110 - polling Redis
                await asyncio.sleep(0.05)
        for i in range(5):
            redis_process.cli("XADD", jobs, "*", "garbage", str(i))
        stream = await cluster.events(cid, auth)
        posted = await cluster.post(cid, auth, "answered after five bad jobs")
        got = await read_events(stream, within=15)
        stream.close()
        assert got.text(posted["response_id"]) == "answered after five bad jobs"
    for _ in range(50):  # the producer acknowledges a job just after its done event is out
        if redis_process.cli("XLEN", jobs) == "0":
            break
        await asyncio.sleep(0.1)
    assert redis_process.cli("XLEN", jobs) == "0"


async def test_a_full_jobs_backlog_is_a_503_and_no_job_is_ever_trimmed(
    redis_process: RedisServer, spawn: Callable[..., Proc]
) -> None:
    # Three jobs per partition (the cap is shared out among them: a cluster has no global count).
    node = spawn("server", {"REDIS_URL": redis_process.url, "STREAMFAN_JOBS_MAX": str(3 * PARTITIONS)})  # no producer
    async with aiohttp.ClientSession() as session:
        cluster = Cluster(redis_process, [node], node, spawn, session)
        by_partition: dict[int, list[tuple[str, dict[str, str]]]] = {}
        while not any(len(found) == 5 for found in by_partition.values()):
            cid, auth = await cluster.create()
            by_partition.setdefault(partition_of(cid), []).append((cid, auth))
        partition, five = next((p, found) for p, found in by_partition.items() if len(found) == 5)
        statuses = []
        for cid, auth in five:
            async with session.post(
                f"{node.url}/api/conversations/{cid}/messages", json={"content": "x"}, headers=auth
            ) as resp:
                statuses.append(resp.status)
                if resp.status == 503:
                    assert resp.headers["Retry-After"] and (await resp.json())["error"] == "overloaded"
        assert statuses == [202, 202, 202, 503, 503]
        assert redis_process.cli("XLEN", jobs_stream(partition)) == "3"
        other_cid, other_auth = next(found[0] for p, found in by_partition.items() if p != partition)
        other = await cluster.post(other_cid, other_auth, "another partition has room")
        assert other["response_id"]


async def test_a_killed_producer_is_taken_over_within_seconds_and_the_answer_continues(direct: Cluster) -> None:
    cid, auth = await direct.create()
    stream = await direct.events(cid, auth)
    text = " ".join(f"word{i}" for i in range(300))
    posted = await direct.post(cid, auth, text)
    head = await read_events(stream, count=30)
    owner = direct.redis.cli("HGET", ConversationKeys(cid).state, "owner")
    victim = next(p for p in direct.producers if owner.endswith(f"-{p.popen.pid}"))  # type: ignore[attr-defined]
    victim.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    rest = await read_events(stream, within=30)
    assert time.monotonic() - killed_at < 12
    chunks = len(head.of_type("delta")) + len(rest.of_type("delta"))
    assert rest.of_type("done") == [{"response_id": posted["response_id"], "finish_reason": "stop", "chunks": chunks}]
    assert head.text() + rest.text() == text == (await direct.history(cid, auth))["messages"][-1]["content"]


async def test_a_live_client_that_accepts_nothing_is_cut_off_after_the_send_timeout(
    redis_process: RedisServer, spawn: Callable[..., Proc]
) -> None:
    env = {
        "REDIS_URL": redis_process.url,
        "STREAMFAN_SEND_TIMEOUT_SECONDS": "2",
        "STREAMFAN_HEARTBEAT_SECONDS": "0.5",
        "STREAMFAN_CLIENT_BUFFER_BYTES": str(64 << 20),  # the byte bound never bites here
        "STREAMFAN_MAX_MESSAGE_CHARS": "2000000",
        "STREAMFAN_MAX_BODY_BYTES": "4194304",
        "STREAMFAN_MAX_TOKENS_LIMIT": "100000",
    }
    node = spawn("server", env)
    spawn("producer", producer_env(redis_process, tokens_per_second=3000))
    big = " ".join(f"{i:05d}" + "x" * 2000 for i in range(400))  # ~800 KB: more than socket buffers hold
    async with aiohttp.ClientSession() as session:
        cluster = Cluster(redis_process, [node], node, spawn, session)
        cid, auth = await cluster.create()
        slow = raw_event_stream(node.port, cid, auth["Authorization"])
        try:
            await wait_for_sockets(session, [node.url], 1)  # the stream is open and following
            async with session.post(
                f"{node.url}/api/conversations/{cid}/messages",
                json={"content": big, "max_tokens": 100000},
                headers=auth,
            ) as resp:
                assert resp.status == 202
            # Cut off by the node (bytes waiting 2 s) or, a race it may lose, by the kernel
            # (TCP_USER_TIMEOUT, 2 s of unacknowledged data): either way the stream is gone.
            started = time.monotonic()
            open_sockets = 1.0
            while time.monotonic() - started < 15 and open_sockets:
                open_sockets = await node_metric(session, node.url, "streamfan_sockets_open")
                await asyncio.sleep(0.2)
            assert open_sockets == 0, "a client that accepts nothing was never cut off"
            received = await asyncio.to_thread(drain_socket, slow)
            assert len(received) < len(big), "the client was sent everything: it was not cut off"
        finally:
            slow.close()


async def test_two_pubsub_drops_during_a_gap_fill_lose_nothing_on_real_redis(redis_process: RedisServer) -> None:
    """Issue 10: a gap fill of connection n finishing during n+1 lost events (6 published, 4 delivered)."""
    from redis.asyncio import Redis

    from tests.fakes import FakeTransport, eventually, make_follower, running_hub, sent_ids
    from tests.test_hub import CID, GatedStore, Producer

    redis = Redis.from_url(redis_process.url)
    store = GatedStore(redis)  # type: ignore[arg-type]
    try:
        async with running_hub(redis, store, timeout_seconds=10, heartbeat_seconds=5) as hub:
            producer = Producer(redis)  # type: ignore[arg-type]
            await producer.start()
            transport = FakeTransport()
            client = make_follower(transport)
            feed = await hub.attach(CID, client)
            client.go_live()
            ids = [await producer.delta("a")]
            await eventually(lambda: transport.data.count(b"event: delta") == 1)
            redis_process.cli("CLIENT", "KILL", "TYPE", "pubsub")  # connection 2: its fill waits at the gate
            await eventually(lambda: hub.pubsub.generation == 2 and store.waiting == 1, within=5)
            ids += [await producer.delta(c) for c in "bc"]
            redis_process.cli("CLIENT", "KILL", "TYPE", "pubsub")  # connection 3, fill 2 still in flight
            await eventually(lambda: hub.pubsub.generation == 3 and hub.subscribed(CID), within=5)
            ids += [await producer.delta("d")]
            store.gate.set()
            ids += [await producer.delta(c) for c in "ef"]
            ids += [await producer.delta("g")]  # the last: anything doubled would come before it
            await eventually(lambda: transport.data.count(b"event: delta") >= 7, within=5)
            hub.detach(feed, client)
            assert sent_ids(transport) == ids
    finally:
        await redis.aclose()
