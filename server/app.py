"""``create_app``: a node's aiohttp application, with its Redis client injected."""

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from redis.asyncio import Redis, RedisCluster

from server import api, durable_conversation, durable_http, durable_streams, health
from server.access import Gate
from server.context import DURABLE, GATE, HUB, METRICS, PATH_ERROR_SHAPES, REDIS, SETTINGS, STORE
from server.dialects import ai_sdk, chat, openai, responses
from server.durable_store import DurableStore
from server.errors import ErrorShape, Handler, JSONError, guarded
from server.http_policy import apply_headers, fallback
from server.hub import Hub
from server.metrics import NodeMetrics
from server.mux_endpoint import stream_many
from server.settings import Settings
from server.sse_endpoint import stream_events
from server.store import ConversationStore

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"


def create_app(settings: Settings, redis: "Redis | RedisCluster") -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[REDIS] = redis
    app[GATE] = Gate.from_settings(settings)
    store = ConversationStore(redis, settings.retention, replay_page_bytes=settings.replay_page_bytes)
    app[STORE] = store
    app[DURABLE] = DurableStore(redis)
    metrics = app[METRICS] = NodeMetrics()
    hub = app[HUB] = Hub(
        redis,
        store,
        grace_seconds=settings.unsubscribe_grace_seconds,
        timeout_seconds=settings.redis_timeout_seconds,
        replay_page=settings.replay_page_events,
        heartbeat_seconds=settings.heartbeat_seconds,
        orphan_seconds=settings.retention.orphan_seconds,
        metrics=metrics,
    )
    metrics.bind(lambda: hub.connection_count, lambda: hub.channel_count)
    app.cleanup_ctx.append(_run_hub)
    app.on_shutdown.append(_end_streams)
    app.on_response_prepare.append(apply_headers)

    routes: list[tuple[str, str, Handler, ErrorShape | None]] = [
        ("POST", "/api/conversations", api.create_conversation, None),
        ("GET", "/api/conversations/{conversation_id}", api.get_conversation, None),
        ("POST", "/api/conversations/{conversation_id}/messages", api.post_message, None),
        ("POST", "/api/conversations/{conversation_id}/cancel", api.cancel_answer, None),
        ("POST", "/api/conversations/{conversation_id}/regenerate", api.regenerate_answer, None),
        ("DELETE", "/api/conversations/{conversation_id}", api.delete_conversation, None),
        ("GET", "/healthz", health.healthz, None),
        ("GET", "/readyz", health.readyz, None),
        ("GET", "/metrics", health.metrics, None),
    ]
    if settings.api_keys:  # the OpenAI-compatible endpoints exist only with keys
        in_openai_shape: ErrorShape = openai.OpenAIError.of
        shapes: dict[str, ErrorShape] = {"/v1/": in_openai_shape}
        app[PATH_ERROR_SHAPES] = shapes
        routes += [
            ("POST", "/v1/chat/completions", chat.chat_completions, in_openai_shape),
            ("GET", "/v1/models", openai.list_models, in_openai_shape),
            ("POST", "/v1/responses", responses.create, in_openai_shape),
            ("GET", "/v1/responses/{response_id}", responses.retrieve, in_openai_shape),
            ("POST", "/v1/responses/{response_id}/cancel", responses.cancel, in_openai_shape),
        ]
    routes += [  # with an API key (servers) or a chat's own token (browsers)
        ("POST", "/api/chat", ai_sdk.chat, None),
        ("GET", "/api/chat/{chat_id}/stream", ai_sdk.resume, None),
        ("POST", "/api/chat/{chat_id}/stop", ai_sdk.stop, None),
    ]
    if settings.durable_streams != "off":
        routes += [
            (method, durable_http.PATH, durable_http.cross_origin(handler), None)
            for method, handler in (
                ("PUT", durable_streams.create),
                ("POST", durable_streams.append),
                ("HEAD", durable_streams.head),
                ("DELETE", durable_streams.delete),
                ("OPTIONS", durable_http.preflight),
            )
        ]
    if (WEB_ROOT / "index.html").exists():
        routes += [("GET", "/", _index, None), ("GET", "/c/{conversation_id}", _index, None)]
        routes += [("GET", "/static/{path:.+}", _static, None)]
    for method, path, handler, shape in routes:
        if method == "GET":  # and HEAD, as every GET should answer it (a HEAD / probe is not a 405)
            app.router.add_get(path, guarded(handler, shape))
        else:
            app.router.add_route(method, path, guarded(handler, shape))
    if settings.durable_streams != "off":  # its HEAD is its own (metadata), routed above
        read = durable_http.cross_origin(durable_streams.read)
        app.router.add_get(durable_http.PATH, guarded(read), allow_head=False)
    # A conversation read as a Durable Stream (its own credential: the conversation's token).
    app.router.add_get(durable_conversation.PATH, guarded(durable_conversation.read), allow_head=False)
    app.router.add_route("HEAD", durable_conversation.PATH, guarded(durable_conversation.head))
    # The event stream goes unwrapped: it raises only JSON errors, and only before it streams.
    app.router.add_get("/api/conversations/{conversation_id}/events", stream_events)
    app.router.add_get("/api/stream", stream_many)
    app.router.add_route("*", r"/{tail:[\s\S]*}", fallback)  # last: JSON 404/405 and CORS preflights
    return app


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_ROOT / "index.html", headers={"Cache-Control": "no-cache"})


PAGE_FILES = {p.relative_to(WEB_ROOT).as_posix(): p for p in WEB_ROOT.rglob("*") if p.is_file()}
"""Every file of the page, by its path under ``/static/``: listed once at import, so a request never
reaches the filesystem with a name it chose (no traversal, NUL or over-long name to handle), and a
name not listed is a JSON 404."""


async def _static(request: web.Request) -> web.StreamResponse:
    path = PAGE_FILES.get(request.match_info["path"])
    if path is None:
        raise JSONError(404, "Not Found")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def _end_streams(app: web.Application) -> None:
    app[HUB].close_all()


async def _run_hub(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[HUB].run(), name="hub")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await app[STORE].aclose()
