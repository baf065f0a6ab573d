"""The aiohttp application of `egresskit serve`: Egress API, WHIP ingest, WHEP playback, console, health, metrics."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from livekit.protocol import egress as egress_pb

from egresskit.egress.admission import Admission, CpuCosts
from egresskit.egress.livekit_rooms import LiveKitServer
from egresskit.egress.manager import EgressManager
from egresskit.egress.session import EgressSession
from egresskit.rooms import (
    ParticipantJoined,
    ParticipantLeft,
    RoomEvent,
    RoomManager,
    TrackPublished,
    TrackUnpublished,
    whip_app,
)
from egresskit.rooms.whep import whep_app
from egresskit.service.auth import EGRESS_GRANT, require_grant
from egresskit.service.auto_egress import AutoEgress, parse_room_egress
from egresskit.service.config import ServiceConfig
from egresskit.service.console import Console
from egresskit.service.egress_api import EgressApi
from egresskit.service.extension_api import EXTENSION_SERVICE, ExtensionApi
from egresskit.service.files import files_app
from egresskit.service.metrics import render_metrics
from egresskit.service.room_api import (
    ROOM_GRANTS,
    ROOM_SERVICE,
    RoomApi,
    participant_info,
    room_info,
    track_info,
)
from egresskit.service.twirp import TwirpError, TwirpService
from egresskit.service.webhooks import WebhookNotifier
from egresskit.storage.s3 import shared_session
from egresskit.storage.upload import RetryPolicy
from egresskit.web import missing_packages, reap_orphans

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", ServiceConfig)
ROOMS = web.AppKey("rooms", RoomManager)
MANAGER = web.AppKey("manager", EgressManager)
WEBHOOKS = web.AppKey("webhooks", WebhookNotifier)
BROWSER = web.AppKey("browser", dict)
SDK_DIR = Path(__file__).parent / "sdk"

EGRESS_SERVICE = egress_pb.DESCRIPTOR.services_by_name["Egress"]
# How long SIGTERM waits for running egresses to finish their files.
DRAIN_TIMEOUT_S = 30.0
# aiohttp's keepalive timeout, which also runs from the connection's start until
# a request's headers are complete: the bound on reading headers (slowloris) and
# on idle keep-alive connections. aiohttp has no separate header timeout.
HEADER_TIMEOUT_S = 10.0


def ice_addresses(bind: str) -> list[str] | None:
    """A service bound to loopback keeps WebRTC on loopback too; otherwise every interface."""
    try:
        if ipaddress.ip_address(bind).is_loopback:
            return [bind]
    except ValueError:
        if bind == "localhost":
            return ["127.0.0.1"]
    return None


def notify_room_event(webhooks: WebhookNotifier, event: RoomEvent) -> None:
    """Room webhooks for the server-wide URLs, as a LiveKit server sends them."""
    if isinstance(event, ParticipantJoined | ParticipantLeft):
        name = "participant_joined" if isinstance(event, ParticipantJoined) else "participant_left"
        webhooks.notify_room(name, room_info(event.room), participant_info(event.participant))
    elif isinstance(event, TrackPublished | TrackUnpublished):
        name = "track_published" if isinstance(event, TrackPublished) else "track_unpublished"
        webhooks.notify_room(
            name,
            room_info(event.room),
            participant_info(event.track.participant),
            track_info(event.track),
        )


def livekit_server(config: ServiceConfig) -> LiveKitServer | None:
    """The LiveKit server whose rooms egresses record, if one is configured."""
    if not config.livekit_url:
        return None
    return LiveKitServer(config.livekit_url, config.livekit_api_key, config.livekit_api_secret)


def create_app(config: ServiceConfig) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    network = config.network_policy
    webhooks = WebhookNotifier(
        config.api_key, config.api_secret, config.webhook_urls, keys=config.keys, network=network
    )
    observers: list[Callable[[RoomEvent], None]] = [lambda e: notify_room_event(webhooks, e)]

    def on_room_event(event: RoomEvent) -> None:
        for observe in observers:
            observe(event)

    rooms = RoomManager(on_event=on_room_event, empty_timeout_s=config.empty_room_timeout_s)

    egress_observers: list[Callable[[str, EgressSession], None]] = []

    def on_event(event: str, session: EgressSession) -> None:
        webhooks.notify(event, session.public_info(), session.webhooks, session.signing_key)
        for observe in egress_observers:
            observe(event, session)

    manager = EgressManager(
        rooms,
        config.output_dir,
        default_storage=dict(config.storage) or None,
        backup_storage=dict(config.backup_storage) or None,
        max_duration_s=config.max_duration_s,
        max_concurrent=config.max_concurrent,
        admission=Admission(CpuCosts.from_mapping(config.cpu_cost)),
        retry=RetryPolicy(
            config.upload_attempts, config.upload_initial_delay, config.upload_max_delay
        ),
        on_event=on_event,
        livekit=livekit_server(config),
        web_start_timeout_s=config.web_start_timeout_s,
        template_key=(config.api_key, config.api_secret),
    )
    auto_egress = AutoEgress(manager, parse_room_egress(config.auto_egress))
    if auto_egress.enabled:
        observers.append(auto_egress.on_room_event)
    app[CONFIG] = config
    app[ROOMS] = rooms
    app[MANAGER] = manager
    app[WEBHOOKS] = webhooks
    missing = missing_packages()
    app[BROWSER] = {"available": not missing, "missing_packages": missing}

    max_ttl = config.max_token_ttl_s
    egress_api = EgressApi(manager, network)
    TwirpService(
        EGRESS_SERVICE,
        egress_api,
        authorize=require_grant(config.keys, EGRESS_GRANT, max_ttl=max_ttl),
    ).add_to(app)
    TwirpService(
        EXTENSION_SERVICE,
        ExtensionApi(egress_api),
        authorize=require_grant(config.keys, EGRESS_GRANT, max_ttl=max_ttl),
    ).add_to(app)
    if manager.livekit is None:
        TwirpService(
            ROOM_SERVICE,
            RoomApi(rooms),
            authorize=require_grant(config.keys, ROOM_GRANTS, max_ttl=max_ttl, any_of=True),
        ).add_to(app)
    else:
        app.router.add_post(f"/twirp/{ROOM_SERVICE.full_name}/{{method}}", room_service_elsewhere)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/sdk/template.js", template_sdk)
    app.router.add_get("/metrics", metrics)
    app.add_subapp(
        "/whip",
        whip_app(
            rooms,
            config.keys,
            ice_addresses=ice_addresses(config.bind),
            max_token_ttl_s=max_ttl,
        ),
    )
    app.add_subapp(
        "/whep",
        whep_app(
            rooms,
            config.keys,
            ice_addresses=ice_addresses(config.bind),
            max_token_ttl_s=max_ttl,
        ),
    )
    if config.console_enabled:
        console = Console(config, rooms, manager)
        observers.append(console.on_room_event)
        egress_observers.append(console.on_egress_event)
        console.add_routes(app)
        app.add_subapp("/files", files_app(config.output_dir, config.keys, max_token_ttl_s=max_ttl))
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_drain)
    return app


async def room_service_elsewhere(request: web.Request) -> web.Response:
    """With a LiveKit server configured, its rooms and its RoomService are the server's own."""
    livekit = request.app[MANAGER].livekit
    assert livekit is not None  # routed here only with a LiveKit server
    return TwirpError(
        "unimplemented",
        "RoomService is served by the LiveKit server this egresskit records "
        f"({livekit.url}), not by egresskit",
    ).to_response()


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    # a service killed while recording web pages leaves their browsers behind: end them
    await asyncio.to_thread(reap_orphans)
    app[WEBHOOKS].start()
    # Parse botocore's S3 model now, in a thread, not during the first upload: that
    # parse holds the GIL for a few hundred ms and would stall every running egress.
    warm_up = asyncio.create_task(asyncio.to_thread(shared_session))
    yield
    await asyncio.gather(warm_up, return_exceptions=True)
    # The egresses have drained already (_drain, on shutdown). Rooms next: closing them
    # posts participant_left / track_unpublished, which the notifier still delivers
    # (bounded by its drain timeout) instead of dropping with a warning.
    await app[ROOMS].close()
    await app[WEBHOOKS].close()


