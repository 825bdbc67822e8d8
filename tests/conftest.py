"""Shared fixtures: in-process nodes on fakeredis, and real redis-server processes."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from producer.generator import Pacing
from producer.settings import ProducerSettings
from server.embedded import create_embedded_app
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed: run ./scripts/test.sh, which installs it")
    return path


@dataclass
class RedisProcess:
    """A redis-server on a free loopback port, with append-only persistence so it can be restarted."""

    port: int = field(default_factory=free_port)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="streamfan-redis-"))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.workdir,
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cli(self, *args: str) -> str:
        import redis

        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            return str(client.execute_command(*args))
        finally:
            client.close()


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@dataclass
class Proc:
    """A node or producer started by a test, stopped by PID at the end."""

    popen: subprocess.Popen[bytes]
    port: int | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``python -m server`` nodes and ``python -m producer`` processes with a given env."""
    started: list[Proc] = []

    def start(kind: str, env: dict[str, str]) -> Proc:
        full_env = {**os.environ, "STREAMFAN_SECRET": SECRET.decode(), "PYTHONUNBUFFERED": "1", **env}
        log = tmp_path / f"{kind}-{len(started)}.log"
        args = [sys.executable, "-m", kind]
        port = None
        if kind == "server":
            port = free_port()
            args += ["--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as out:
            popen = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        proc = Proc(popen, port, log)
        started.append(proc)
        if port is not None:
            wait_for_port(port, proc=popen)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()
