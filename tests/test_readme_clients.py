"""The README's client snippets, run exactly as printed against a real node (issue 22).

Only the base URL ``http://127.0.0.1:8080`` is pointed at the test's node; the key comes from the
environment variable the snippets read. The browser snippet runs unchanged: its ``useChat`` hook is
rendered by React in a page (``tests/node/render_hook.mjs``) whose relative URLs resolve to the node.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from launch.processes import RedisServer
from tests.conftest import API_KEY, ROOT, Proc

pytestmark = pytest.mark.timeout(120)

README_URL = "http://127.0.0.1:8080"
NODE_DIR = ROOT / "tests" / "node"


def snippet(language: str, first_line: str) -> str:
    """The README's ``language`` block that starts with ``first_line``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    found = [block for block in blocks if block.startswith(first_line)]
    assert len(found) == 1, f"the README has {len(found)} {language} blocks starting {first_line!r}"
    return str(found[0])


def node_js() -> str:
    found = shutil.which("node")
    assert found is not None, "Node.js is missing: ./scripts/test.sh installs it"
    assert (NODE_DIR / "node_modules" / "@ai-sdk" / "react").exists(), "run ./scripts/test.sh: it installs tests/node"
    return found


def beside_the_packages(tmp_path: Path, name: str, code: str) -> Path:
    """``code`` as a module that imports the tests' Node packages (as an app's own node_modules)."""
    (tmp_path / "node_modules").symlink_to(NODE_DIR / "node_modules")
    path = tmp_path / name
    path.write_text(code)
    return path


def env() -> dict[str, str]:
    return {**os.environ, "STREAMFAN_API_KEY": API_KEY}


def test_the_python_snippet(keyed_nodes: list[Proc]) -> None:
    code = snippet("python", "# The official OpenAI Python SDK").replace(README_URL, keyed_nodes[0].url)
    done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["Hi", "Hi again"]  # the tests' model echoes the prompt


def test_the_js_server_snippet(keyed_nodes: list[Proc], tmp_path: Path) -> None:
    code = snippet("js", "// The official JS SDK").replace(README_URL, keyed_nodes[0].url)
    path = beside_the_packages(tmp_path, "server.mjs", code)
    done = subprocess.run([node_js(), str(path)], env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hi"


def test_the_browser_use_chat_snippet(keyed_nodes: list[Proc], tmp_path: Path) -> None:
    code = snippet("js", "// In the browser, with React")
    assert README_URL not in code and "STREAMFAN_API_KEY" not in code  # no server-wide key in a browser
    path = beside_the_packages(tmp_path, "chat.mjs", code)
    text = "hello from useChat — naïve 🚀"
    done = subprocess.run(
        [node_js(), str(NODE_DIR / "render_hook.mjs"), keyed_nodes[0].url + "/", str(path), text],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": "ready", "role": "assistant", "text": text, "error": None}


@pytest.fixture
def durable_node(redis_process: RedisServer, spawn: Callable[..., Proc]) -> Proc:
    """A node serving Durable Streams to key holders (STREAMFAN_DURABLE_STREAMS=keys) on real Redis."""
    return spawn(
        "server", {"REDIS_URL": redis_process.url, "STREAMFAN_API_KEYS": API_KEY, "STREAMFAN_DURABLE_STREAMS": "keys"}
    )


def test_the_durable_streams_python_snippet(durable_node: Proc) -> None:
    code = snippet("python", "# Durable Streams with the official Python client").replace(README_URL, durable_node.url)
    done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[{'n': 1}, {'n': 2}]"


def test_the_durable_streams_typescript_snippet(durable_node: Proc, tmp_path: Path) -> None:
    code = snippet("js", "// Durable Streams with the official TypeScript client").replace(README_URL, durable_node.url)
    path = beside_the_packages(tmp_path, "durable.mjs", code)
    done = subprocess.run([node_js(), str(path)], env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"n": 1}, {"n": 2}]