async def _drain(app: web.Application) -> None:
    """SIGTERM: refuse new egresses and let running ones finish their files, at once
    (on shutdown, before aiohttp waits for open connections to finish)."""
    await app[MANAGER].shutdown(DRAIN_TIMEOUT_S)


async def healthz(request: web.Request) -> web.Response:
    """Constant time whatever runs: load balancers poll it most when the service is busiest."""
    admission = request.app[MANAGER].admission
    return web.json_response(
        {
            "status": "ok",
            # web egress and custom templates: whether Chromium, Xvfb and PulseAudio are here
            "browser": request.app[BROWSER],
            "active_egress": len(admission),
            "load": round(os.getloadavg()[0] / admission.cores, 3),
            "cpus": admission.cores,
            "cpu_budget": round(admission.budget, 3),
            "cpu_available": round(admission.available, 3),
        }
    )


async def template_sdk(request: web.Request) -> web.FileResponse:
    """The ES module custom template pages of embedded rooms import (any origin may)."""
    return web.FileResponse(
        SDK_DIR / "template.js",
        headers={"Content-Type": "text/javascript", "Access-Control-Allow-Origin": "*"},
    )


async def metrics(request: web.Request) -> web.Response:
    text = render_metrics(request.app[MANAGER], request.app[WEBHOOKS])
    return web.Response(
        body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )
