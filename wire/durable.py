"""Durable Streams (issue 25) on Redis: names, offsets and the scripts that change a stream.

Longer than 300 lines: the scripts share their helpers (tail, expiry, notification), and every one
of them must agree on the configuration hash's fields; split, that agreement would be in no place.

The storage core of the ``/v1/stream/{path}`` endpoints. A Durable Stream is three keys in one
partition's slot, so a Redis Cluster serves it: its configuration (a hash), its messages (a Redis
Stream, one entry per message: a POST's body, or each element of a JSON array) and its idempotent
producers' state (a hash). Offsets are the entries' ids
re-encoded: ``<ms>-<seq>`` does not sort as a string, the protocol's offsets must, so each is
``<ms:16 hex>_<seq:16 hex>``, fixed width, URL-safe, and never ``-1`` or ``now``.

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

START_OFFSET: Final = "0000000000000000_0000000000000000"
"""The tail offset of a stream with no message (before every real offset)."""
_OFFSET_RE: Final = re.compile(r"\A([0-9a-f]{16})_([0-9a-f]{16})\Z")
MAX_PATH_BYTES: Final = 1024


def offset_of(entry_id: str) -> str:
    """The protocol offset of a Redis Stream entry id."""
    ms, seq = entry_id.split("-")
    return f"{int(ms):016x}_{int(seq):016x}"


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
    """Hash: ``type`` (content type), ``ttl``, ``expires_at`` as created, ``seq`` (last Stream-Seq),
    ``closed``, ``public`` (anyone may read it), and for forks ``origin`` (the fork's request, to
    tell a repeat from a conflict) and ``source`` (the path forked); ``forks`` counts the forks made
    of it, and ``deleted`` marks a stream deleted while forks of it lived (gone, kept until the
    last fork goes)."""
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

    def staging(self, token: str) -> str:
        """Where a fork's inherited messages are copied before it exists (``CREATE`` renames it)."""
        return f"{self.meta[: -len(':meta')]}:staging:{token}"


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

local function id_le(a, b)
  -- Stream ids compared as numbers (their parts may exceed what a Lua number holds exactly).
  local function less(x, y) return #x < #y or (#x == #y and x < y) end
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if ams ~= bms then return less(ams, bms) end
  return aseq == bseq or less(aseq, bseq)
end
"""

CREATE: Final = (
    _TAIL
    + r"""
-- KEYS = DurableKeys.all + a staging key (a fork's inherited messages, renamed into the log). ARGV:
-- 1 content type, 2 TTL seconds ('' none), 3 expires-at ('' none), 4 expiry in ms from now ('' none),
-- 5 '1' to create it closed, 6 a fork's origin ('' not a fork), 7 the path it forks, 8 '1' when
-- anyone may read it (public), then the initial messages. Returns {'created', tail, closed},
-- {'exists', tail, closed} (the same request again: idempotent) or {'conflict'} (another
-- configuration, or a deleted stream its forks keep).
local st = redis.call('HMGET', KEYS[1], 'type', 'ttl', 'expires_at', 'closed', 'deleted', 'origin')
if st[1] then
  redis.call('DEL', KEYS[4])
  local same = st[5] ~= '1' and st[1] == ARGV[1] and (st[6] or '') == ARGV[6]
  if same and (ARGV[6] ~= '' or ((st[2] or '') == ARGV[2] and (st[3] or '') == ARGV[3])) then
    return {'exists', tail(), st[4] or ''}
  end
  return {'conflict'}
end
redis.call('DEL', KEYS[2], KEYS[3])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('RENAME', KEYS[4], KEYS[2])
  redis.call('PERSIST', KEYS[2])
end
redis.call('HSET', KEYS[1], 'type', ARGV[1], 'ttl', ARGV[2], 'expires_at', ARGV[3])
redis.call('HSET', KEYS[1], 'closed', ARGV[5], 'public', ARGV[8])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'origin', ARGV[6], 'source', ARGV[7]) end
for i = 9, #ARGV do redis.call('XADD', KEYS[2], '*', 'd', ARGV[i]) end
if ARGV[4] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
refresh_expiry(nil)
return {'created', tail(), ARGV[5]}
"""
)

FORK_SOURCE: Final = (
    _TAIL
    + r"""
