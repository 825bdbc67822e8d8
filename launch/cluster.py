"""``python -m launch.cluster``: the docker compose topology as local processes, without Docker.

Starts a ``redis-server`` (or, with ``--redis-cluster N``, a Redis Cluster of N primaries and their
replicas) on free loopback ports, M producers, N relay nodes on their own ports and
Debian's nginx in front, rendered from the same templates as compose (``deploy/nginx``). Ctrl-C or
SIGTERM stops everything it started, by PID, in reverse order. The tests drive the same class.
"""

import argparse
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from launch.certificate import dev_certificate
from launch.processes import (
    ROOT,
    Member,
    RedisClusterServers,
    RedisServer,
    find_binary,
    free_port,
    stop_process,
    wait_for_port,
)

log = logging.getLogger("launch.cluster")

NGINX_TEMPLATES = ROOT / "deploy" / "nginx"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render_template(text: str, values: Mapping[str, str]) -> str:
    """``${NAME}`` replaced for the names given, everything else (nginx's own ``$vars``) untouched.

    The same rule as the nginx image's envsubst step, which only substitutes defined variables.
    """
    return _VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), text)


@dataclass
class LocalCluster:
    """Redis, producers, nodes and nginx as processes on loopback, like ``docker-compose.yml``."""

    nodes: int = 3
    producers: int = 2
    port: int = 0
    """The balancer's port (0: a free one)."""
    balancer: bool = True
    """Start nginx in front (benchmarks of the nodes alone leave it out)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for nodes and producers (generator pacing, heartbeats...)."""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="streamfan-cluster-")))
    nginx_limits: Mapping[str, str] = field(
        default_factory=lambda: {
            "STREAMFAN_NGINX_STREAMS_PER_IP": "10000",
            "STREAMFAN_NGINX_API_RATE": "1000r/s",
            "STREAMFAN_NGINX_API_BURST": "2000",
        }
    )
    """The balancer's per-address limits: generous here, where every client is on loopback (compose
    sets strict ones); no address exempt."""
    redis_fsync: str = "everysec"
    """Redis' appendfsync ("always" where a test SIGKILLs Redis and counts on every write)."""
    redis_cluster: int = 0
    """Run a Redis Cluster of this many primaries (each with a replica) instead of one Redis."""
    redis: RedisServer | None = None
    shards: RedisClusterServers | None = None
    members: list[Member] = field(default_factory=list)
    nginx: "subprocess.Popen[bytes] | None" = None

    tls_port: int = 0
    """The balancer's HTTPS + HTTP/2 port (0: a free one), with a self-signed certificate."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def node_members(self) -> list[Member]:
        return [m for m in self.members if m.name.startswith("node")]

    @property
    def producer_members(self) -> list[Member]:
        return [m for m in self.members if m.name.startswith("producer")]

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        if self.redis_cluster:
            self.shards = RedisClusterServers(primaries=self.redis_cluster, replicas=1)
            self.shards.start()
            redis_url = self.shards.url
        else:
            self.redis = RedisServer(workdir=str(self.workdir / "redis"), fsync=self.redis_fsync)
            os.makedirs(self.redis.workdir, exist_ok=True)
            self.redis.start()
            redis_url = self.redis.url
        secret = os.environ.get("STREAMFAN_SECRET") or secrets.token_hex(32)
        common = {**os.environ, "REDIS_URL": redis_url, "STREAMFAN_SECRET": secret, "PYTHONUNBUFFERED": "1"}
        # A local topology whose every client is on loopback (tests, benchmarks, a developer's
        # browser): it asks for the exemption the nodes no longer give by default.
        common.setdefault("STREAMFAN_LIMITS_EXEMPT", "127.0.0.0/8,::1")
        common.update(self.env)
        for i in range(self.producers):
            port = free_port()
            env = {
                **common,
                "STREAMFAN_PRODUCER_NAME": f"producer-{i + 1}",
                "STREAMFAN_PRODUCER_METRICS_PORT": str(port),
            }
            self._spawn(f"producer-{i + 1}", [sys.executable, "-m", "producer"], env, port)
        for i in range(self.nodes):
            port = free_port()
            args = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)]
            self._spawn(f"node-{i + 1}", args, common, port)
        for member in self.members:
            wait_for_port(member.port, proc=member.popen)
        if self.balancer:
            self._start_nginx()

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str], port: int) -> None:
        log_path = self.workdir / "logs" / f"{name}.log"
        with log_path.open("ab") as out:
            # Own process groups: Ctrl-C reaches the launcher alone, which stops each member once.
            popen = subprocess.Popen(
                args, env=dict(env), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, process_group=0
            )
        self.members.append(Member(name, popen, port, log_path, args, dict(env)))

    def restart(self, member: Member) -> None:
        """Start a stopped member again, on the same port (a node coming back after a crash)."""
        member.stop()
        with member.log.open("ab") as out:
            member.popen = subprocess.Popen(
                member.args, env=member.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, process_group=0
            )
        wait_for_port(member.port, proc=member.popen)

    def _start_nginx(self) -> None:
        if self.port == 0:
            self.port = free_port()
        if self.tls_port == 0:
            self.tls_port = free_port()
        runtime = self.workdir / "nginx"
        runtime.mkdir(exist_ok=True)
        os.chmod(self.workdir, 0o755)
        os.chmod(runtime, 0o777)  # nginx's workers run as nobody when started as root
        values = {
            "NGINX_RUNTIME_DIR": str(runtime),
            "NGINX_ERROR_LOG": str(self.workdir / "logs" / "nginx-error.log"),
            "STREAMFAN_LISTEN": f"127.0.0.1:{self.port}",
            "STREAMFAN_TLS_LISTEN": f"127.0.0.1:{self.tls_port}",
            **dev_certificate(self.workdir / "tls"),
            "STREAMFAN_MAX_BODY": "64k",
            "STREAMFAN_NGINX_LIMITS_EXEMPT": "",
            **self.nginx_limits,
            "STREAMFAN_UPSTREAM_SERVERS": " ".join(
                f"server 127.0.0.1:{m.port} max_fails=1 fail_timeout=5s;" for m in self.node_members
            ),
        }
        for name in ("nginx.conf", "streamfan.conf"):
            text = (NGINX_TEMPLATES / f"{name}.template").read_text()
            (runtime / name).write_text(render_template(text, values))
        conf = str(runtime / "nginx.conf")
        nginx = find_binary("nginx", "nginx")
        check = subprocess.run([nginx, "-t", "-q", "-c", conf, "-g", "daemon off;"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected the rendered config: {check.stderr.strip()}")
        with (self.workdir / "logs" / "nginx.log").open("ab") as out:
            self.nginx = subprocess.Popen(
                [nginx, "-c", conf, "-g", "daemon off;"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=runtime,
                process_group=0,
            )
        wait_for_port(self.port, proc=self.nginx)

    def restart_balancer(self, sig: int = signal.SIGKILL) -> None:
        """Stop nginx with ``sig`` and start it again on the same port."""
        if self.nginx is not None:
            stop_process(self.nginx, sig)
            self.nginx = None
        self._start_nginx()

    def stop(self) -> None:
        """Stop everything this cluster started, balancer first, Redis last."""
        if self.nginx is not None:
            stop_process(self.nginx, signal.SIGQUIT)  # graceful: lets open requests end
            self.nginx = None
        for member in reversed(self.node_members):
            member.stop()
        for member in reversed(self.producer_members):
            member.stop(timeout=30)
        self.members.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.shards is not None:
            self.shards.remove()
            self.shards = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def exited(self) -> list[str]:
        """Members that died on their own."""
        dead = [f"{m.name} ({m.popen.returncode})" for m in self.members if m.popen.poll() is not None]
        if self.nginx is not None and self.nginx.poll() is not None:
            dead.append(f"nginx ({self.nginx.returncode})")
        return dead


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m launch.cluster", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3, help="relay nodes (default: 3)")
    parser.add_argument("--producers", type=int, default=2, help="producer processes (default: 2)")
    parser.add_argument("--port", type=int, default=8000, help="nginx's port on 127.0.0.1 (default: 8000)")
    parser.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="a Redis Cluster of N primaries, each with a replica, instead of one Redis (default: 0, off)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, Redis data) at exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 1 <= args.nodes <= 64 or not 1 <= args.producers <= 64:
        parser.error("--nodes and --producers must be between 1 and 64")
    if args.redis_cluster and not 3 <= args.redis_cluster <= 16:
        parser.error("--redis-cluster needs 3 to 16 primaries (a cluster elects failovers by majority)")

    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster = LocalCluster(nodes=args.nodes, producers=args.producers, port=args.port, redis_cluster=args.redis_cluster)
    try:
        cluster.start()
        redis = cluster.redis or cluster.shards
        assert redis is not None
        log.info("redis %s; logs in %s", redis.url, cluster.workdir / "logs")
        for member in cluster.members:
            log.info("%s pid %d on %s", member.name, member.popen.pid, member.url)
        log.info(
            "streamfan is up: open %s, or %s over HTTP/2 with a self-signed certificate (Ctrl-C stops everything)",
            cluster.url,
            cluster.tls_url,
        )
        reported: set[str] = set()
        while not stopping:
            time.sleep(0.5)
            for dead in [] if stopping else set(cluster.exited()) - reported:
                log.warning("%s exited; the others carry on", dead)
                reported.add(dead)
    finally:
        log.info("stopping the cluster")
        if args.keep:
            cluster.stop()
            log.info("kept %s", cluster.workdir)
        else:
            cluster.remove()


if __name__ == "__main__":
    main()
