"""The layout is the architecture: who may import whom, no import cycles, modules of one job.

Layers, bottom up: ``wire`` (the contract, standard library only); ``redisio`` (Redis I/O the
node and the producer share, knowing only ``wire``); ``server`` (the node), ``producer`` and
``loadtest``, which know only the layers below and never each other; ``launch`` (composition),
which may import them all. An entry point (``__main__``) is composition too.
"""

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from wire.keys import ID_PATTERN

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("support", "wire", "redisio", "server", "producer", "loadtest", "launch")
ALLOWED = {
    "support": set(),
    "wire": {"support"},
    "redisio": {"support", "wire"},
    "server": {"support", "wire", "redisio"},
    "producer": {"support", "wire", "redisio"},
    "loadtest": {"support", "wire"},
    "launch": {"support", "wire", "redisio", "server", "producer", "loadtest"},
}
MAX_LINES = 300
LONG_REASON = "Longer than 300 lines:"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_package_imports_only_the_layers_below_it(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    allowed = ALLOWED["launch"] | {"launch"} if path.name == "__main__.py" else ALLOWED[package]
    for name in imports(path):
        top = name.split(".")[0]
        if top in PACKAGES and top != package:
            assert top in allowed, f"{path.relative_to(ROOT)} imports {name}"
        if package == "wire" and top not in PACKAGES:
            assert top in sys.stdlib_module_names, f"wire must stay standard-library only: {name}"


def test_no_import_cycles() -> None:
    known = {module_name(p): p for p in sources()}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        graph[name] = {i for i in imports(path) if i in known and i != name}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def long_files() -> list[Path]:
    candidates = [*sources(), *(ROOT / "tests").glob("*.py"), *(ROOT / "web" / "js").glob("*.js")]
    return [p for p in candidates if len(p.read_text().splitlines()) > MAX_LINES]


@pytest.mark.parametrize("path", long_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_long_module_says_why_at_its_top(path: Path) -> None:
    head = "\n".join(path.read_text().splitlines()[:12])
    assert LONG_REASON in head, f"{path.relative_to(ROOT)} has over {MAX_LINES} lines and no reason at its top"


def test_every_module_says_its_job() -> None:
    missing = [
        str(p.relative_to(ROOT))
        for p in sources()
        if p.stat().st_size and ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert missing == []


BROKER_MODULE = "launch/embedded_broker.py"


def test_no_test_double_outside_the_embedded_brokers_module() -> None:
    """fakeredis is the embedded broker's concern alone: no other module imports it, names it, or
    carries a workaround for it (production paths run as they run against Redis)."""
    named = [
        str(path.relative_to(ROOT))
        for path in sources()
        if str(path.relative_to(ROOT)) != BROKER_MODULE and "fakeredis" in path.read_text().lower()
    ]
    assert named == []


def test_the_page_and_the_node_agree_on_what_a_conversation_id_is() -> None:
    """The page routes ``/c/<id>`` by its own copy of the pattern (a module cannot import Python)."""
    api_js = (ROOT / "web" / "js" / "api.js").read_text()
    match = re.search(r"export const CONVERSATION_PATH = /\^\\/c\\/\((.+)\)\$/;", api_js)
    assert match is not None
    assert match.group(1) == ID_PATTERN
