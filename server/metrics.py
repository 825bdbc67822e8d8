"""The node's Prometheus metrics (``GET /metrics``).

The fan-out path counts once per frame (adding the follower count), never once per client, and the
publish→write latency comes from the event id itself: a stream id's first part is the Redis clock
at ``XADD``, so no JSON is parsed to measure it (clock skew between hosts shows up here).
"""

from collections.abc import Callable

from support.prometheus import LATENCY_BUCKETS, Counter, Gauge, Histogram, Registry


class NodeMetrics:
    def __init__(self) -> None:
        registry = self.registry = Registry()
        self.sockets_open = 0
        self.connections = registry.add(Counter("streamfan_connections_total", "SSE connections accepted."))
        self.multiplexed = registry.add(
            Counter(
                "streamfan_multiplexed_streams_total",
                "Multiplexed streams (/api/stream) accepted; each is also counted in connections.",
            )
        )
        self.delivered = registry.add(
            Counter("streamfan_events_delivered_total", "Live events written to SSE clients (replays not included).")
        )
        self.bytes_written = registry.add(
            Counter("streamfan_bytes_written_total", "Bytes of live events written to SSE clients.")
        )
        self.slow_clients = registry.add(
            Counter(
                "streamfan_slow_client_disconnects_total",
                "Clients cut off because their unsent bytes passed STREAMFAN_CLIENT_BUFFER_BYTES.",
            )
        )
        self.redis_reconnects = registry.add(
            Counter("streamfan_redis_reconnects_total", "Times the pub/sub connection to Redis was re-established.")
        )
        self.malformed_messages = registry.add(
            Counter(
                "streamfan_malformed_messages_total",
                "Pub/sub messages on a conversation channel that were not event frames (dropped).",
            )
        )
        self.replays = registry.add(Counter("streamfan_replays_total", "History replays served to connecting clients."))
        self.replay_events = registry.add(
            Histogram(
                "streamfan_replay_events",
                "Events sent from history per connection.",
                (0, 1, 10, 100, 1_000, 10_000, 100_000),
            )
        )
        self.publish_to_write = registry.add(
            Histogram(
                "streamfan_publish_to_write_seconds",
                "From the event's XADD in Redis to its write to this node's clients.",
                LATENCY_BUCKETS,
            )
        )

    def bind(self, connections_open: Callable[[], float], channels: Callable[[], float]) -> None:
        """Gauges read at scrape time."""
        self.registry.add(
            Gauge(
                "streamfan_connections_open",
                "Conversations followed by open SSE connections on this node (a multiplexed one counts each).",
                connections_open,
            )
        )
        self.registry.add(
            Gauge("streamfan_sockets_open", "SSE connections (sockets) open on this node.", lambda: self.sockets_open)
        )
        self.registry.add(
            Gauge("streamfan_channels_subscribed", "Conversations this node is subscribed to in Redis.", channels)
        )
