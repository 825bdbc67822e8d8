"""The per-chunk path's script: many chunks appended and published in one atomic call.

``DELTAS`` takes the chunks of one producer tick (or the side-by-side harness's tick) for any
number of answers; ``delta_calls`` groups them into calls: one for them all on a standalone Redis,
one per partition on a cluster, where a script's keys must share a slot. Each chunk is still checked
in the call against its answer's owner and index, so batching changes the cost, never the
guarantee (``tests/test_scripts.py``). ``wire.scripts.delta_commands`` is the same as Redis
commands, the harness's batch hook.

What a chunk costs Redis is what this module is shaped by (``docs/benchmarks.md``: a plain pipeline
of XADD + SPUBLISH is the floor). The fence is one ``INCRBY`` per answer per call on the owner's
counter (``ConversationKeys.fence``), which both checks the index and advances it; the state hash is
neither read nor written per chunk; a chunk carries its text and little else (the call's arguments
were a third of its cost); and the TTLs are refreshed only in the calls the producer asks it of.

A delta's event data is its text as SSE data lines (each LF starts another ``data:`` line), so an
EventSource's ``event.data`` is the text. It needs nothing else: its answer is the one the latest
``user_message`` or ``regenerate`` event started, its order is its event id, and its time is the
id's milliseconds.
"""

import hashlib
import itertools
import operator
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from wire.env import Retention
from wire.keys import ConversationKeys

FENCE_BASE: Final = 1 << 40
"""A live fence holds ``FENCE_BASE + next index``; a cancelled one its negation; a finished or
taken-over answer has none. An ``INCRBY`` on a missing counter gives a small positive number, so
it is told apart from a live one without a read (and deleted again)."""

DELTAS: Final = r"""
-- Appends and publishes many chunks, of one or many answers, atomically: the per-chunk path.
-- KEYS, per group (one answer's consecutive chunks): its owner's fence (ConversationKeys.fence),
-- its events stream. ARGV: 1 maxlen, 2 the groups' chunk counts, comma-separated ('' when every
-- group has one chunk, as when one producer tick carries one chunk of each answer), 3 every
-- chunk's token count, comma-separated ('' when every chunk is one token, the common case), then
-- per group its first index; then every group's texts (LF line breaks), group by group; then,
-- only when TTLs are due, the TTL and the groups whose keys it refreshes.
-- An index counts the model's tokens, not deltas: a delta of n tokens moves the fence by n (the
-- producer sends the tokens that came while the answer's previous call was in flight as one).
-- Replies, one per chunk in order: {1} appended; {0} this index was appended already (a retry);
-- {-1} the answer is no longer this owner's; {-2} a cancel was asked (the producer then finishes
-- it); {-3, next index} deltas before this one are missing (a failover lost writes Redis had
-- acknowledged: the producer sends them again); {-4} refused, the text holds a CR (nothing
-- written). A call of one chunk replies with that reply itself.
local B = FENCE_BASE
local MAXLEN = tonumber(ARGV[1])
local G = #KEYS / 2
local APPENDED, DUPLICATE, NOT_OURS, CANCELLED, HOLDS_CR = {1}, {0}, {-1}, {-2}, {-4}
local replies, r = {}, 0

local function append(events, index, text)
  -- SSE data lines: every LF starts another 'data: ' line, so no text can forge a field. The
  -- channel is the events key's name (ConversationKeys.channel).
  local data = text
  if string.find(text, '\n', 1, true) then data = string.gsub(text, '\n', '\ndata: ') end
  -- The answer being written is never trimmed, however long: its text is read from its events.
  local keep = ARGV[1]  -- as it came: a Lua number is formatted again for every call
  if index + 2 > MAXLEN then keep = index + 2 end
  local id = redis.call('XADD', events, 'MAXLEN', '~', keep, '*', 't', 'delta', 'd', data)
  redis.call('SPUBLISH', events, 'id: ' .. id .. '\nevent: delta\ndata: ' .. data .. '\n\n')
end

local counts = {}
if ARGV[2] ~= '' then
  for count in string.gmatch(ARGV[2], '%d+') do counts[#counts + 1] = tonumber(count) end
end
local tokens
if ARGV[3] ~= '' then
  tokens = {}
  for count in string.gmatch(ARGV[3], '%d+') do tokens[#tokens + 1] = tonumber(count) end
end
local t = 4 + G
local k = 0  -- the chunks of the groups before this one (an offset into tokens)
for g = 1, G do
  local fence, events = KEYS[2 * g - 1], KEYS[2 * g]
  local first, n = tonumber(ARGV[3 + g]), counts[g] or 1
  local total = n  -- the group's tokens
  if tokens then
    total = 0
    for i = k + 1, k + n do total = total + tokens[i] end
  end
  local clean = true
  for i = t, t + n - 1 do
    if string.find(ARGV[i], '\r', 1, true) then clean = false; break end
  end
  local prev
  if clean then
    -- The common case in one command: the counter was at 'first', so every chunk is the next.
    local v = redis.call('INCRBY', fence, total == 1 and '1' or total)  -- a Lua number is formatted per call
    if v == B + first + total then
      local index = first
      for i = 0, n - 1 do
        append(events, index, ARGV[t + i])
        index = index + (tokens and tokens[k + 1 + i] or 1)
        r = r + 1; replies[r] = APPENDED
      end
    else
      prev = redis.call('DECRBY', fence, total)
    end
  else
    prev = tonumber(redis.call('GET', fence)) or 0
  end
  if prev and prev >= B then
    -- A retry, a gap or a CR: chunk by chunk, as one chunk's call would be.
    -- A retried delta is sent again as it was first sent (the same tokens), so an index below
    -- the fence is a whole delta appended already.
    local start = prev - B
    local nxt = start
    local index = first
    for i = 0, n - 1 do
      local text, size = ARGV[t + i], tokens and tokens[k + 1 + i] or 1
      local reply
      if index < nxt then reply = DUPLICATE
      elseif index > nxt then reply = {-3, nxt}
      elseif string.find(text, '\r', 1, true) then reply = HOLDS_CR
      else
        append(events, index, text)
        nxt = nxt + size
        reply = APPENDED
      end
      index = index + size
      r = r + 1; replies[r] = reply
    end
    if nxt ~= start then redis.call('INCRBY', fence, nxt - start) end
  elseif prev then
    if prev == 0 then redis.call('DEL', fence) end  -- made by the INCRBY above: it was not ours
    local reply = NOT_OURS
    if prev < 0 then reply = CANCELLED end
    for _ = 1, n do r = r + 1; replies[r] = reply end
  end
  t = t + n
  k = k + n
end
if t <= #ARGV then
  -- The TTLs: the producer asks for them when a quarter of the retention has passed since it last
  -- did, so a slow model never outlives them, and no chunk pays for them otherwise.
  local ttl = ARGV[t]
  for i = t + 1, #ARGV do
    local g = tonumber(ARGV[i])
    local base = string.sub(KEYS[2 * g], 1, -7)
    redis.call('EXPIRE', KEYS[2 * g - 1], ttl)
    redis.call('EXPIRE', KEYS[2 * g], ttl)
    redis.call('EXPIRE', base .. 'state', ttl)
    redis.call('EXPIRE', base .. 'messages', ttl)
  end
end
if r == 1 then return replies[1] end
return replies
""".replace("FENCE_BASE", str(FENCE_BASE))

