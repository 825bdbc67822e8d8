"""The per-chunk path's script: many chunks appended and published in one atomic call.

``DELTAS`` takes the chunks of one producer tick (or the side-by-side harness's tick) for any
number of answers; ``delta_calls`` groups them into calls: one for them all on a standalone Redis,
one per partition on a cluster, where a script's keys must share a slot. Each chunk is still checked
in the call against its answer's owner and index, so batching changes the cost, never the
guarantee (``tests/test_scripts.py``). ``wire.scripts.delta_commands`` is the same as Redis
commands, the harness's batch hook.

A delta's event data is its text as SSE data lines (each LF starts another ``data:`` line), so an
EventSource's ``event.data`` is the text. It needs nothing else: its answer is the one the latest
``user_message`` or ``regenerate`` event started, its order is its event id, and its time is the
id's milliseconds.
"""

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from wire.env import Retention
from wire.keys import ConversationKeys

DELTAS: Final = r"""
-- Appends and publishes many chunks, of one or many conversations, atomically: the per-chunk path.
-- KEYS: each conversation's ConversationKeys.all (state, messages, draft, events), group by group.
-- ARGV: 1 maxlen, 2 ttl, 3 the producer's clock in ms, 4 G (groups), then per group: channel,
-- response id, owner; then per chunk: group number (1-based), delta index, text (LF line breaks).
-- Replies, one per chunk in order, as DELTA's were: {1, event id} appended; {0} this index was
-- appended already (a retry); {-1} the answer is no longer this owner's; {-2} a cancel was asked
-- (the producer then finishes it); {-3, next index} deltas before this one are missing (a failover
-- lost writes Redis had acknowledged: the producer sends them again); {-4} refused, the text holds
-- a CR (nothing written). A call of one chunk replies with that reply itself.
-- Each chunk's index is checked here, against the owner's fence, as one chunk's call would be;
-- what is per conversation (the state read, 'next', the TTLs) is done once per call.
local MAXLEN, TTL, NOW, G = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local groups, replies = {}, {}
local first = 5 + 3 * G
for a = first, #ARGV, 3 do
  local g, index, text = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2]
  local k = 4 * (g - 1)
  local c = groups[g]
  if not c then
    local st = redis.call('HMGET', KEYS[k + 1], 'active', 'owner', 'next', 'cancel', 'touched')
    local at = 5 + 3 * (g - 1)
    c = {ours = st[1] == ARGV[at + 1] and st[2] == ARGV[at + 2], cancel = st[4], start = tonumber(st[3]) or 0,
         touched = tonumber(st[5]) or 0, channel = ARGV[at]}
    c.next = c.start
    groups[g] = c
  end
  local reply
  if not c.ours then reply = {-1}
  elseif c.cancel then reply = {-2}
  elseif index < c.next then reply = {0}
  elseif index > c.next then reply = {-3, c.next}
  elseif string.find(text, '\r', 1, true) then reply = {-4}
  else
    -- SSE data lines: every LF starts another 'data: ' line, so no text can forge a field.
    local data = text
    if string.find(text, '\n', 1, true) then data = string.gsub(text, '\n', '\ndata: ') end
    -- The answer being written is never trimmed, however long: its text is read from its events.
    local keep = ARGV[1]  -- as it came: a Lua number is formatted again for every call
    if index + 2 > MAXLEN then keep = index + 2 end
    local id = redis.call('XADD', KEYS[k + 4], 'MAXLEN', '~', keep, '*', 't', 'delta', 'd', data)
    redis.call('SPUBLISH', c.channel, 'id: ' .. id .. '\nevent: delta\ndata: ' .. data .. '\n\n')
    c.next = index + 1
    reply = {1, id}
  end
  replies[#replies + 1] = reply
end
for g, c in pairs(groups) do
  if c.next ~= c.start then
    local k = 4 * (g - 1)
    -- The TTLs are refreshed when a quarter of the retention has passed since the last refresh,
    -- so a slow model never outlives them.
    if NOW - c.touched > TTL * 250 then
      redis.call('HSET', KEYS[k + 1], 'next', c.next, 'touched', NOW)
      for j = 1, 4 do redis.call('EXPIRE', KEYS[k + j], TTL) end
    else
      redis.call('HSET', KEYS[k + 1], 'next', c.next)
    end
  end
end
if #replies == 1 then return replies[1] end
return replies
"""

DELTAS_SHA: Final = hashlib.sha1(DELTAS.encode()).hexdigest()

DeltaItem = tuple[ConversationKeys, str, str, int, str]
"""One chunk to append: its conversation's keys, response id, owner, delta index and text."""


@dataclass(frozen=True, slots=True)
class DeltaCall:
    """One ``DELTAS`` call: its keys, its arguments, and which of the items it carries (their
    positions in ``delta_calls``' input, in reply order)."""

    keys: list[str]
    args: list[str | int]
    positions: list[int]

    @property
    def chunks(self) -> int:
        return len(self.positions)


def delta_calls(items: Iterable[DeltaItem], retention: Retention, now_ms: int, *, by_slot: bool) -> list[DeltaCall]:
    """The ``DELTAS`` calls that append ``items`` (in their order), each atomic and fenced.

    ``by_slot``: one call per partition, as a Redis Cluster requires (a script's keys share a
    slot); otherwise one call for them all (a standalone Redis). The producer and the side-by-side
    harness (through ``delta_commands``) both publish through here."""
    batches: dict[int, tuple[list[str], list[str | int], list[str | int], dict[str, int], list[int]]] = {}
    for position, (keys, response_id, owner, index, text) in enumerate(items):
        slot = keys.partition if by_slot else 0
        batch = batches.get(slot)
        if batch is None:
            batch = batches[slot] = ([], [], [], {}, [])
        key_list, group_args, chunk_args, groups, positions = batch
        group = groups.get(keys.conversation_id)
        if group is None:
            group = groups[keys.conversation_id] = len(groups) + 1
            key_list.extend(keys.all)
            group_args.extend((keys.channel, response_id, owner))
        chunk_args.extend((group, index, text))
        positions.append(position)
    return [
        DeltaCall(
            key_list,
            [retention.max_events, retention.ttl_seconds, now_ms, len(groups), *group_args, *chunk_args],
            positions,
        )
        for key_list, group_args, chunk_args, groups, positions in batches.values()
    ]


def delta_replies(reply: Sequence[object], chunks: int) -> Sequence[object]:
    """A ``DELTAS`` reply as one reply per chunk."""
    return [reply] if chunks == 1 else reply
