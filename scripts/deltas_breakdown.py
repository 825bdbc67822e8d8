"""Where ``DELTAS`` spends Redis' CPU: ``scripts/redis_cost.py`` run on variants of the script.

Each variant removes one part of the per-chunk path (a measuring instrument only: none of them is
safe to ship), so the difference to ``as-is`` is that part's cost, in the same run as the floor
(a plain pipeline of XADD + SPUBLISH of the same chunks):

- ``no-fence``: no fence (the INCRBY per answer per call);
- ``bare``: no fence, no XADD, no SPUBLISH: what is left is the call itself and the Lua around it;
- ``empty``: a script that only returns one reply per chunk: the cost of the call's arguments.

    .venv/bin/python scripts/deltas_breakdown.py VARIANT [N]
"""

import asyncio
import hashlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wire import deltas, scripts  # noqa: E402

BASE = deltas.DELTAS
FENCE = "    local v = redis.call('INCRBY', fence, n == 1 and '1' or n)  -- a Lua number is formatted per call"
FENCE_FAKE = "    local v = B + first + n"
XADD = "  local id = redis.call('XADD', events, 'MAXLEN', '~', keep, '*', 't', 'delta', 'd', data)"
SPUBLISH = "  redis.call('SPUBLISH', events, 'id: ' .. id .. '\\nevent: delta\\ndata: ' .. data .. '\\n\\n')"


def variants(chunks_per_call: int) -> dict[str, str]:
    no_fence = BASE.replace(FENCE, FENCE_FAKE)
    bare = no_fence.replace(XADD, "  local id = '1-1'").replace(SPUBLISH, "")
    empty = f"local r = {{}}\nfor i = 1, {chunks_per_call} do r[i] = {{1}} end\nreturn r\n"
    found = {"as-is": BASE, "no-fence": no_fence, "bare": bare, "empty": empty}
    for name, text in found.items():
        assert name in ("as-is", "empty") or text != BASE, f"{name}: the script changed; update the variants"
    return found


def main() -> None:
    name, n = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "40000"
    text = variants(50)[name]
    scripts.DELTAS = text  # type: ignore[misc]
    scripts.DELTAS_SHA = hashlib.sha1(text.encode()).hexdigest()  # type: ignore[misc]
    spec = importlib.util.spec_from_file_location("redis_cost", ROOT / "scripts" / "redis_cost.py")
    assert spec is not None and spec.loader is not None
    cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost)
    sys.argv = ["redis_cost.py", n]
    asyncio.run(cost.main())


if __name__ == "__main__":
    main()
