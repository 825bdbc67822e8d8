"""The Lua scripts that change a conversation: each is one atomic Redis round trip.

Longer than 300 lines: the scripts share one prelude (how an event is appended and published, how
an answer is finished), so their rules are read in one place. The per-chunk script is
``wire.deltas``; ``delta_commands`` and ``setup_commands`` below are its side-by-side harness hook.

Appending an event to the history stream and publishing its SSE frame (SPUBLISH on the
conversation's shard channel, which lives in the slot of its keys) happen in the same script,
so the live path and every replay agree on ids and bytes (the frame is ``wire.sse.encode_event``'s
output). Retention is applied on every write: the stream is capped with
``MAXLEN ~`` and all of the conversation's keys expire ``ttl`` seconds after its last event.

Conversation scripts take ``KEYS = ConversationKeys.all`` (state, messages, draft, events) and
``ARGV = channel, maxlen, ttl, ...`` followed by their own arguments, listed in each docstring.
The state hash holds: ``active`` (response id), ``phase``, ``owner`` (producer running it),
``start`` (the event that started the active answer: its deltas follow it in the stream, which
holds the answer's text once), ``cancel`` ("1" once asked), ``first_id`` (first event ever). The
next index (the answer's tokens so far: a delta may carry several) is the owner's fence counter
(``wire.deltas``): START makes it, CANCEL negates it, FINISH, a takeover and DELETE remove it.
The ``draft`` key and the state's ``next`` are no longer written (the answer's text is read from
the stream, the index from the fence); scripts still delete them, for conversations written by
earlier versions.
"""

from collections.abc import Sequence
from typing import Final

from wire.deltas import DELTAS, DELTAS_SHA, FENCE_BASE, delta_calls
from wire.env import Retention
from wire.keys import ConversationKeys

_FENCE: Final = (
    f"""
local FENCE_BASE = {FENCE_BASE}
"""
    + r"""
local function fence_key(rid, owner)
  -- ConversationKeys.fence: KEYS[1] is the state, '<base>:state'.
  return string.sub(KEYS[1], 1, -6) .. 'fence:' .. rid .. ':' .. owner
end

local function answer_fence()
  -- The active answer's fence and its next index, in tokens (nil, 0 when no producer runs it).
  local st = redis.call('HMGET', KEYS[1], 'active', 'owner')
  if not (st[1] and st[2]) then return nil, 0 end
  local key = fence_key(st[1], st[2])
  local v = tonumber(redis.call('GET', key))
  if not v then return key, 0 end
  if v < 0 then v = -v end
  return key, v - FENCE_BASE
end
"""
)

_ANSWER_TEXT: Final = r"""
local function answer_text(state, events)
  -- The text of the conversation's latest answer and how many delta events hold it (a delta may
  -- carry many tokens: the fence counts those), from the stream. Stored once: a
  -- draft beside the stream cost every chunk an APPEND (a quarter of its Redis CPU). The answer's
  -- events are never trimmed while it is written (DELTAS keeps at least the answer's own).
  local start = redis.call('HGET', state, 'start')
  if not start then return '', 0 end
  local parts = {}
  for _, entry in ipairs(redis.call('XRANGE', events, '(' .. start, '+')) do
    local f = entry[2]
    if f[2] == 'delta' then
      local d = f[4]
      if string.find(d, '\n', 1, true) then d = string.gsub(d, '\ndata: ', '\n') end
      parts[#parts + 1] = d
    end
  end
  return table.concat(parts), #parts
end
"""

