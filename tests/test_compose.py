"""``docker compose`` as a user runs it: the README's commands verbatim, on a real Docker daemon.

The stack runs from a copy of the checkout as a fresh clone has it (tracked and unignored files, no
``.env``), under a project name of its own and on free published ports. Where no registry can be
reached, ``../shared/compose`` starts ``dockerd`` and builds stand-ins of the base images (its
README); where the official images can be pulled, they are used. Every container, volume and network
the tests made is removed, and a daemon they started is stopped.

Longer than 300 lines: every test here shares one stack (module fixture), because starting it is
most of the cost.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.sync_api import BrowserContext

from launch.processes import free_port
from tests.conftest import ROOT
from tests.sse_client import assert_strictly_increasing, follow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # slow: a Docker daemon

SHARED_COMPOSE = ROOT.parent / "shared" / "compose"
STANDIN_SOCKET = "unix:///var/lib/streamfan-docker/docker.sock"
BASE_IMAGES = ("python:3.11-slim", "redis:7.4-alpine", "nginx:1.27-alpine")
CLUSTER_FILES = ("-f", "docker-compose.yml", "-f", "deploy/compose.cluster.yml")
CLUSTER_INFO = 'REDISCLI_AUTH="$(cat /secrets/redis_password)" redis-cli cluster info'
NODE_UNAVAILABLE = {"error": "unavailable", "message": "the service is briefly unavailable; try again"}


def _answers(env: dict[str, str]) -> bool:
    return subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=30).returncode == 0


def _compose_cli(env: dict[str, str]) -> None:
    done = subprocess.run(["docker", "compose", "version"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, "no `docker compose` v2: ./scripts/test.sh installs the CLI plugin"


@dataclass
class Daemon:
    env: dict[str, str]
    started_here: bool

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 600, **extra: str) -> str:
        done = subprocess.run(
            list(args), env={**self.env, **extra}, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
        return done.stdout


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """A Docker daemon with the base images: the machine's own, else ../shared/compose's."""
    assert shutil.which("docker"), "no docker CLI: ./scripts/test.sh installs docker.io"
    env = dict(os.environ)
    started = False
    if not _answers(env):
        env["DOCKER_HOST"] = STANDIN_SOCKET
        if not _answers(env):
            start = SHARED_COMPOSE / "start-dockerd.sh"
            assert start.exists(), "no Docker daemon answers, and no ../shared/compose to start one"
            host = subprocess.run(["bash", str(start)], capture_output=True, text=True, timeout=300, check=True)
            env["DOCKER_HOST"] = host.stdout.strip()
            started = True
    _compose_cli(env)
    missing = [
        image
        for image in BASE_IMAGES
        if subprocess.run(["docker", "image", "inspect", image], env=env, capture_output=True).returncode != 0
        and subprocess.run(["docker", "pull", image], env=env, capture_output=True, timeout=300).returncode != 0
    ]
    if missing:  # no registry: the stand-ins, built from Debian's packages
        build = SHARED_COMPOSE / "build.sh"
        assert build.exists(), f"cannot pull {missing} and no ../shared/compose to build stand-ins"
        subprocess.run(["bash", str(build)], env=env, capture_output=True, timeout=900, check=True)
    try:
        yield Daemon(env, started)
    finally:
        if started:
            pid = Path("/var/lib/streamfan-docker/dockerd.pid")
            if pid.exists():
                os.kill(int(pid.read_text()), signal.SIGTERM)


def _checkout_copy(target: Path) -> Path:
    """What a fresh clone holds: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    assert not (target / ".env").exists()
    return target


@dataclass
class Stack:
    daemon: Daemon
    directory: Path
    project: str
    port: int
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.tls_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout: float = 600) -> str:
        return self.daemon.run(
            "docker",
            "compose",
            *self.files,
            *args,
            cwd=self.directory,
            timeout=timeout,
            COMPOSE_PROJECT_NAME=self.project,
            STREAMFAN_PORT=str(self.port),
            STREAMFAN_TLS_PORT=str(self.tls_port),
        )

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (("ps", "-a"), ("volume", "ls"), ("network", "ls")):
            found += self.daemon.run("docker", *kind, "-q", "--filter", label).split()
        return found

    def server_containers(self) -> list[str]:
        return self.compose("ps", "-q", "server").split()


