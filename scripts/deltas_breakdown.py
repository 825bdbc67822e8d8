"""Where ``DELTAS`` spends Redis' CPU: ``scripts/redis_cost.py`` run on variants of the script.

Each variant removes one part of the per-chunk path (a measuring instrument only: none of them is
safe to ship), so the difference to ``as-is`` is that part's cost, in the same run as the floor
(a plain pipeline of XADD + SPUBLISH of the same chunks):

- ``no-fence``: no state read or write (HMGET + HSET per conversation per call);
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
FENCE_READ = "    local st = redis.call('HMGET', KEYS[k + 1], 'active', 'owner', 'next', 'cancel', 'touched')"
FENCE_FAKE = "    local st = {ARGV[5 + 3 * (g - 1) + 1], ARGV[5 + 3 * (g - 1) + 2], index, false, NOW}"
FENCE_WRITE = "      redis.call('HSET', KEYS[k + 1], 'next', c.next)\n"
XADD = "    local id = redis.call('XADD', KEYS[k + 4], 'MAXLEN', '~', keep, '*', 't', 'delta', 'd', data)"
SPUBLISH = "    redis.call('SPUBLISH', c.channel, 'id: ' .. id .. '\\nevent: delta\\ndata: ' .. data .. '\\n\\n')"


def variants(chunks_per_call: int) -> dict[str, str]:
    no_fence = BASE.replace(FENCE_READ, FENCE_FAKE).replace(FENCE_WRITE, "")
    bare = no_fence.replace(XADD, "    local id = '1-1'").replace(SPUBLISH, "")
    empty = f"local r = {{}}\nfor i = 1, {chunks_per_call} do r[i] = {{1, '1-1'}} end\nreturn r\n"
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