_PRELUDE: Final = (
    _ANSWER_TEXT
    + _FENCE
    + r"""
local unpack = unpack or table.unpack
local STATE, MESSAGES, DRAFT, EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local CHANNEL, MAXLEN, TTL = ARGV[1], ARGV[2], ARGV[3]

local function publish_event(etype, data)
  -- Appending is the first write of every script, so a refused event leaves nothing half done.
  -- Data is SSE data lines: no CR, and every LF starts another 'data: ' line, so no data can
  -- forge a field or end its event early. Plain finds, not a pattern (docs/measurements.md, lua-find).
  if string.find(data, '\r', 1, true) then error('event data must not hold CR') end
  if string.find(data, '\n', 1, true) then
    local _, lines = string.gsub(data, '\n', '')
    local _, continued = string.gsub(data, '\ndata: ', '')
    if lines ~= continued then error('event data must be data lines') end
  end
  local id = redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 't', etype, 'd', data)
  redis.call('SPUBLISH', CHANNEL, 'id: ' .. id .. '\nevent: ' .. etype .. '\ndata: ' .. data .. '\n\n')
  return id
end

local function append_event(etype, data)
  -- Every event but a delta may be a conversation's first: it records the first id ever
  -- (replays from the start check it was not trimmed away). A delta always follows its answer's
  -- user message or regenerate event, so the per-chunk script skips that write.
  local id = publish_event(etype, data)
  redis.call('HSETNX', STATE, 'first_id', id)
  return id
end

local function touch(fence)
  for _, key in ipairs(KEYS) do
    if key ~= KEYS[5] then redis.call('EXPIRE', key, TTL) end
  end
  if fence then redis.call('EXPIRE', fence, TTL) end
end

local function finish(rid, reason, status, done, err, usage)
  -- The done event says how many delta events the answer has, so a client can check it saw them all.
  local fence = answer_fence()
  local content, chunks = answer_text(STATE, EVENTS)  -- before done's append trims the stream to its bound
  local body = cjson.decode(done)
  body['chunks'] = chunks
  local id = append_event('done', cjson.encode(body))
  local message = {id = rid, role = 'assistant', content = content, status = status, finish_reason = reason}
  if err and err ~= '' then message['error'] = err end
  if usage and usage ~= '' then message['usage'] = cjson.decode(usage) end
  local replaces = redis.call('HGET', STATE, 'replaces')
  if replaces then message['replaces'] = replaces end
  redis.call('RPUSH', MESSAGES, cjson.encode(message))
  redis.call('HDEL', STATE, 'active', 'phase', 'owner', 'cancel', 'next', 'replaces', 'start')
  redis.call('DEL', DRAFT)
  if fence then redis.call('DEL', fence) end
  touch()
  return id
end
"""
)

POST_MESSAGE: Final = (
    _PRELUDE
    + r"""
-- KEYS[5] = the partition's jobs stream. ARGV: 4 response id, 5 user message record, 6 user_message
-- event data, 7 most jobs waiting in the partition, 8 idempotency key, 9 message id, 10 messages kept,
-- 11 the post's fingerprint (what it asks), 12.. job fields as name, value pairs.
-- Returns {1, reply} (posted), {2, reply} (this idempotency key posted already: the same reply,
-- so a retry after a lost reply is answered, never doubled), {3, ''} (this key posted already with
-- another body: a client bug that would lose a message, refused), {0, active response id} while an
-- answer is still generating, or {-1, ''} when the jobs backlog is full (nothing written). The
-- reply is the JSON {message_id, response_id, event_id}. Jobs are never trimmed: a job in the
-- stream is an answer someone waits for.
local st = redis.call('HMGET', STATE, 'active', 'idem_key', 'idem_reply', 'idem_body')
if ARGV[8] ~= '' and st[2] == ARGV[8] and st[3] then
  if st[4] and st[4] ~= ARGV[11] then return {3, ''} end
  return {2, st[3]}
end
if st[1] then return {0, st[1]} end
if redis.call('XLEN', KEYS[5]) >= tonumber(ARGV[7]) then return {-1, ''} end
local id = append_event('user_message', ARGV[6])
local reply = cjson.encode({message_id = ARGV[9], response_id = ARGV[4], event_id = id})
redis.call('RPUSH', MESSAGES, ARGV[5])
redis.call('LTRIM', MESSAGES, -tonumber(ARGV[10]), -1)
redis.call('HSET', STATE, 'active', ARGV[4], 'phase', 'queued', 'start', id, 'idem_key', ARGV[8],
  'idem_reply', reply, 'idem_body', ARGV[11])
redis.call('HDEL', STATE, 'cancel', 'owner')
redis.call('DEL', DRAFT)
touch()
redis.call('XADD', KEYS[5], '*', unpack(ARGV, 12))
return {1, reply}
"""
)

REGENERATE: Final = (
    _PRELUDE
    + r"""
-- KEYS[5] = the partition's jobs stream. ARGV: 4 new response id, 5 the answer it replaces, 6 most
-- jobs waiting in the partition, 7 conversation id, 8 max tokens.
-- A new version of the conversation's last answer, for the same user message: a 'regenerate'
-- event (the new response id, the one it replaces, the user message) and a job for it. The old
-- version stays in the history; the new one is stored with 'replaces'.
-- Returns {1, event id}, {0, active response id} while an answer is generating, {-1, ''} when the
-- jobs backlog is full, or {-2, ''} when ARGV[5] is not the last answer (nothing written).
local active = redis.call('HGET', STATE, 'active')
if active then return {0, active} end
-- The prompt is the last user message; the answers after it are its versions. The search is
-- bounded so a script never reads a whole history: past this many versions, regenerating is refused.
local SEARCHED = 50
local messages = redis.call('LRANGE', MESSAGES, -SEARCHED, -1)
local last_answer, prompt
for i = #messages, 1, -1 do
  local message = cjson.decode(messages[i])
  if message['role'] == 'assistant' and not last_answer then last_answer = message['id'] end
  if message['role'] == 'user' then prompt = message; break end
end
if last_answer ~= ARGV[5] or not prompt then return {-2, ''} end
if redis.call('XLEN', KEYS[5]) >= tonumber(ARGV[6]) then return {-1, ''} end
local id = append_event('regenerate', cjson.encode({
  response_id = ARGV[4], replaces = ARGV[5], message_id = prompt['id']}))
redis.call('HSET', STATE, 'active', ARGV[4], 'phase', 'queued', 'start', id, 'replaces', ARGV[5])
redis.call('HDEL', STATE, 'cancel', 'owner')
redis.call('DEL', DRAFT)
touch()
redis.call('XADD', KEYS[5], '*', 'conversation_id', ARGV[7], 'response_id', ARGV[4],
  'message_id', prompt['id'], 'prompt', prompt['content'], 'max_tokens', ARGV[8])
return {1, id}
"""
)

