"""A measuring instrument, never the product's path: ``DELTAS`` with its guarantees taken out.

Each chunk is appended (``XADD``) and published (``SPUBLISH``) in one call for the whole tick, as
``DELTAS`` does, with the same frame, but with no owner's fence, no index check, no CR refusal and
no data-line escaping: it would append a retried chunk twice and let a text forge SSE fields. It
answers ``{1}`` per chunk, so it fits the side-by-side harness's batch hook
(``../shared/bench/README.md``). What it costs is what a history-keeping relay cannot go below in
one call, so ``DELTAS`` against it is the price of the guarantees:

- ``scripts/redis_cost.py`` sets it beside ``DELTAS`` and the plain pipeline in the same run;
- ``scripts/s2_floor.sh`` runs the harness's S2 with it in place of ``DELTAS`` (a throwaway
  worktree), interleaved with the product.

Standard library only: the harness imports it into its own venv (as it imports ``wire``).
"""

import hashlib
from collections.abc import Sequence
from typing import Any

UNFENCED = r"""
local replies, keep = {}, ARGV[1]
for i = 1, #KEYS do
  local events, data = KEYS[i], ARGV[i + 1]
  local id = redis.call('XADD', events, 'MAXLEN', '~', keep, '*', 't', 'delta', 'd', data)
  redis.call('SPUBLISH', events, 'id: ' .. id .. '\nevent: delta\ndata: ' .. data .. '\n\n')
  replies[i] = {1}
end
if #KEYS == 1 then return replies[1] end
return replies
"""
UNFENCED_SHA = hashlib.sha1(UNFENCED.encode()).hexdigest()


def delta_commands(items: Sequence[tuple[Any, ...]], retention: Any) -> list[tuple[list[str | int], int]]:
    """The harness's hook: one call for the tick's chunks (items: keys, response, owner, index, text)."""
    keys = [item[0].events for item in items]
    return [
        (["EVALSHA", UNFENCED_SHA, len(keys), *keys, retention.max_events, *[item[4] for item in items]], len(items))
    ]


def setup_commands() -> list[list[str]]:
    return [["SCRIPT", "LOAD", UNFENCED]]
