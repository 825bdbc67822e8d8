"""Shared fixtures: in-process nodes on fakeredis, and real redis-server processes."""

import contextlib
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from playwright.sync_api import BrowserContext, sync_playwright

from launch.embedded import create_embedded_app
from launch.embedded_broker import FakeBroker
from launch.processes import Member, RedisServer, free_port, wait_for_port
from producer.generator import Pacing
from producer.settings import ProducerSettings
from server.peers import parse_networks
from server.settings import Settings
from tests.faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"test-secret-0123456789abcdef"
LOOPBACK_TEXT = "127.0.0.0/8,::1"
LOOPBACK = parse_networks(LOOPBACK_TEXT)


def node_settings(**overrides: Any) -> Settings:
    base = Settings(
        secret=SECRET,
        heartbeat_seconds=1.0,
        unsubscribe_grace_seconds=0.2,
        redis_timeout_seconds=2.0,
        limits_exempt=LOOPBACK,  # the tests' clients share one address: they ask for it, as tools do
    )
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
    """Start an embedded node (fakeredis broker + producer in process: fast, hermetic) and return its
    test client. The README's command, with a private redis-server where installed, is ``EmbeddedNode``."""

    async def make(settings: Settings | None = None, producer: ProducerSettings | None = None) -> Any:
        app = create_embedded_app(settings or node_settings(), producer or fast_producer(), FakeBroker())
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


@pytest.fixture
async def proxy(redis_process: RedisServer) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of ``redis_process`` (``tests.faultproxy``)."""
    proxy = FaultProxy(redis_process.port)
    await proxy.start()
    yield proxy
    await proxy.close()


Proc = Member
"""A node or producer started by a test, stopped by PID at the end."""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``python -m server`` nodes and ``python -m producer`` processes with a given env."""
    started: list[Proc] = []

    def start(kind: str, env: dict[str, str]) -> Proc:
        full_env = {**os.environ, "STREAMFAN_SECRET": SECRET.decode(), "PYTHONUNBUFFERED": "1"}
        full_env |= {"STREAMFAN_LIMITS_EXEMPT": LOOPBACK_TEXT, **env}
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


# -- the README's command and a browser (the page's tests) --------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Background tabs must keep running their timers and streams as foreground ones do.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: ./scripts/test.sh installs it (apt-get install chromium)")
    return path


EMBEDDED_ENV = {
    "STREAMFAN_GENERATOR": "echo",
    "STREAMFAN_SIM_TTFT_MS": "50",
    "STREAMFAN_SIM_TOKENS_PER_SECOND": "30",
    "STREAMFAN_SIM_JITTER": "0",
    "STREAMFAN_HEARTBEAT_SECONDS": "2",
    "STREAMFAN_LIMITS_EXEMPT": LOOPBACK_TEXT,
}


class EmbeddedNode:
    """`python -m server` (the README's command: the embedded default) as a process of the test."""

    def __init__(self, port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port, self.log = port, log
        self.env = {**EMBEDDED_ENV, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "--port", str(self.port)],
                env={**os.environ, **self.env},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no metric {name}")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EmbeddedNode]:
    node = EmbeddedNode(free_port(), tmp_path / "node.log")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@contextlib.contextmanager
def browser_context(*, back_forward_cache: bool = False) -> Iterator[BrowserContext]:
    """A Chromium page context (Debian's chromium); Playwright turns the back/forward cache off
    unless asked."""
    ignored = ["--disable-back-forward-cache"] if back_forward_cache else None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, ignore_default_args=ignored
        )
        context = browser.new_context(viewport={"width": 900, "height": 700})
        try:
            yield context
        finally:
            context.close()
            browser.close()


@pytest.fixture
def context() -> Iterator[BrowserContext]:
    with browser_context() as context:
        yield context


# -- nodes with the OpenAI and AI SDK endpoints on ----------------------------------------------------

API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def keyed_nodes(redis_process: RedisServer, spawn: Callable[..., Proc]) -> list[Proc]:
    """Two nodes with ``STREAMFAN_API_KEYS`` and an echo producer (80 chunks/s) on real Redis."""
    env = {"REDIS_URL": redis_process.url, "STREAMFAN_API_KEYS": API_KEY}
    served = [spawn("server", env), spawn("server", env)]
    spawn(
        "producer",
        {
            "REDIS_URL": redis_process.url,
            "STREAMFAN_GENERATOR": "echo",
            "STREAMFAN_SIM_TTFT_MS": "20",
            "STREAMFAN_SIM_TOKENS_PER_SECOND": "80",
            "STREAMFAN_SIM_JITTER": "0",
        },
    )
    return served
