"""Typed keys of the state a node keeps on its aiohttp application (no module-level state)."""

from aiohttp import web
from redis.asyncio import Redis, RedisCluster

from server.access import Gate
from server.durable_store import DurableStore
from server.errors import ErrorShape
from server.hub import Hub
from server.metrics import NodeMetrics
from server.settings import Settings
from server.store import ConversationStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey[Redis | RedisCluster]("redis")
STORE = web.AppKey("store", ConversationStore)
DURABLE = web.AppKey("durable", DurableStore)
HUB = web.AppKey("hub", Hub)
METRICS = web.AppKey("metrics", NodeMetrics)
GATE = web.AppKey("gate", Gate)
PATH_ERROR_SHAPES = web.AppKey("path_error_shapes", dict[str, ErrorShape])
"""Path prefixes whose unrouted requests (404, 405) answer in a dialect's error shape (``/v1/``)."""