START: Final = (
    _PRELUDE
    + r"""
-- ARGV: 4 response id, 5 owner, 6 done data for a cancelled answer, 7 '1' when the job was recovered
-- from a producer that stopped.
-- Returns {status, next index} (the tokens the answer holds):
--   'ok': generating, owned by ARGV[5]; also when it already was, so a retry whose first reply was
--         lost goes on instead of leaving the answer without an owner;
--   'resume': a recovered job taken over mid-answer from a producer that stopped (now ARGV[5]'s);
--   'gone' (not the active answer any more), 'cancelled' (cancelled while queued: finished here),
--   'taken' (another, live producer runs it).
if redis.call('HGET', STATE, 'active') ~= ARGV[4] then return {'gone', 0} end
if redis.call('HGET', STATE, 'cancel') then
  finish(ARGV[4], 'cancelled', 'cancelled', ARGV[6])
  return {'cancelled', 0}
end
local st = redis.call('HMGET', STATE, 'phase', 'owner')
if st[1] == 'queued' then
  local fence = fence_key(ARGV[4], ARGV[5])
  redis.call('SET', fence, FENCE_BASE)
  redis.call('HSET', STATE, 'phase', 'generating', 'owner', ARGV[5])
  touch(fence)
  return {'ok', 0}
end
local old, next_index = answer_fence()
if st[2] == ARGV[5] then return {'ok', next_index} end
if ARGV[7] == '1' then
  -- The stopped producer's fence goes: a chunk it still sends is refused.
  if old then redis.call('DEL', old) end
  local fence = fence_key(ARGV[4], ARGV[5])
  redis.call('SET', fence, FENCE_BASE + next_index)
  redis.call('HSET', STATE, 'owner', ARGV[5])
  touch(fence)
  return {'resume', next_index}
end
return {'taken', next_index}
"""
)

ANSWER_TEXT: Final = (
    _ANSWER_TEXT
    + r"""
-- KEYS: 1 state, 2 events. The text of the latest answer so far (a producer taking it over).
return (answer_text(KEYS[1], KEYS[2]))
"""
)

FINISH: Final = (
    _PRELUDE
    + r"""
-- ARGV: 4 response id, 5 owner ('' = whoever owns it: recovery of an abandoned answer),
-- 6 finish reason, 7 message status, 8 done event data, 9 (optional) why it failed, 10 (optional)
-- messages kept, 11 (optional) the model's usage as JSON.
-- Stores the assistant message (its content is the concatenation of the deltas) and publishes done.
-- Returns the done event's id, or false if the answer is not active (finished already) or not ours.
if redis.call('HGET', STATE, 'active') ~= ARGV[4] then return false end
if ARGV[5] ~= '' and redis.call('HGET', STATE, 'owner') ~= ARGV[5] then return false end
local id = finish(ARGV[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[11])
if ARGV[10] then redis.call('LTRIM', MESSAGES, -tonumber(ARGV[10]), -1) end
return id
"""
)

CANCEL: Final = (
    _PRELUDE
    + r"""
-- ARGV: 4 response id, 5 done data for a cancelled answer.
-- Returns 'cancelled' (it was still queued: finished here), 'requested' (the producer running it
-- will stop at its next chunk and finish it), or 'gone' (it is not the active answer).
if redis.call('HGET', STATE, 'active') ~= ARGV[4] then return 'gone' end
if redis.call('HGET', STATE, 'phase') == 'queued' then
  finish(ARGV[4], 'cancelled', 'cancelled', ARGV[5])
  return 'cancelled'
end
redis.call('HSET', STATE, 'cancel', '1')
-- The owner's next chunk is refused as cancelled (the counter keeps the index, negated).
local fence = answer_fence()
local v = fence and tonumber(redis.call('GET', fence))
if v and v > 0 then redis.call('SET', fence, -v, 'KEEPTTL') end
return 'requested'
"""
)

