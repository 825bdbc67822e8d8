"""Redis commands and scripts pipelined on one long-lived connection, for the hot paths.

The calls of one event-loop turn go out in one write; replies are read by one task and matched to
their calls in order (Redis answers in order). A call therefore costs no pool checkout, no task, no
timeout context and no coroutine wake-up of its own: redis-py's per-call path was the largest part
of the producer's CPU per chunk and of the node's per new stream (docs/measurements.md, pipe).

Only for redis-py's own connection class to a standalone Redis (``pipe_for``); callers keep redis-py
for a cluster (its pipelines route by slot) and for the embedded broker.

Invariants (this class owns them):
- a call's future is resolved exactly once: with its reply, with the error Redis replied, with
  ``ConnectionError`` when the connection is lost before its reply (callers send idempotent calls
  again), or with ``DataError`` when it cannot be encoded (it alone: the turn's others go out);
- a reply is never matched to the wrong call: a connection that failed is dropped, never reused;
- a script call refused with NOSCRIPT (Redis restarted and lost its script cache) is sent again once
  as ``EVAL`` with the script's source, which caches it again.
"""

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError

log = logging.getLogger(__name__)

_REPLY_TIMEOUT = 10.0
"""Seconds without a reply while calls are waiting before the connection counts as dead (checked
once per timeout, so one to two of them)."""

_READ_SIZE = 65536  # bytes read from the socket at most at a time (redis-py's default)


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest().encode())


def pack(items: list[Any]) -> bytes:
    """One command in RESP, by hiredis's encoder (C): redis-py's costs several times more per
    argument, and the hand-written one this replaced 2.5 times more per ``DELTAS`` call of 50
    chunks (52 against 21 µs, ``timeit``, the same bytes). Raises ``UnicodeEncodeError`` for text
    that is not valid Unicode (a lone surrogate)."""
    packed: bytes = hiredis.pack_command(tuple(items))
    return packed


@dataclass(slots=True)
class _Call:
    args: list[Any]
    """The command; for a script, what follows ``EVALSHA sha`` (numkeys, keys, arguments)."""
    script: Script | None
    future: "asyncio.Future[Any]"
    retried: bool = False

    def packed(self) -> bytes:
        script = self.script
        if script is None:
            return pack(self.args)
        if self.retried:
            return pack([b"EVAL", script.source, *self.args])
        return pack([b"EVALSHA", script.sha, *self.args])


def native(connection_class: type[AbstractConnection]) -> bool:
    """Is this redis-py's own connection class, whose parser may be read directly? (Not a test double's.)"""
    return connection_class.read_response is AbstractConnection.read_response


def pipe_for(redis: "Redis | RedisCluster") -> "CommandPipe | None":
    """A pipe for ``redis`` when it is redis-py's own connection to a standalone Redis; else None."""
    if isinstance(redis, Redis) and native(redis.connection_pool.connection_class):
        return CommandPipe(redis)
    return None


