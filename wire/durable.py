"""Durable Streams (issue 25) on Redis: names, offsets and the scripts that change a stream.

The storage core the ``/v1/stream/{path}`` endpoints are built on (the HTTP layer is the next
step). A Durable Stream is three keys in one partition's slot, so a Redis Cluster serves it: its
configuration (a hash), its messages (a Redis Stream, one entry per message: a POST's body, or each
element of a JSON array) and its idempotent producers' state (a hash). Offsets are the entries' ids
re-encoded: ``<ms>-<seq>`` does not sort as a string, the protocol's offsets must, so each is
``<ms:12 hex>_<seq:16 hex>``, fixed width, URL-safe, and never ``-1`` or ``now``.

Appending is one script: the content type, ``Stream-Seq`` and the producer's epoch and sequence
are checked and the messages and the producer's new state are written in the same atomic call, the
protocol's recommended form, so a retry after a lost reply or a crash is never a duplicate.
"""

import hashlib
import re
import zlib
from dataclasses import dataclass, field
from typing import Final

from wire.keys import PARTITIONS, PREFIX, partition_tag

START_OFFSET: Final = "000000000000_0000000000000000"
"""The tail offset of a stream with no message (before every real offset)."""
_OFFSET_RE: Final = re.compile(r"\A([0-9a-f]{12})_([0-9a-f]{16})\Z")
MAX_PATH_BYTES: Final = 1024


def offset_of(entry_id: str) -> str:
    """The protocol offset of a Redis Stream entry id."""
    ms, seq = entry_id.split("-")
    return f"{int(ms):012x}_{int(seq):016x}"


def entry_id_of(offset: str) -> str | None:
    """The entry id an offset names, or None when it is not one of ours (a 400)."""
    match = _OFFSET_RE.match(offset)
    if match is None:
        return None
    return f"{int(match[1], 16)}-{int(match[2], 16)}"


@dataclass(frozen=True, slots=True)
class DurableKeys:
    """The Redis names of one Durable Stream, from its path (hashed: a path is any URL text)."""

    path: str
    partition: int = field(init=False)
    meta: str = field(init=False)
    """Hash: ``type`` (content type), ``ttl``, ``expires_at`` as created, ``seq`` (last Stream-Seq)."""
    log: str = field(init=False)
    """Redis Stream: one entry per message, its bytes in field ``d``."""
    producers: str = field(init=False)
    """Hash: producer id → ``<epoch>:<last seq>``."""
    channel: str = field(init=False)
    """Shard channel: ``APPEND`` publishes the new tail id on it, ``DELETE`` that it is gone."""

    def __post_init__(self) -> None:
        raw = self.path.encode()
        partition = zlib.crc32(raw) % PARTITIONS
        base = f"{PREFIX}:{partition_tag(partition)}:ds:{hashlib.sha256(raw).hexdigest()[:32]}"
        object.__setattr__(self, "partition", partition)
        for name in ("meta", "log", "producers", "channel"):
            object.__setattr__(self, name, f"{base}:{'live' if name == 'channel' else name}")

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.meta, self.log, self.producers)


_TAIL: Final = r"""
local function tail()
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  return last and last[1] or '0-0'
end

local function notify(id)
  -- Readers waiting on this node or any other (DurableKeys.channel) read on from their offsets.
  redis.call('SPUBLISH', string.sub(KEYS[1], 1, -5) .. 'live', id)
end

local function refresh_expiry(ttl)
  -- Stream-TTL slides: each read or write starts it again. Stream-Expires-At does not move, and the
  -- keys made after the stream take its expiry (a stream with either expires whole).
  if ttl and ttl ~= '' then
    local ms = math.max(1, tonumber(ttl) * 1000)
    for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ms) end
    return
  end
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then
    redis.call('PEXPIRE', KEYS[2], left)
    redis.call('PEXPIRE', KEYS[3], left)
  end
end
"""

CREATE: Final = (
    _TAIL
    + r"""
-- KEYS = DurableKeys.all. ARGV: 1 content type, 2 TTL seconds ('' none), 3 expires-at as given
-- ('' none), 4 expiry in ms from now ('' none), 5 '1' to create it closed, then the initial messages.
-- Returns {'created', tail, closed}, {'exists', tail, closed} (same configuration: idempotent) or
-- {'conflict'}.
local st = redis.call('HMGET', KEYS[1], 'type', 'ttl', 'expires_at', 'closed')
if st[1] then
  if st[1] == ARGV[1] and (st[2] or '') == ARGV[2] and (st[3] or '') == ARGV[3] then
    return {'exists', tail(), st[4] or ''}
  end
  return {'conflict'}
end
redis.call('HSET', KEYS[1], 'type', ARGV[1], 'ttl', ARGV[2], 'expires_at', ARGV[3], 'closed', ARGV[5])
for i = 6, #ARGV do redis.call('XADD', KEYS[2], '*', 'd', ARGV[i]) end
if ARGV[4] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
refresh_expiry(nil)
return {'created', tail(), ARGV[5]}
"""
)

