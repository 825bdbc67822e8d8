"""Shared fixtures: in-process nodes on fakeredis, and real redis-server processes."""

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from launch.embedded import create_embedded_app
from launch.processes import Member, RedisServer, free_port, wait_for_port
from producer.generator import Pacing
from producer.settings import ProducerSettings
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"test-secret-0123456789abcdef"


def node_settings(**overrides: Any) -> Settings:
    base = Settings(secret=SECRET, heartbeat_seconds=1.0, unsubscribe_grace_seconds=0.2, redis_timeout_seconds=2.0)
    return replace(base, **overrides)


def fast_producer(**overrides: Any) -> ProducerSettings:
    base = ProducerSettings(
        name="test-producer",
        generator="echo",
        pacing=Pacing(ttft_seconds=0.01, tokens_per_second=400, jitter=0.0),
        claim_idle_seconds=5,
        drain_seconds=0.2,
    )
    return replace(base, **overrides)


@pytest.fixture
async def client_factory(aiohttp_client: Any) -> Callable[..., Any]:
    """Start an embedded node (fakeredis broker + producer in process) and return its test client."""

    async def make(settings: Settings | None = None, producer: ProducerSettings | None = None) -> Any:
        app = create_embedded_app(settings or node_settings(), producer or fast_producer())
        return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})

    return make


@pytest.fixture
def fake_server() -> FakeServer:
    return FakeServer()


@pytest.fixture
async def fake_redis(fake_server: FakeServer) -> AsyncIterator[FakeRedis]:
    redis = FakeRedis(server=fake_server)
    yield redis
    await redis.aclose()


# -- real processes ---------------------------------------------------------------------------


@pytest.fixture
def redis_process() -> Iterator[RedisServer]:
    server = RedisServer(fsync="always")
    server.start()
    try:
        yield server
    finally:
        server.remove()


Proc = Member
"""A node or producer started by a test, stopped by PID at the end."""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``python -m server`` nodes and ``python -m producer`` processes with a given env."""
    started: list[Proc] = []

    def start(kind: str, env: dict[str, str]) -> Proc:
        full_env = {**os.environ, "STREAMFAN_SECRET": SECRET.decode(), "PYTHONUNBUFFERED": "1", **env}
        log = tmp_path / f"{kind}-{len(started)}.log"
        args = [sys.executable, "-m", kind]
        port = 0
        if kind == "server":
            port = free_port()
            args += ["--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as out:
            popen = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        proc = Member(f"{kind}-{len(started)}", popen, port, log)
        started.append(proc)
        if port:
            wait_for_port(port, proc=popen)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


def run_loadtest(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[dict[str, Any], str]:
    """``python -m loadtest ARGS --json ... --quiet``; fails the test unless it exits 0. Returns (result, stdout)."""
    import json

    report = tmp_path / "loadtest-result.json"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", *args, "--json", str(report), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(report.read_text())
    assert result["ok"] and result["lost"] == result["duplicated"] == result["reordered"] == 0
    return result, done.stdout
