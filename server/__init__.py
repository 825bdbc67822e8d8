"""streamfan's relay node: an aiohttp server that fans conversation events out to SSE clients."""