def _up(stack: Stack, log: Path) -> "subprocess.Popen[bytes]":
    """``docker compose up --build`` in the foreground, as the README has it, until the page answers."""
    with log.open("ab") as out:
        env = {**stack.daemon.env, "COMPOSE_PROJECT_NAME": stack.project, "STREAMFAN_PORT": str(stack.port)}
        env["STREAMFAN_TLS_PORT"] = str(stack.tls_port)
        proc = subprocess.Popen(
            ["docker", "compose", *stack.files, "up", "--build"],
            cwd=stack.directory,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-4000:]
        try:
            with urllib.request.urlopen(stack.url + "/", timeout=5) as resp:
                if resp.status == 200 and b"<html" in resp.read().lower():
                    return proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"the page never answered: {log.read_text()[-4000:]}")


def _down(stack: Stack, proc: "subprocess.Popen[bytes]") -> None:
    stack.compose("down", "-v", "--timeout", "10", timeout=300)
    try:
        proc.wait(60)  # the foreground `up` ends once its containers are gone
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def stack(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = _checkout_copy(tmp_path_factory.mktemp("checkout"))
    stack = Stack(daemon, directory, f"sftest{os.getpid()}", free_port())
    proc = _up(stack, directory.parent / "compose-up.log")
    try:
        yield stack
    finally:
        _down(stack, proc)


async def _converse(base: str, content: str = "Tell me about streams") -> tuple[str, dict[str, str], str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/api/conversations") as resp:
            assert resp.status == 201, await resp.text()
            body = await resp.json()
        auth = {"Authorization": f"Bearer {body['token']}"}
        url = f"{base}/api/conversations/{body['id']}/messages"
        async with session.post(url, json={"content": content}, headers=auth) as resp:
            assert resp.status == 202, await resp.text()
            posted = await resp.json()
        return body["id"], auth, posted["response_id"]


async def _stored_answer(session: aiohttp.ClientSession, base: str, cid: str, auth: dict[str, str]) -> str:
    async with session.get(f"{base}/api/conversations/{cid}", headers=auth) as resp:
        assert resp.status == 200
        return str((await resp.json())["messages"][-1]["content"])


def test_the_page_in_a_browser_streams_an_answer(stack: Stack, context: BrowserContext) -> None:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.url + "/")
    page.fill("#input", "How do Redis streams work?")
    page.press("#input", "Enter")
    page.wait_for_selector("article.msg.assistant:last-of-type[data-status=complete]", timeout=60_000, state="attached")
    text = page.locator("article.msg.assistant").last.inner_text()
    assert len(text) > 100 and errors == []


def _sockets_open(stack: Stack, container: str) -> float:
    probe = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/metrics').read().decode())"
    text = stack.daemon.run("docker", "exec", container, "python", "-c", probe, timeout=30)
    match = re.search(r"^streamfan_sockets_open (\S+)$", text, re.MULTILINE)
    assert match, text[:500]
    return float(match.group(1))


async def test_a_node_killed_mid_answer_its_clients_resume_exactly(stack: Stack) -> None:
    containers = await asyncio.to_thread(stack.server_containers)
    before = {c: await asyncio.to_thread(_sockets_open, stack, c) for c in containers}
    cid, auth, _ = await _converse(stack.url)
    async with aiohttp.ClientSession() as session:
        url = f"{stack.url}/api/conversations/{cid}/events"
        tabs = [asyncio.create_task(follow(session, url, auth, within=90)) for _ in range(3)]
        await asyncio.sleep(1.0)  # connected, and mid-answer (the simulated model takes seconds)
        holding = [c for c in containers if await asyncio.to_thread(_sockets_open, stack, c) >= before[c] + 3]
        assert len(holding) == 1, holding  # the balancer keeps a conversation on one node
        await asyncio.to_thread(stack.daemon.run, "docker", "kill", holding[0])
        results = await asyncio.gather(*tabs)
        expected = await _stored_answer(session, stack.url, cid, auth)
    assert len(expected) > 100
    for received, reconnects in results:
        assert received.text() == expected and len(received.of_type("done")) == 1
        assert_strictly_increasing(received.ids)
        assert reconnects >= 1
    await asyncio.to_thread(stack.compose, "up", "-d", "--wait", "server")  # the killed node back


async def test_redis_restarting_gives_the_nodes_json_503_through_the_balancer(stack: Stack) -> None:
    cid, auth, _ = await _converse(stack.url)
    url = f"{stack.url}/api/conversations/{cid}"
    await asyncio.to_thread(stack.compose, "stop", "redis")
    async with aiohttp.ClientSession() as session:
        try:
            for _ in range(10):
                async with session.get(url, headers=auth) as resp:
                    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
                    assert await resp.json() == NODE_UNAVAILABLE
        finally:
            await asyncio.to_thread(stack.compose, "start", "redis")
        statuses: list[int] = []
        async with asyncio.timeout(30):
            while statuses[-3:] != [200] * 3:
                async with session.get(url, headers=auth) as resp:
                    statuses.append(resp.status)
                    if resp.status != 200:
                        assert await resp.json() == NODE_UNAVAILABLE, statuses
                await asyncio.sleep(0.2)


def test_the_readme_load_test_passes_with_its_defaults(stack: Stack) -> None:
    out = stack.compose("--profile", "loadtest", "run", "--rm", "loadtest", timeout=300)
    assert "OK: nothing lost, doubled or reordered" in out, out[-3000:]
    assert re.search(r"lost / doubled / reordered\s+0 / 0 / 0", out), out[-3000:]


def test_down_removes_every_container_volume_and_network(stack: Stack) -> None:
    assert stack.leftovers()
    stack.compose("--profile", "loadtest", "down", "-v", timeout=300)
    assert stack.leftovers() == []


def test_the_cluster_form_starts_no_standalone_redis_and_answers(
    daemon: Daemon, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = _checkout_copy(tmp_path_factory.mktemp("checkout-cluster"))
    stack = Stack(daemon, directory, f"sftestcl{os.getpid()}", free_port(), CLUSTER_FILES)
    proc = _up(stack, directory.parent / "compose-up.log")
    try:
        services = set(stack.compose("ps", "--format", "{{.Service}}").split())
        assert "redis" not in services and {f"redis-cluster-{i}" for i in range(1, 7)} <= services

        async def one_answer() -> None:
            cid, auth, _ = await _converse(stack.url)
            async with aiohttp.ClientSession() as session:
                url = f"{stack.url}/api/conversations/{cid}/events"
                received, _ = await follow(session, url, auth, within=60)
                assert received.of_type("done")[0]["finish_reason"] == "stop"
                assert received.text() == await _stored_answer(session, stack.url, cid, auth)

        asyncio.run(one_answer())
        info = stack.compose("exec", "-T", "redis-cluster-1", "sh", "-c", CLUSTER_INFO)
        assert "cluster_state:ok" in info and "cluster_size:3" in info
    finally:
        _down(stack, proc)
    assert stack.leftovers() == []


# -- the files alone (no daemon): `docker compose config` -------------------------------------------


def _config(directory: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        ["docker", "compose", *args, "config", "--format", "json"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COMPOSE_PROJECT_NAME": "sfconfig"},
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.timeout(120)
def test_compose_needs_no_env_file_and_a_setting_in_it_reaches_every_process(tmp_path: Path) -> None:
    directory = _checkout_copy(tmp_path)
    bare = _config(directory)["services"]
    assert bare["server"]["environment"]["REDIS_URL_FILE"] == "/secrets/redis_url"
    assert bare["redis"]["command"][:2] == ["redis-server", "/secrets/redis.conf"]
    (directory / ".env").write_text("STREAMFAN_MAX_MESSAGE_CHARS=123\nSTREAMFAN_SIM_TOKENS_PER_SECOND=99\n")
    services = _config(directory)["services"]
    for name in ("server", "producer"):
        assert services[name]["environment"]["STREAMFAN_MAX_MESSAGE_CHARS"] == "123", name
        assert services[name]["environment"]["STREAMFAN_SIM_TOKENS_PER_SECOND"] == "99", name  # .env wins
    assert services["server"]["build"] and all("build" not in services[n] for n in services if n != "server")
    loadtest = _config(directory, "--profile", "loadtest")["services"]["loadtest"]
    assert loadtest["network_mode"] == "service:balancer" and "http://127.0.0.1" in loadtest["command"]
    clustered = _config(directory, *CLUSTER_FILES)["services"]
    assert "redis" not in clustered and "redis-cluster-init" in clustered
    for name in ("server", "producer"):
        assert set(clustered[name]["depends_on"]) == {"secrets-init", "redis-cluster-init"}, name


def test_env_example_names_only_what_compose_or_the_configuration_table_reads() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    table = "\n".join(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `"))
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    assert len(names) >= 5
    unread = [n for n in names if "${" + n not in compose and f"`{n}`" not in table]
    assert unread == []