DELTAS_SHA: Final = hashlib.sha1(DELTAS.encode()).hexdigest()

DeltaItem = tuple[ConversationKeys, str, int, str, int]
"""One delta to append: its conversation's keys, its answer's fence (``ConversationKeys.fence``:
the answer and its owner in one name, made once per answer, not per chunk), index (of its first
token), text, and how many of the model's tokens it carries."""


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


def delta_calls(
    items: Iterable[DeltaItem], retention: Retention, *, by_slot: bool, touch: Collection[str] = ()
) -> list[DeltaCall]:
    """The ``DELTAS`` calls that append ``items`` (in their order), each atomic and fenced.

    ``by_slot``: one call per partition, as a Redis Cluster requires (a script's keys share a
    slot); otherwise one call for them all (a standalone Redis). ``touch``: the conversations whose
    TTLs the calls refresh. The producer and the side-by-side harness (through ``delta_commands``)
    both publish through here."""
    if not by_slot:
        return [_delta_call(list(enumerate(items)), retention, touch)]
    by_partition: dict[int, list[tuple[int, DeltaItem]]] = {}
    for position, item in enumerate(items):
        by_partition.setdefault(item[0].partition, []).append((position, item))
    return [_delta_call(batch, retention, touch) for batch in by_partition.values()]


def _delta_call(items: list[tuple[int, DeltaItem]], retention: Retention, touch: Collection[str]) -> DeltaCall:
    """One call for ``items`` (with their positions), grouped into runs of one answer's
    consecutive chunks: a chunk joins the group before it when it is the next of the same run, so
    the replies (group by group) stay in the items' order. Run per chunk, so built in
    comprehensions; the loop that finds runs only runs when two neighbours share a fence (the
    producer's calls carry one delta per answer: ``producer_alone.py calls``)."""
    texts = [item[3] for _, item in items]
    sizes = [item[4] for _, item in items]
    fences = [item[1] for _, item in items]
    if any(map(operator.eq, fences, itertools.islice(fences, 1, None))):
        keys, firsts, counts, touched = _groups(items, touch)
    else:  # every chunk a group of its own
        keys = [key for _, item in items for key in (item[1], item[0].events)]
        firsts = [item[2] for _, item in items]
        counts = []
        touched = [g for g, (_, item) in enumerate(items, 1) if item[0].conversation_id in touch] if touch else []
    runs = ",".join(map(str, counts)) if counts and len(counts) != len(texts) else ""
    tokens = ",".join(map(str, sizes)) if sizes.count(1) != len(sizes) else ""
    args: list[str | int] = [retention.max_events, runs, tokens, *firsts, *texts]
    if touched:
        args += (retention.ttl_seconds, *touched)
    return DeltaCall(keys, args, [position for position, _ in items])


def _groups(
    items: list[tuple[int, DeltaItem]], touch: Collection[str]
) -> tuple[list[str], list[int], list[int], list[int]]:
    """``items`` in runs: each group's keys, first index and chunk count, and the groups (from 1)
    whose TTLs are refreshed."""
    keys: list[str] = []
    firsts: list[int] = []
    counts: list[int] = []
    touched: list[int] = []
    last_fence = ""
    """The last group's fence: its answer and owner (the chunks Redis counts together)."""
    last_next = -1
    """The index the last group's next chunk would have."""
    for _, (conversation, fence, index, _text, size) in items:
        if index == last_next and fence == last_fence:
            counts[-1] += 1
        else:
            keys += (fence, conversation.events)
            firsts.append(index)
            counts.append(1)
            if touch and conversation.conversation_id in touch:
                touched.append(len(firsts))
            last_fence = fence
        last_next = index + size
    return keys, firsts, counts, touched


def delta_replies(reply: Sequence[object], chunks: int) -> Sequence[object]:
    """A ``DELTAS`` reply as one reply per chunk."""
    return [reply] if chunks == 1 else reply
