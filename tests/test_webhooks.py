"""Webhook delivery to a real aiohttp receiver that verifies every event like LiveKit users do."""

from __future__ import annotations

import asyncio

import jwt
import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb

from egresskit.netpolicy import NetworkPolicy
from egresskit.service.webhooks import CONTENT_TYPE, WebhookNotifier

KEY, SECRET = "hook-key", "hook-secret-0123456789abcdefghijklmn"
OTHER_KEY, OTHER_SECRET = "hook-other", "hook-other-secret-0123456789abcdefgh"
FAST = {"backoff": 0.01, "timeout": 5.0}


def _info(status=egress_pb.EGRESS_STARTING) -> egress_pb.EgressInfo:
    return egress_pb.EgressInfo(
        egress_id="EG_hooktest0001",
        room_id="RM_abc",
        room_name="studio",
        status=status,
        room_composite=egress_pb.RoomCompositeEgressRequest(
            room_name="studio",
            file_outputs=[
                egress_pb.EncodedFileOutput(
                    filepath="x.mp4",
                    s3=egress_pb.S3Upload(bucket="b", access_key="AKIAHOOK", secret="s3-hunter2"),
                )
            ],
        ),
    )


class Receiver:
    """Verifies each request with livekit.api.WebhookReceiver; records what arrived."""

    def __init__(self) -> None:
        self.events: dict[str, list] = {}
        self.raw: list[tuple[str, str, str]] = []  # (path, content type, authorization)
        self.failures_left = {"/flaky": 2}
        self.attempts = {"/dead": 0}
        self.gate = asyncio.Event()
        self.hook_arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        body = await request.text()
        auth = request.headers.get("Authorization", "")
        self.raw.append((path, request.headers.get("Content-Type", ""), auth))
        if path == "/dead":
            self.attempts["/dead"] += 1
            return web.Response(status=503)
        if self.failures_left.get(path):
            self.failures_left[path] -= 1
            return web.Response(status=500)
        if path == "/slow":
            await asyncio.wait_for(self.gate.wait(), 10)
        key, secret = (OTHER_KEY, OTHER_SECRET) if path == "/other" else (KEY, SECRET)
        event = api.WebhookReceiver(api.TokenVerifier(key, secret)).receive(body, auth)
        self.events.setdefault(path, []).append((event, body))
        if path == "/hook":
            self.hook_arrived.set()
        return web.Response(text="ok")


@pytest.fixture
async def receiver(aiohttp_server):
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", recv.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    recv.url = lambda path: str(server.make_url(path))
    return recv


async def test_events_arrive_in_order_signed_and_redacted(receiver):
    notifier = WebhookNotifier(KEY, SECRET, [receiver.url("/hook")], **FAST)
    notifier.start()
    notifier.notify("egress_started", _info())
    notifier.notify("egress_updated", _info(egress_pb.EGRESS_ACTIVE))
    notifier.notify("egress_ended", _info(egress_pb.EGRESS_COMPLETE))
    await notifier.close(drain_timeout=10)

    received = receiver.events["/hook"]
    assert [e.event for e, _ in received] == ["egress_started", "egress_updated", "egress_ended"]
    assert [e.egress_info.status for e, _ in received] == [
        egress_pb.EGRESS_STARTING,
        egress_pb.EGRESS_ACTIVE,
        egress_pb.EGRESS_COMPLETE,
    ]
    event, body = received[0]
    assert event.room.name == "studio" and event.room.sid == "RM_abc"
    assert event.id.startswith("EV_") and len(event.id) == 15
    assert len({e.id for e, _ in received}) == 3
    assert event.created_at > 0
    assert '"egressInfo"' in body and '"egress_info"' not in body  # lowerCamelCase
    assert '"error"' not in body  # zero fields omitted
    assert "s3-hunter2" not in body and "AKIAHOOK" not in body
    _, content_type, authorization = receiver.raw[0]
    assert content_type == CONTENT_TYPE
    assert not authorization.startswith("Bearer")
    claims = jwt.decode(authorization, SECRET, algorithms=["HS256"])
    assert claims["iss"] == KEY and claims["exp"] - claims["nbf"] == 300
    assert notifier.stats.delivered == 3 and notifier.stats.dropped == 0


