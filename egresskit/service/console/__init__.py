"""The web console at `/`: a page that publishes, watches, records and plays back.

The page (static/: plain HTML, CSS and JS modules, no bundler, no CDN) talks
to the service only through what any client uses: the Twirp API, WHIP and
WHEP, with tokens it signs in the browser (Web Crypto HMAC) from the API key
and secret the user typed, or a token the user pasted. It keeps them in
memory only. Two routes exist for it:

- `GET /console/config.json`: whether this is dev mode and, only then, the
  dev key and secret. Dev mode binds 127.0.0.1 and prints that pair at start,
  so handing it to a page on the same machine discloses nothing new, and the
  console works at once; any other service never sends a secret.
- `GET /console/events`: server-sent events of the embedded rooms (a
  `rooms` snapshot whenever a participant or track changes) and, every
  second while egresses run and at once when one starts or changes state,
  their progress (`egress`: elapsed, bytes written, dropped frames). It
  needs a token with `roomList` or `roomAdmin`, as ListRooms does, in the
  Authorization header (the page reads the stream with fetch, so no token
  is put in a URL); the progress needs `roomRecord`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from livekit.protocol import egress as egress_pb

from egresskit.egress.manager import EgressManager
from egresskit.egress.session import EgressSession
from egresskit.rooms import RoomEvent, RoomManager
from egresskit.service.auth import EGRESS_GRANT, require_grant
from egresskit.service.config import ServiceConfig
from egresskit.service.room_api import ROOM_GRANTS, participant_info, room_info
from egresskit.service.twirp import TwirpError, to_json_dict

STATIC = Path(__file__).parent / "static"
# Progress events while egresses run; rooms are sent on change, not on a timer.
PROGRESS_INTERVAL_S = 1.0
# A comment line keeps idle connections (and proxies) from timing out.
KEEPALIVE_S = 15.0


@dataclass(eq=False)  # kept in a set, by identity
class _Stream:
    """One connected event stream: woken when a room or an egress changes."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    rooms_changed: bool = True  # the first snapshot


class Console:
    """Serves the console page and its event stream."""

    def __init__(self, config: ServiceConfig, rooms: RoomManager, manager: EgressManager) -> None:
        self._config = config
        self._rooms = rooms
        self._manager = manager
        self._authorize = require_grant(
            config.keys, ROOM_GRANTS, max_ttl=config.max_token_ttl_s, any_of=True
        )
        self._streams: set[_Stream] = set()
        self._closing = False

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/console/config.json", self.settings)
        app.router.add_get("/console/events", self.events)
        app.router.add_static("/console/static", STATIC, follow_symlinks=False)
        app.on_shutdown.append(self._close_streams)

    async def _close_streams(self, app: web.Application) -> None:
        """End every event stream, so a graceful shutdown does not wait for them."""
        self._closing = True
        for stream in self._streams:
            stream.wake.set()

    def on_room_event(self, event: RoomEvent) -> None:
        for stream in self._streams:
            stream.rooms_changed = True
            stream.wake.set()

    def on_egress_event(self, event: str, session: EgressSession) -> None:
        """An egress started, changed state or ended: streams show it now, not within the
        keepalive interval they wait while no egress runs."""
        for stream in self._streams:
            stream.wake.set()

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def settings(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"dev": self._config.dev}
        if self._config.dev:
            body.update(api_key=self._config.api_key, api_secret=self._config.api_secret)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = await self._authorize(request, "console events")
        except TwirpError as error:  # answered as the Twirp API answers it
            raise web.HTTPUnauthorized(
                text=json.dumps({"code": error.code, "msg": error.msg}),
                content_type="application/json",
            ) from None
        with_egress = claims.grant(EGRESS_GRANT) is True
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        stream = _Stream()
        stream.wake.set()  # the first snapshot
        self._streams.add(stream)
        last_sent = time.monotonic()
        try:
            while True:
                running = with_egress and bool(self._manager.active())
                timeout = PROGRESS_INTERVAL_S if running else KEEPALIVE_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.wake.wait(), timeout)
                stream.wake.clear()
                if self._closing:
                    break
                chunks = []
                if stream.rooms_changed:
                    stream.rooms_changed = False
                    chunks.append(_event("rooms", self.rooms_snapshot()))
                if with_egress:
                    chunks.append(_event("egress", self.egress_progress()))
                if not chunks and time.monotonic() - last_sent >= KEEPALIVE_S:
                    chunks.append(b": keepalive\n\n")
                if chunks:
                    await response.write(b"".join(chunks))
                    last_sent = time.monotonic()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(stream)
        return response

    def rooms_snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "room": to_json_dict(room_info(room)),
                "participants": [
                    to_json_dict(participant_info(p)) for p in room.participants.values()
                ],
            }
            for room in self._rooms.rooms()
        ]

    def egress_progress(self) -> list[dict[str, Any]]:
        """What EgressInfo does not say about a running egress: bytes so far, frames dropped."""
        progress = []
        for session in self._manager.active():
            plan = session.plan
            written = sum(getattr(f.writer, "size", 0) or 0 for f in plan.files)
            progress.append(
                {
                    "egress_id": session.egress_id,
                    "status": egress_pb.EgressStatus.Name(session.info.status),
                    "started_at": session.info.started_at,
                    "bytes": written,
                    "dropped_frames": sum(link.dropped for link in plan.graph.links),
                }
            )
        return progress


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
