"""The embedded default's broker: a private redis-server where installed, fakeredis where not.

The README's command (``python -m server``, no ``REDIS_URL``) answers on either broker; the private
redis-server never outlives its node, whether the node stops cleanly or is killed.
"""

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from launch.embedded_broker import FakeBroker, RedisServerBroker, embedded_broker_from_env
from support.env import SettingsError
from tests.conftest import EMBEDDED_ENV, Proc
from tests.sse_client import read_events

pytestmark = pytest.mark.timeout(60)


def test_auto_is_a_private_redis_server_where_one_is_installed_else_fakeredis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(embedded_broker_from_env({}), RedisServerBroker)  # the tests install redis-server
    with monkeypatch.context() as patched:
        patched.setenv("PATH", str(tmp_path))  # a machine without redis-server
        assert isinstance(embedded_broker_from_env({}), FakeBroker)
        with pytest.raises(SettingsError, match="no redis-server"):
            embedded_broker_from_env({"STREAMFAN_EMBEDDED_BROKER": "redis-server"})
    assert isinstance(embedded_broker_from_env({"STREAMFAN_EMBEDDED_BROKER": "fakeredis"}), FakeBroker)
    with pytest.raises(SettingsError, match="STREAMFAN_EMBEDDED_BROKER"):
        embedded_broker_from_env({"STREAMFAN_EMBEDDED_BROKER": "memcached"})


def _embedded(spawn: Callable[..., Proc], kind: str) -> Proc:
    return spawn("server", {**EMBEDDED_ENV, "STREAMFAN_SIM_TTFT_MS": "5", "STREAMFAN_EMBEDDED_BROKER": kind})


def _broker_pid(node: Proc) -> int:
    found = re.search(r"a private redis-server \(pid (\d+)\)", node.log.read_text())
    assert found, node.log.read_text()
    return int(found.group(1))


def _ended(pid: int) -> bool:
    """No such process, or a zombie: an orphan stays one until reaped, and not every PID 1 reaps."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


async def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (polled until ``within`` seconds: it is not our child)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if _ended(pid):
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.parametrize("kind", ["redis-server", "fakeredis"])
async def test_the_readmes_command_answers_on_either_broker(spawn: Callable[..., Proc], kind: str) -> None:
    node = _embedded(spawn, kind)
    url = f"http://127.0.0.1:{node.port}/api/conversations"
    async with aiohttp.ClientSession() as session:
        async with session.post(url) as resp:
            body = await resp.json()
        cid, auth = body["id"], {"Authorization": f"Bearer {body['token']}"}
        async with session.get(f"{url}/{cid}/events", headers=auth) as events:
            async with session.post(f"{url}/{cid}/messages", json={"content": "two words"}, headers=auth) as resp:
                assert resp.status == 202
                response_id = (await resp.json())["response_id"]
            received = await read_events(events)
    assert received.text(response_id).strip(), received.events
    assert f"embedded broker ({kind})" in node.log.read_text()


async def test_the_private_redis_server_stops_with_its_node(spawn: Callable[..., Proc]) -> None:
    stopped = _embedded(spawn, "redis-server")
    pid = _broker_pid(stopped)
    stopped.stop(signal.SIGTERM)
    assert await _gone(pid), "a node stopped cleanly left its redis-server running"
    killed = _embedded(spawn, "redis-server")
    pid = _broker_pid(killed)
    killed.stop(signal.SIGKILL)
    assert await _gone(pid), "a node killed left its redis-server running"