class CommandPipe:
    def __init__(self, redis: Redis, *, reply_timeout: float = _REPLY_TIMEOUT) -> None:
        """``reply_timeout``: seconds without a reply while calls wait before the connection counts
        as dead. Calls wait no longer than the loop turn for company (docs/measurements.md,
        pipe-window)."""
        self._pool = redis.connection_pool
        self._reply_timeout = reply_timeout
        self._conn: AbstractConnection | None = None
        self._queued: list[_Call] = []
        """Calls of this turn (or waiting for a connection), not written yet."""
        self._sent: deque[_Call] = deque()
        """Calls written on the current connection, oldest first, waiting for their replies."""
        self._reads = 0
        """Socket reads so far, on any connection: progress, for the watchdog."""
        self._reads_seen = 0
        self._watchdog: asyncio.TimerHandle | None = None
        """Fails the connection when calls wait and nothing was read for a reply timeout."""
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        """Failed connections being closed and given back to the pool."""
        self._closed = False

    def script(self, script: Script, keys: list[str], args: list[str | int]) -> "asyncio.Future[Any]":
        """Run ``script`` with this turn's other calls; its reply (or error) arrives in the future.
        Cancelling the future before the turn ends withdraws the call."""
        return self._queue(_Call([len(keys), *keys, *args], script, asyncio.get_running_loop().create_future()))

    def command(self, *args: str | bytes | int) -> "asyncio.Future[Any]":
        """Send one command with this turn's other calls (its raw reply: bytes, not str)."""
        return self._queue(_Call(list(args), None, asyncio.get_running_loop().create_future()))

    def _queue(self, call: _Call) -> "asyncio.Future[Any]":
        if self._closed:
            call.future.set_exception(RedisConnectionError("the connection to Redis is closed"))
            return call.future
        self._queued.append(call)
        self._schedule_flush()
        return call.future

    def _schedule_flush(self) -> None:
        """Write what is queued at the end of this loop turn (once, however many calls come)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        conn = self._conn
        if conn is None:
            if self._connecting is None and not self._closed:
                self._connecting = asyncio.get_running_loop().create_task(self._connect(), name="redis-pipe-connect")
            return  # sent once connected
        calls = [call for call in self._queued if not call.future.done()]
        self._queued = []
        if not calls:
            return
        writer: Any = conn._writer
        if writer is None or writer.is_closing():
            # Closed while idle (Redis, a proxy or TLS ended it): these calls were never sent, so
            # they go out on a new connection; the closed one is replaced, never kept.
            self._queued = calls
            self._lost(conn, RedisConnectionError("connection to Redis lost"))
            return
        packed: list[bytes] = []
        sent = self._sent
        for call in calls:
            try:
                packed.append(call.packed())
            except UnicodeEncodeError as exc:
                # A caller's text no encoder takes (a lone surrogate): that call fails alone. Raised
                # here, it would lose the turn's other calls, their futures never resolved.
                call.future.set_exception(DataError(f"cannot send this call to Redis: {exc}"))
                continue
            sent.append(call)
        # No drain: at most one call per answer is in flight, so what is buffered is bounded.
        writer.write(b"".join(packed))
        if self._watchdog is None:
            self._watch()

    async def _connect(self) -> None:
        try:
            conn: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            self._drop(exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc)), self._queued)
            self._queued = []
            return
        finally:
            self._connecting = None
        if self._closed:
            await self._pool.release(conn)
            return
        self._conn = conn
        self._reader = asyncio.get_running_loop().create_task(self._read(conn), name="redis-pipe-reader")
        self._flush()

    async def _read(self, conn: AbstractConnection) -> None:
        """Match replies to calls until the connection fails; then fail what waits, and drop it.

        Reads the connection's socket itself, parsing with a hiredis reader of its own (errors
        mapped to redis-py's exceptions as its parser maps them): redis-py's ``read_response`` is a
        coroutine, a stream read and a timeout scope per reply, which were most of the producer's
        Python per ``DELTAS`` call (docs/measurements.md, pipe-reader). A reply nobody waits for is
        a broken connection."""
        replies = hiredis.Reader(replyError=conn._parser.parse_error)
        stream: asyncio.StreamReader = conn._reader  # type: ignore[assignment]
        sent = self._sent
        try:
            while True:
                data = await stream.read(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                self._reads += 1
                replies.feed(data)
                reply = replies.gets()
                while reply is not False:
                    if type(reply) is hiredis.PushNotification:
                        # Unasked (RESP3: a server's maintenance notice, an invalidation): not a reply.
                        reply = replies.gets()
                        continue
                    if not sent:
                        raise RedisConnectionError("a reply nobody asked for")
                    self._resolve(sent[0], reply)  # popped after: a failure drops it with the rest
                    sent.popleft()
                    reply = replies.gets()
        except (RedisError, OSError, hiredis.ProtocolError) as exc:
            log.warning("pipelined connection to Redis lost (%r)", exc)
            self._lost(conn, RedisConnectionError(f"connection to Redis lost: {exc!r}"))
        except Exception as exc:  # a bug: never leave calls waiting on a reader that is gone
            log.exception("pipelined connection reader failed")
            self._lost(conn, RedisConnectionError(f"connection to Redis dropped: {exc!r}"))
        except BaseException:
            self._lost(conn, RedisConnectionError("the connection to Redis is closed"))
            raise

    def _watch(self) -> None:
        """Check, a reply timeout from now, that anything was read from Redis meanwhile (one timer
        per timeout, not one per call)."""
        self._reads_seen = self._reads
        self._watchdog = asyncio.get_running_loop().call_later(self._reply_timeout, self._check)

    def _check(self) -> None:
        self._watchdog = None
        conn = self._conn
        if conn is None or not self._sent:
            return  # nothing waits: the next write watches again
        if self._reads == self._reads_seen:
            log.warning("no reply from Redis in %.1f s", self._reply_timeout)
            self._lost(conn, RedisConnectionError(f"no reply from Redis in {self._reply_timeout} s"))
        else:
            self._watch()

    def _resolve(self, call: _Call, reply: Any) -> None:
        if call.future.done():
            return  # its caller is gone (cancelled): the reply is simply not needed
        if isinstance(reply, NoScriptError) and call.script is not None and not call.retried:
            call.retried = True  # Redis restarted: EVAL with the source caches the script again
            self._queued.append(call)
            self._schedule_flush()
        elif isinstance(reply, Exception):
            call.future.set_exception(reply)
        else:
            call.future.set_result(reply)

    def _lost(self, conn: AbstractConnection, error: RedisError) -> None:
        if self._conn is not conn:
            return  # replaced already (the writer found it closed, or its reader failed first)
        reader = self._reader
        self._conn = None
        self._reader = None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()  # it waits on the closed connection (or for calls) and would never end
        self._drop(error, self._sent)
        self._sent.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        # Replies may still be on the way: the connection is closed, never given back for reuse.
        closing = asyncio.get_running_loop().create_task(self._discard(conn))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        if self._queued:
            self._schedule_flush()  # a new connection for what is queued

    async def _discard(self, conn: AbstractConnection) -> None:
        with contextlib.suppress(RedisError, OSError):
            await conn.disconnect(nowait=True)
        await self._pool.release(conn)

    @staticmethod
    def _drop(error: RedisError, calls: "list[_Call] | deque[_Call]") -> None:
        for call in calls:
            if not call.future.done():
                call.future.set_exception(error)

    async def aclose(self) -> None:
        """Fail what waits and give the connection up."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        tasks = [task for task in (self._connecting, self._reader) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # they end by cancellation; this task's own is not swallowed
        if self._closing:
            await asyncio.wait(list(self._closing))
        self._drop(RedisConnectionError("the connection to Redis is closed"), self._queued)
        self._queued = []