async def test_per_request_webhooks_are_signed_with_the_callers_key(receiver):
    notifier = WebhookNotifier(
        KEY, SECRET, [receiver.url("/hook")], keys={OTHER_KEY: OTHER_SECRET}, **FAST
    )
    notifier.start()
    # The webhook names the server's key; only the caller's (OTHER_KEY) may sign.
    extra = [models_pb.WebhookConfig(url=receiver.url("/other"), signing_key=KEY)]
    notifier.notify("egress_started", _info(), extra, signing_key=OTHER_KEY)
    await notifier.close(drain_timeout=10)
    assert [e.event for e, _ in receiver.events["/hook"]] == ["egress_started"]
    assert [e.event for e, _ in receiver.events["/other"]] == ["egress_started"]
    other = next(auth for path, _, auth in receiver.raw if path == "/other")
    assert jwt.decode(other, OTHER_SECRET, algorithms=["HS256"])["iss"] == OTHER_KEY


async def test_webhooks_do_not_follow_redirects(receiver, aiohttp_server):
    app = web.Application()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(receiver.url("/hook"))

    app.router.add_post("/", redirect)
    redirector = await aiohttp_server(app, host="127.0.0.1")
    notifier = WebhookNotifier(KEY, SECRET, [str(redirector.make_url("/"))], attempts=1)
    notifier.start()
    notifier.notify("egress_started", _info())
    await notifier.close(drain_timeout=10)
    assert receiver.raw == [] and notifier.stats.failed == 1


async def test_request_webhooks_to_denied_networks_are_not_sent(receiver):
    """A request's webhook whose name resolves to loopback is refused when connecting."""
    policy = NetworkPolicy()  # the default: loopback denied
    hook = receiver.url("/hook").replace("127.0.0.1", "localhost")
    notifier = WebhookNotifier(KEY, SECRET, [], network=policy, attempts=1)
    notifier.start()
    notifier.notify("egress_started", _info(), [models_pb.WebhookConfig(url=hook)])
    await notifier.close(drain_timeout=10)
    assert receiver.raw == [] and notifier.stats.failed == 1


async def test_retries_keep_order_and_give_up_after_three_attempts(receiver):
    notifier = WebhookNotifier(KEY, SECRET, [receiver.url("/flaky"), receiver.url("/dead")], **FAST)
    notifier.start()
    notifier.notify("egress_started", _info())
    notifier.notify("egress_ended", _info(egress_pb.EGRESS_COMPLETE))
    await notifier.close(drain_timeout=10)
    assert [e.event for e, _ in receiver.events["/flaky"]] == ["egress_started", "egress_ended"]
    assert receiver.attempts["/dead"] == 6  # two events, three attempts each
    assert notifier.stats.failed == 2 and notifier.stats.delivered == 2


async def test_a_full_queue_drops_and_counts_without_blocking(receiver):
    notifier = WebhookNotifier(KEY, SECRET, [receiver.url("/slow")], queue_size=2, **FAST)
    notifier.start()
    for _ in range(6):  # all before the worker runs: two fit, four are dropped
        notifier.notify("egress_updated", _info(egress_pb.EGRESS_ACTIVE))
    assert notifier.stats.dropped == 4 and notifier.stats.queued == 2
    receiver.gate.set()
    await notifier.close(drain_timeout=10)
    assert len(receiver.events["/slow"]) == 2
    notifier.notify("egress_ended", _info())  # after close: dropped, not raised
    assert notifier.stats.dropped == 5


async def test_a_slow_target_does_not_delay_another(receiver):
    notifier = WebhookNotifier(KEY, SECRET, [receiver.url("/slow"), receiver.url("/hook")], **FAST)
    notifier.start()
    notifier.notify("egress_started", _info())
    await asyncio.wait_for(receiver.hook_arrived.wait(), 10)
    assert "/slow" not in receiver.events  # still held by the receiver
    receiver.gate.set()
    await notifier.close(drain_timeout=10)
    assert len(receiver.events["/slow"]) == 1


async def test_notify_before_start_is_a_programming_error():
    notifier = WebhookNotifier(KEY, SECRET, ["http://127.0.0.1:9/none"])
    with pytest.raises(RuntimeError):
        notifier.notify("egress_started", _info())