APPEND: Final = (
    _TAIL
    + r"""
-- KEYS = DurableKeys.all. ARGV: 1 content type, 2 Stream-Seq ('' none), 3 producer id ('' none),
-- 4 producer epoch, 5 producer seq, 6 '1' to close the stream after these messages, then the
-- messages (none: a close alone).
-- Returns, nothing written unless said: {'appended', tail, closed} (with a producer: its new state
-- is stored in the same call); {'missing'}; {'type'} (another content type); {'seq', last}
-- (Stream-Seq not above the last); {'stale', epoch} (a zombie: an older epoch); {'epoch_seq'} (a
-- new epoch must start at seq 0); {'gap', expected}; {'duplicate', tail, last seq, closed} (a
-- retry: already here); {'closed', tail} (the stream is closed: nothing more may be appended).
local st = redis.call('HMGET', KEYS[1], 'type', 'seq', 'ttl', 'closed')
if not st[1] then return {'missing'} end
local producer, epoch, seq = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local closed = st[4] == '1'
if producer ~= '' then
  local state = redis.call('HGET', KEYS[3], producer)
  if state then
    local e, s = string.match(state, '^(%d+):(%d+)$')
    e, s = tonumber(e), tonumber(s)
    if epoch < e then return {'stale', e} end
    if epoch == e then
      if seq <= s then return {'duplicate', tail(), s, st[4] or ''} end
      if seq > s + 1 then return {'gap', s + 1} end
    elseif seq ~= 0 then
      return {'epoch_seq'}
    end
  elseif seq ~= 0 then
    return {'gap', 0}
  end
end
if closed then
  if #ARGV == 6 and ARGV[6] == '1' then return {'appended', tail(), '1'} end  -- closing again
  return {'closed', tail()}
end
if #ARGV > 6 and st[1] ~= ARGV[1] then return {'type'} end
-- Byte-wise comparison: Redis runs Lua in the C locale.
if ARGV[2] ~= '' and st[2] and st[2] ~= '' and ARGV[2] <= st[2] then return {'seq', st[2]} end
for i = 7, #ARGV do redis.call('XADD', KEYS[2], '*', 'd', ARGV[i]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'seq', ARGV[2]) end
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'closed', '1') end
if producer ~= '' then redis.call('HSET', KEYS[3], producer, ARGV[4] .. ':' .. ARGV[5]) end
refresh_expiry(st[3])
local id = tail()
notify(id)
return {'appended', id, ARGV[6]}
"""
)

READ: Final = r"""
-- KEYS = DurableKeys.all. ARGV: 1 the entry id to read after ('0-0' = from the start, '+' = the
-- tail: nothing), 2 most bytes (at least one message is returned).
-- Returns false when the stream does not exist, else {content type, first retained id, tail id,
-- id of the last message returned (or ARGV[1]), '1' when the stream is closed, message, ...}. A read
-- starts a sliding Stream-TTL again.
local st = redis.call('HMGET', KEYS[1], 'type', 'ttl', 'closed')
local kind = st[1]
if not kind then return false end
if st[2] and st[2] ~= '' then
  local ms = math.max(1, tonumber(st[2]) * 1000)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ms) end
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
local tail = last and last[1] or '0-0'
local reply = {kind, first and first[1] or '0-0', tail, ARGV[1], st[3] or ''}
if ARGV[1] == '+' then reply[4] = tail; return reply end
local budget = tonumber(ARGV[2])
local after = ARGV[1]
while budget > 0 do
  local page = redis.call('XRANGE', KEYS[2], '(' .. after, '+', 'COUNT', 64)
  if #page == 0 then break end
  for _, entry in ipairs(page) do
    local data = entry[2][2]
    if #reply > 5 and #data > budget then budget = 0; break end
    reply[#reply + 1] = data
    reply[4] = entry[1]
    after = entry[1]
    budget = budget - #data
    if budget <= 0 then break end
  end
end
return reply
"""

META: Final = r"""
-- KEYS = DurableKeys.all. Returns false when the stream does not exist, else {content type, tail
-- id, Stream-TTL as created, Stream-Expires-At as created, ms left before it expires (-1 never),
-- '1' when closed}. Metadata does not start a sliding TTL again.
local st = redis.call('HMGET', KEYS[1], 'type', 'ttl', 'expires_at', 'closed')
if not st[1] then return false end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
return {st[1], last and last[1] or '0-0', st[2] or '', st[3] or '', redis.call('PTTL', KEYS[1]), st[4] or ''}
"""

DELETE: Final = r"""
-- KEYS = DurableKeys.all. Returns 1 when the stream existed (its keys are gone; its waiting readers
-- are woken to find it gone), else 0.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SPUBLISH', string.sub(KEYS[1], 1, -5) .. 'live', 'deleted')
return 1
"""
