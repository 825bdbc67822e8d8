"""Processes the launchers and the tests start and stop by PID: redis-server, nodes, producers.

Nothing here knows what the processes do; ``launch.cluster`` and the tests compose them.
"""

import collections
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


_HANDED_OUT: "collections.deque[int]" = collections.deque(maxlen=4096)
"""Ports this process handed out lately: the kernel may offer a just-closed port again, and two
listeners started one after the other (nginx's HTTP and HTTPS ports) would then collide."""


def free_port() -> int:
    """A loopback port nothing listens on now, and not one this process handed out lately."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port


def wait_for_port(port: int, timeout: float = 15.0, proc: "subprocess.Popen[bytes] | None" = None) -> None:
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


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian package {package!r}; ./scripts/test.sh installs it)")
    return path


def pin_apart(pid: int) -> None:
    """Run ``pid`` on one core and this process on another, when this process may use two: a
    measurement of this process's CPU then never shares a core with the server it drives."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(pid, {cores[0]})
        os.sched_setaffinity(0, {cores[1]})


def stop_process(proc: "subprocess.Popen[bytes]", sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class RedisServer:
    """A redis-server on a free loopback port, append-only so a restart keeps the data."""

    port: int = field(default_factory=free_port)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="streamfan-redis-"))
    fsync: str = "everysec"
    """appendfsync: "always" when a test kills Redis and counts on every write surviving."""
    appendonly: bool = True
    """Off only to measure as the side-by-side harness runs Redis (``scripts/redis_cost.py``)."""
    extra_args: list[str] = field(default_factory=list)
    """More ``redis-server`` arguments (cluster mode)."""
    proc: "subprocess.Popen[bytes] | None" = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [find_binary("redis-server", "redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.fsync]
        args += ["--dir", self.workdir]
        args += ["--protected-mode", "no", "--loglevel", "notice", "--maxclients", "10000"]
        args += ["--logfile", str(Path(self.workdir) / "redis.log")]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, process_group=0)
        wait_for_port(self.port, proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def cli(self, *args: str) -> str:
        """Run one command on this server (tests use it to kill clients or inspect state)."""
        import redis

        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            return str(client.execute_command(*args))  # type: ignore[no-untyped-call]
        finally:
            client.close()


@dataclass
class Member:
    """A node or producer the cluster started."""

    name: str
    popen: "subprocess.Popen[bytes]"
    port: int
    log: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        stop_process(self.popen, sig, timeout)


@dataclass
class RedisClusterServers:
    """A Redis Cluster on loopback: ``primaries`` shards, each with ``replicas`` replicas.

    Every member is a ``redis-server --cluster-enabled yes`` on a free port; ``redis-cli --cluster
    create`` assigns the slots. A short ``cluster-node-timeout`` makes a killed primary's replica
    take over within a couple of seconds (the failover tests count on it).
    """

    primaries: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    members: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Any member will do: the client discovers the rest."""
        return self.members[0].url

    def start(self) -> None:
        extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(self.node_timeout_ms)]
        extra += ["--cluster-require-full-coverage", "no", "--repl-diskless-sync-delay", "0"]
        for _ in range(self.primaries * (1 + self.replicas)):
            # The bus port is chosen too: the default (port + 10000) may be taken or out of range.
            server = RedisServer(extra_args=[*extra, "--cluster-port", str(free_port())])
            server.start()
            self.members.append(server)
        addresses = [f"127.0.0.1:{m.port}" for m in self.members]
        cli = find_binary("redis-cli", "redis-tools")
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live member says the cluster is ok and agrees on who serves each slot, and
        every replica is in sync with its primary (only then can it take over)."""
        deadline = time.monotonic() + timeout
        while True:
            live = [m for m in self.members if m.proc is not None]
            try:
                states = {m.cli("CLUSTER", "INFO").split("cluster_state:")[1].split()[0] for m in live}
                maps = {m.cli("CLUSTER", "SLOTS") for m in live}
                replicas_synced = all(
                    "master_link_status': 'up'" in m.cli("INFO", "replication")
                    for m in live
                    if m.cli("ROLE").startswith("['slave'")
                )
                if states == {"ok"} and len(maps) == 1 and replicas_synced:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not settle")
            time.sleep(0.1)

    def primary_ports(self) -> list[int]:
        return [m.port for m in self.members if m.proc is not None and m.cli("ROLE").startswith("['master'")]

    def member(self, port: int) -> RedisServer:
        return next(m for m in self.members if m.port == port)

    def remove(self) -> None:
        for server in reversed(self.members):
            server.remove()