-- KEYS = the source's DurableKeys.all. ARGV: 1 the fork's content type ('' the source's), 2 the
-- entry id to fork at ('' the tail), 3 the sub-offset (bytes into the next message; for JSON,
-- messages after the offset). Counts one more fork of the source (``RELEASE`` counts it back)
-- and returns {'ok', content type, ttl, expires_at, ms left (-1 never), the last entry id to copy,
-- the id of a message cut short ('' none), its first sub-offset bytes}, or {'missing'}, {'gone'}
-- (deleted), {'type'} (the fork names another content type), {'beyond'} (past the tail), {'sub'}
-- (a sub-offset past the message, or the messages, that follow).
local st = redis.call('HMGET', KEYS[1], 'type', 'ttl', 'expires_at', 'deleted')
if not st[1] then return {'missing'} end
if st[4] == '1' then return {'gone'} end
if ARGV[1] ~= '' and ARGV[1] ~= st[1] then return {'type'} end
local last = tail()
local at = ARGV[2] == '' and last or ARGV[2]
if not id_le(at, last) then return {'beyond'} end
local sub = tonumber(ARGV[3])
local upto, cut_id, cut = at, '', ''
if sub > 0 then
  local json = st[1] == 'application/json'
  local after = redis.call('XRANGE', KEYS[2], '(' .. at, '+', 'COUNT', json and sub or 1)
  if json then
    if #after < sub then return {'sub'} end
    upto = after[sub][1]
  else
    if #after == 0 or #after[1][2][2] < sub then return {'sub'} end
    cut_id, cut = after[1][1], string.sub(after[1][2][2], 1, sub)
  end
end
redis.call('HINCRBY', KEYS[1], 'forks', 1)
return {'ok', st[1], st[2] or '', st[3] or '', redis.call('PTTL', KEYS[1]), upto, cut_id, cut}
"""
)

RELEASE: Final = r"""
-- KEYS = DurableKeys.all of a stream a fork was made of, once that fork is gone (or was never
-- made). Returns {'collected', the path it forked ('' none)} when it was deleted and this was its
-- last fork (its keys are gone now), else {'kept'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'kept'} end
local forks = redis.call('HINCRBY', KEYS[1], 'forks', -1)
local st = redis.call('HMGET', KEYS[1], 'deleted', 'source')
if st[1] == '1' and forks <= 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return {'collected', st[2] or ''}
end
return {'kept'}
"""

APPEND: Final = (
    _TAIL
    + r"""
-- KEYS = DurableKeys.all. ARGV: 1 content type, 2 Stream-Seq ('' none), 3 producer id ('' none),
-- 4 producer epoch, 5 producer seq, 6 '1' to close the stream after these messages, then the
-- messages (none: a close alone).
-- Returns, nothing written unless said: {'appended', tail, closed} (with a producer: its new state
-- is stored in the same call); {'missing'}; {'gone'} (deleted, kept for its forks); {'type'}
-- (another content type); {'seq', last} (Stream-Seq not above the last); {'stale', epoch} (a
-- zombie: an older epoch); {'epoch_seq'} (a new epoch must start at seq 0); {'gap', expected};
-- {'duplicate', tail, last seq, closed} (a retry: already here); {'closed', tail} (the stream is
-- closed: nothing more may be appended).
local st = redis.call('HMGET', KEYS[1], 'type', 'seq', 'ttl', 'closed', 'deleted')
if not st[1] then return {'missing'} end
if st[5] == '1' then return {'gone'} end
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
-- Returns false when the stream does not exist, 410 when it was deleted (kept for its forks), else
-- {content type, first retained id, tail id, id of the last message returned (or ARGV[1]), '1' when
-- the stream is closed, '1' when it is public, message, ...}. A read starts a sliding Stream-TTL again.
local st = redis.call('HMGET', KEYS[1], 'type', 'ttl', 'closed', 'deleted', 'public')
local kind = st[1]
if not kind then return false end
if st[4] == '1' then return 410 end
if st[2] and st[2] ~= '' then
  local ms = math.max(1, tonumber(st[2]) * 1000)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ms) end
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
local tail = last and last[1] or '0-0'
local reply = {kind, first and first[1] or '0-0', tail, ARGV[1], st[3] or '', st[5] or ''}
if ARGV[1] == '+' then reply[4] = tail; return reply end
local budget = tonumber(ARGV[2])
local after = ARGV[1]
while budget > 0 do
  local page = redis.call('XRANGE', KEYS[2], '(' .. after, '+', 'COUNT', 64)
  if #page == 0 then break end
  for _, entry in ipairs(page) do
    local data = entry[2][2]
    if #reply > 6 and #data > budget then budget = 0; break end
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
-- KEYS = DurableKeys.all. Returns false when the stream does not exist, 410 when it was deleted
-- (kept for its forks), else {content type, tail id, Stream-TTL as created, Stream-Expires-At as
-- created, ms left before it expires (-1 never), '1' when closed, '1' when public}. Metadata does
-- not start a sliding TTL again.
local st = redis.call('HMGET', KEYS[1], 'type', 'ttl', 'expires_at', 'closed', 'deleted', 'public')
if not st[1] then return false end
if st[5] == '1' then return 410 end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
local left = redis.call('PTTL', KEYS[1])
return {st[1], last and last[1] or '0-0', st[2] or '', st[3] or '', left, st[4] or '', st[6] or ''}
"""

DELETE: Final = r"""
-- KEYS = DurableKeys.all. Returns {'missing'}, {'gone'} (deleted already, kept for its forks),
-- {'kept'} (deleted now, but its forks keep it: it answers 410 until the last of them goes) or
-- {'deleted', the path it forked ('' none)}: its keys are gone. Waiting readers are woken to find it
-- gone.
local st = redis.call('HMGET', KEYS[1], 'type', 'deleted', 'forks', 'source')
if not st[1] then return {'missing'} end
if st[2] == '1' then return {'gone'} end
redis.call('SPUBLISH', string.sub(KEYS[1], 1, -5) .. 'live', 'deleted')
if tonumber(st[3] or '0') > 0 then
  redis.call('HSET', KEYS[1], 'deleted', '1')
  return {'kept'}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return {'deleted', st[4] or ''}
"""
