"""Never stuck, never silent: each fault ends in a finished answer or a clear error (real Redis).

Faults are injected, not waited for: a proxy that loses one reply, ``CLIENT KILL``, SIGKILL.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from launch.processes import RedisServer
from tests.conftest import Proc
from tests.faultproxy import FaultProxy
from tests.sse_client import read_events
from tests.test_real_redis import Cluster, producer_env
from wire import scripts

pytestmark = pytest.mark.timeout(90)


def sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


@pytest.fixture
async def proxy(redis_process: RedisServer) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(redis_process.port)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def proxied(redis_process: RedisServer, proxy: FaultProxy, spawn: Callable[..., Proc]) -> AsyncIterator[Cluster]:
    """A node on Redis directly, and a producer whose Redis traffic goes through the fault proxy."""
    node = spawn("server", {"REDIS_URL": redis_process.url, "STREAMFAN_HEARTBEAT_SECONDS": "1"})
    producer = spawn("producer", {**producer_env(redis_process), "REDIS_URL": proxy.url})
    async with aiohttp.ClientSession() as session:
        cluster = Cluster(redis_process, [node], producer, spawn, session)
        yield cluster
        for stream in cluster.streams:
            stream.close()


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
