"""streamfan's wire contract: Redis keys and channels, event schema, SSE encoding, Lua scripts.

Standard library only (and ``support``), so the server, the producer and the tests import it
without importing each other. Nothing outside this package spells a Redis key or an SSE frame by hand.
"""
