"""The embedded default's broker: a private ``redis-server`` where one is installed, else fakeredis.

Both are reached the same way (a redis-py client, the same commands and Lua scripts), so the node and
the producer run the code paths they run against any Redis, and nothing outside this module knows
which broker it has or carries a workaround for one. The private server listens on a Unix socket in
a directory only this process can enter (no port, nothing to expose), keeps nothing on disk, and is
stopped with the node; the kernel stops it too if the node dies without cleaning up.
"""

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from support.backoff import Backoff
from support.env import SettingsError, env_str

log = logging.getLogger(__name__)

BROKER_KINDS = ("auto", "redis-server", "fakeredis")
"""STREAMFAN_EMBEDDED_BROKER's values."""

_READY_SECONDS = 10.0
"""How long a private redis-server may take to answer its first PING."""

_PR_SET_PDEATHSIG = 1


class EmbeddedBroker:
    """A broker for one process: clients to it now, the broker itself between ``run``'s start and end."""

    kind: str

    def client(self) -> "Redis":
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The broker serves inside this context."""
        yield


class FakeBroker(EmbeddedBroker):
    """fakeredis: in this process's memory, for machines with no redis-server."""

    kind = "fakeredis"

    def __init__(self) -> None:
        self._server = FakeServer()

    def client(self) -> "Redis":
        return FakeRedis(server=self._server)


class RedisServerBroker(EmbeddedBroker):
    """A private redis-server on a Unix socket, a child of this process."""

    kind = "redis-server"

    def __init__(self, binary: str) -> None:
        self._binary = binary
        self._dir = Path(tempfile.gettempdir()) / f"streamfan-broker-{os.getpid()}-{secrets.token_hex(4)}"
        self._socket = self._dir / "redis.sock"

    def client(self) -> "Redis":
        return Redis(unix_socket_path=str(self._socket))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._dir.mkdir(mode=0o700)
        process = await asyncio.create_subprocess_exec(
            self._binary,
            *("--port", "0", "--unixsocket", str(self._socket), "--unixsocketperm", "700"),
            *("--save", "", "--appendonly", "no", "--dir", str(self._dir), "--loglevel", "warning"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(),
        )
        try:
            await self._wait_ready(process)
            log.info("embedded broker: a private redis-server (pid %d) on %s", process.pid, self._socket)
            yield
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> None:
        redis = self.client()
        backoff = Backoff(first=0.005, cap=0.2)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_SECONDS
        try:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the embedded redis-server exited with {process.returncode} at start")
                try:
                    await redis.ping()
                    return
                except (RedisConnectionError, FileNotFoundError):
                    if loop.time() > deadline:
                        raise RuntimeError(f"no answer from the embedded redis-server in {_READY_SECONDS} s") from None
                    await asyncio.sleep(backoff.next_delay())
        finally:
            await redis.aclose()


def _die_with_parent() -> Callable[[], None] | None:
    """Ask Linux to stop the child when this process dies, however it dies (a SIGKILL included)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        with contextlib.suppress(Exception):
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return arm


def embedded_broker_from_env(env: Mapping[str, str]) -> EmbeddedBroker:
    """The broker ``STREAMFAN_EMBEDDED_BROKER`` asks for (``auto``: redis-server when on ``PATH``)."""
    kind = env_str(env, "STREAMFAN_EMBEDDED_BROKER", "auto")
    if kind not in BROKER_KINDS:
        raise SettingsError(f"STREAMFAN_EMBEDDED_BROKER must be one of {', '.join(BROKER_KINDS)}, not {kind!r}")
    binary = shutil.which("redis-server")
    if kind == "fakeredis" or (kind == "auto" and binary is None):
        return FakeBroker()
    if binary is None:
        raise SettingsError("STREAMFAN_EMBEDDED_BROKER=redis-server but no redis-server is on PATH")
    return RedisServerBroker(binary)
