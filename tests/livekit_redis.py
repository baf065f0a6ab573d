"""livekit-server joined to a Redis: it routes egress requests over psrpc there.

tests/livekit_server.py's server (rooms and media on 127.0.0.1) with `redis`,
and webhooks signed by its key when given URLs.
"""

from __future__ import annotations

from livekit_server import LiveKitServer, unavailable_reason

__all__ = ["LiveKitRedisServer", "unavailable_reason"]


class LiveKitRedisServer(LiveKitServer):
    def __init__(self, redis_address: str, webhook_urls: list[str] | None = None) -> None:
        super().__init__()
        self.redis_address = redis_address
        self.webhook_urls = list(webhook_urls or [])

    def config(self) -> dict:
        config = super().config()
        config["redis"] = {"address": self.redis_address}
        # livekit-server wraps every psrpc client in its own retries (default 3
        # attempts); around the egress client's 3 StartEgress attempts that makes 9
        # (about 24 s before a refused egress is answered). One outer attempt keeps
        # the egress client's own behaviour and the tests short.
        config["psrpc"] = {"max_attempts": 1}
        if self.webhook_urls:
            config["webhook"] = {"api_key": self.api_key, "urls": self.webhook_urls}
        return config