REPLAY: Final = r"""
-- KEYS: 1 state, 2 events. ARGV: 1 cursor (an event id; '0-0' = from the start), 2 page size,
-- 3 (optional) most bytes of event data a page holds (at least one event).
-- Returns {'ok', head id, entries after the cursor}, {'more', head id, entries} when the byte bound
-- cut the page short (read on after its last entry), or {'reset', head id, reason}: a cursor that
-- is not in the history (trimmed, or from history Redis lost), or a start that was trimmed away,
-- is never answered with a silent gap. The byte bound is what a node holds per replaying client,
-- whatever the size of the events (200 events are 20 KB or 12 MB).
local cursor, count, budget = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function page(entries)
  if not budget then return {'ok', entries} end
  local size = 0
  for i, entry in ipairs(entries) do
    size = size + #entry[2][4] + 64
    if size > budget and i > 1 then
      local kept = {}
      for j = 1, i - 1 do kept[j] = entries[j] end
      return {'more', kept}
    end
  end
  return {'ok', entries}
end
local head = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local head_id = head[1] and head[1][1] or '0-0'
if cursor == '0-0' then
  local first_id = redis.call('HGET', KEYS[1], 'first_id')
  if first_id then
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
    if not first[1] or first[1][1] ~= first_id then return {'reset', head_id, 'trimmed'} end
  end
  local p = page(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', count))
  return {p[1], head_id, p[2]}
end
if #redis.call('XRANGE', KEYS[2], cursor, cursor) == 0 then
  return {'reset', head_id, 'unknown_cursor'}
end
local p = page(redis.call('XRANGE', KEYS[2], '(' .. cursor, '+', 'COUNT', count))
return {p[1], head_id, p[2]}
"""

SNAPSHOT: Final = (
    _ANSWER_TEXT
    + r"""
-- KEYS = ConversationKeys.all. ARGV: 1 most messages, 2 position to end before ('' = the newest).
-- Returns {messages, active response id, phase, draft, last event id, position of the first
-- message returned, messages kept in all, generation}, read atomically: the snapshot is exactly
-- the history up to that event id.
local st = redis.call('HMGET', KEYS[1], 'active', 'phase', 'gen')
local head = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
local total = redis.call('LLEN', KEYS[2])
local stop = total
if ARGV[2] ~= '' then stop = math.min(total, math.max(0, tonumber(ARGV[2]))) end
local start = math.max(0, stop - tonumber(ARGV[1]))
local messages = {}
if stop > start then messages = redis.call('LRANGE', KEYS[2], start, stop - 1) end
local draft = false
if st[1] then draft = (answer_text(KEYS[1], KEYS[4])) end
return {messages, st[1], st[2], draft, head[1] and head[1][1] or '0-0', start, total,
        tonumber(st[3]) or 0}
"""
)

DELETE: Final = (
    _FENCE
    + r"""
-- KEYS = ConversationKeys.all. ARGV: 1 how long the tombstone lives (the longest a token lives).
-- Deletes the conversation and revokes every token issued for it: the state keeps only the next
-- generation, so older tokens are refused. An answer being generated stops at its next chunk (its
-- fence goes with the rest). Returns the new generation.
local generation = (tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0) + 1
local fence = answer_fence()
if fence then redis.call('DEL', fence) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'gen', generation)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return generation
"""
)


def conversation_argv(channel: str, max_events: int, ttl_seconds: int, *rest: str | int) -> list[str | int]:
    """The ARGV every conversation script starts with, then the script's own arguments."""
    return [channel, max_events, ttl_seconds, *rest]


def delta_commands(
    items: Sequence[tuple[ConversationKeys, str, str, int, str]], retention: Retention
) -> list[tuple[list[str | int], int]]:
    """``delta_calls`` as Redis commands (argv, chunks): the side-by-side harness's batch hook
    (``shared/bench``), which sends them pipelined to a standalone Redis. Its items are a token
    each (its contract predates coalescing)."""
    calls = delta_calls(
        [(keys, keys.fence(response_id, owner), index, text, 1) for keys, response_id, owner, index, text in items],
        retention,
        by_slot=False,
    )
    return [(["EVALSHA", DELTAS_SHA, len(call.keys), *call.keys, *call.args], call.chunks) for call in calls]


def setup_commands() -> list[list[str]]:
    """What the harness sends once before it publishes: the per-chunk script, cached."""
    return [["SCRIPT", "LOAD", DELTAS]]
