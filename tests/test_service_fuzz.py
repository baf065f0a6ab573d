"""Random JSON and protobuf bodies at every livekit.Egress and egresskit.Egress method of a
real, recording service.

The service runs with a live room (an in-process publisher), so plausible
random start requests really start graphs; every egress a case starts is
stopped and must reach a final state. No answer may be a 500, no handler may
fail unexpectedly, and ListEgress keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from livekit.protocol import egress as egress_pb
from publishers import SineAudioTrack, SyntheticVideoTrack
from service_fixtures import API_KEY, API_SECRET, service_config

from egresskit.egress.errors import EgressEnded
from egresskit.protos import egress_pb2 as extension_pb
from egresskit.service.app import MANAGER, ROOMS, create_app
from egresskit.service.twirp import to_json_dict
from egresskit.tokens import create_token

SERVICES = {
    service.full_name: service
    for service in (
        egress_pb.DESCRIPTOR.services_by_name["Egress"],
        extension_pb.DESCRIPTOR.services_by_name["Egress"],
    )
}
# "<package>.<Service>/<Method>", as in the Twirp path
METHODS = sorted(
    f"{name}/{m}" for name, service in SERVICES.items() for m in service.methods_by_name
)
LIST_EGRESS = "livekit.Egress/ListEgress"
ROOM = "fuzzroom"
# Replaced, just before sending, by the id of an egress the service knows.
LIVE_EGRESS = "$live-egress"
JSON, PROTOBUF = "application/json", "application/protobuf"
# Every status a well-behaved service may answer a random body with (never 500).
ALLOWED = {200, 400, 404, 412, 429, 501, 503}  # 429: past the CPU budget
LOG_SIGNS_OF_BUGS = (
    "unexpected error",  # the Twirp router caught a handler exception
    "Error handling request",  # aiohttp caught one the router did not
    "exception was never retrieved",  # a background task died unnoticed
)
FINAL = (
    egress_pb.EGRESS_COMPLETE,
    egress_pb.EGRESS_FAILED,
    egress_pb.EGRESS_ABORTED,
    egress_pb.EGRESS_LIMIT_REACHED,
)

# --- strategies --------------------------------------------------------------------------------

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_garbage = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_strings = st.sampled_from(
    [
        ROOM,
        LIVE_EGRESS,
        "",
        "grid",
        "speaker",
        "single-speaker-light",
        "EG_unknown1234",
        "fuzz/{room_name}-{time}.mp4",
        "fuzz/{publisher_identity}.ogg",
        "../../etc/x",
        "/abs/path.mp4",
        "rtmp://127.0.0.1:9/live/key",
        "http://127.0.0.1:9/hook",
        "TR_unknown",
        "alice",
    ]
) | st.text(max_size=16)
_ints = st.sampled_from([0, 1, 2, 16, 30, 64, 360, 640, 1281, -1, 2**31 - 1]) | st.integers(
    -(2**31), 2**31 - 1
)
_DEPTH = 3


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    if field.enum_type is not None:
        names = [v.name for v in field.enum_type.values]
        return st.sampled_from(names) | st.integers(-1, len(names) + 1)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_STRING:
        return _strings
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.sampled_from(["", "AAEC", "not base64!"])
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=False, allow_infinity=False, width=32)
    if field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 30, 1000])
    if field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1).map(str) | st.sampled_from([0, 1, 5000])
    if field.type in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.integers(-(2**63), 2**63 - 1).map(str) | _ints
    return _ints


@st.composite
def _value(draw, field: FieldDescriptor, depth: int, typed: bool):
    """A value for `field`: usually of its type, sometimes (unless `typed`) anything at all."""
    if not typed and draw(st.integers(0, 9)) == 0:
        return draw(_garbage)
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        single = st.dictionaries(st.text(max_size=6), _strings, max_size=2)
    elif message is not None:
        if depth >= _DEPTH or message.full_name.startswith("google.protobuf."):
            single = st.just({})
        else:
            single = _message(message, depth + 1, typed)
    else:
        single = _scalar(field)
    if field.is_repeated and not (message is not None and message.GetOptions().map_entry):
        return draw(st.lists(single, max_size=2))
    return draw(single)


@st.composite
def _message(draw, descriptor: Descriptor, depth: int = 0, typed: bool = False) -> dict:
    """A dict made of the message's real field names (either key style) with random values."""
    fields = draw(st.lists(st.sampled_from(tuple(descriptor.fields)), max_size=4, unique=True))
    body = {}
    for field in fields:
        key = draw(st.sampled_from([field.name, field.json_name]))
        body[key] = draw(_value(field, depth, typed))
    if not typed and draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=8))] = draw(_garbage)
    return body


# Bases that make a random start likely to be valid, so some fuzz cases really record.
_PLAUSIBLE = {
    "livekit.Egress/StartRoomCompositeEgress": [
        {"room_name": ROOM, "file_outputs": [{"filepath": "fuzz/{time}.mp4"}]},
        {"roomName": ROOM, "audioOnly": True, "file": {"filepath": "fuzz/a-{time}.ogg"}},
    ],
    "livekit.Egress/StartEgress": [{"room_name": ROOM, "template": {}, "outputs": [{"file": {}}]}],
    "egresskit.Egress/StartRoomCompositeEgress": [
        {
            "request": {"room_name": ROOM, "file_outputs": [{"filepath": "fuzz/{time}.mp4"}]},
            "exclude_identities": ["alice"],
        },
        {"request": {"roomName": ROOM, "audioOnly": True}, "includeIdentities": ["alice"]},
    ],
    "egresskit.Egress/PauseEgress": [{"egress_id": LIVE_EGRESS}],
    "egresskit.Egress/ResumeEgress": [{"egress_id": LIVE_EGRESS}],
    "egresskit.Egress/UpdateParticipants": [
        {"egress_id": LIVE_EGRESS, "exclude_identities": ["alice"]}
    ],
}


def _method(path: str):
    """The MethodDescriptor of "<package>.<Service>/<Method>"."""
    service, method = path.split("/")
    return SERVICES[service].methods_by_name[method]


def _message_class(descriptor: Descriptor):
    return message_factory.GetMessageClass(descriptor)


@st.composite
def _request(draw, method: str, typed: bool | None = None) -> dict:
    """A request body for `method`: well-typed or not (drawn unless given), often plausible."""
    descriptor = _method(method).input_type
    if typed is None:
        typed = draw(st.booleans())
    base = draw(st.sampled_from([{}, *_PLAUSIBLE.get(method, [])]))
    if base and draw(st.booleans()):
        return base
    return {**base, **draw(_message(descriptor, 0, typed))}


_json_case = st.sampled_from(METHODS).flatmap(
    lambda method: st.tuples(st.just(method), _request(method) | _garbage)
)


@st.composite
def _protobuf_case(draw) -> tuple[str, dict, str, int, bytes]:
    """A method, a typed request, and how to damage its serialization (applied later)."""
    method = draw(st.sampled_from(METHODS))
    request = draw(_request(method, typed=True))
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "insert", "append", "noise"]))
    return method, request, mutation, draw(st.integers(0, 200)), draw(st.binary(max_size=24))


# --- the service under fuzz -------------------------------------------------------------------


class FuzzedService:
    """A real service with a live room; knows which egresses the fuzz cases started."""

    def __init__(self, server, http: aiohttp.ClientSession, background: str) -> None:
        self.server = server
        self.http = http
        self.manager = server.app[MANAGER]
        self.token = create_token(API_KEY, API_SECRET, video={"roomRecord": True}, ttl=3600)
        self.background = background  # a small recording left running for UpdateLayout & co
        self.live_egress = background

    def substitute(self, value):
        """`value` with LIVE_EGRESS replaced by the id of an egress the service knows."""
        if isinstance(value, str):
            return self.live_egress if value == LIVE_EGRESS else value
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        return value

    async def post(self, method: str, body: bytes, content_type: str) -> tuple[int, bytes, str]:
        async with self.http.post(
            self.server.make_url(f"/twirp/{method}"),
            data=body,
            headers={"Content-Type": content_type, "Authorization": f"Bearer {self.token}"},
        ) as response:
            return response.status, await response.read(), response.headers["Content-Type"]

    def check(self, method: str, status: int, body: bytes, content_type: str) -> None:
        """A Twirp answer of the right shape; a started egress is stopped at once."""
        assert status in ALLOWED, (method, status, body[:300])
        event(f"{method}: {json.loads(body)['code'] if status != 200 else 'ok'}")
        if status != 200:
            error = json.loads(body)
            assert error["code"] != "internal" and error["msg"], error
            return
        output = _message_class(_method(method).output_type)
        if content_type == JSON:
            answer = json_format.ParseDict(json.loads(body), output())
        else:
            answer = output.FromString(body)
        if method.split("/")[1].startswith("Start"):
            assert answer.egress_id.startswith("EG_") and answer.status == egress_pb.EGRESS_STARTING
            self.live_egress = answer.egress_id
            self.stop(answer.egress_id)

    def stop(self, egress_id: str) -> None:
        try:
            self.manager.stop(egress_id)
        except EgressEnded:  # the case itself stopped it already
            pass

    async def settle(self, *, keep_background: bool = True) -> None:
        """Every egress a case started is stopped and reaches a final state."""
        running = [
            s
            for s in self.manager.active()
            if not (keep_background and s.egress_id == self.background)
        ]
        for session in running:
            self.stop(session.egress_id)
        if running:
            await asyncio.wait_for(asyncio.gather(*(s.wait() for s in running)), 30)
        status, body, _ = await self.post(LIST_EGRESS, b"{}", JSON)
        assert status == 200
        items = [i for i in json.loads(body)["items"] if i["egress_id"] != self.background]
        assert all(egress_pb.EgressStatus.Value(i["status"]) in FINAL for i in items), items


@pytest.fixture
async def fuzzed(aiohttp_server, tmp_path):
    app = create_app(service_config(tmp_path / "out"))
    server = await aiohttp_server(app, host="127.0.0.1")
    room = app[ROOMS].get_or_create(ROOM)
    await room.publish(SyntheticVideoTrack((200, 30, 30), 320, 180, 15), identity="alice")
    await room.publish(SineAudioTrack(440.0), identity="alice")
    background = await app[MANAGER].start(
        egress_pb.RoomCompositeEgressRequest(
            room_name=ROOM,
            advanced=egress_pb.EncodingOptions(width=320, height=180, framerate=10),
            file_outputs=[egress_pb.EncodedFileOutput(filepath="background.mp4")],
        )
    )
    async with aiohttp.ClientSession() as http:
        service = FuzzedService(server, http, background.egress_id)
        yield service
        await service.settle(keep_background=False)
        # The fuzzing reached the recording path, not only the validation errors.
        assert service.manager.started.get("room_composite", 0) > 0


def _no_bugs_logged(caplog) -> None:
    for sign in LOG_SIGNS_OF_BUGS:
        assert sign not in caplog.text, caplog.text[-3000:]


_FUZZ_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.slow
@_FUZZ_SETTINGS
@given(case=_json_case)
@example(
    case=(
        "livekit.Egress/StartRoomCompositeEgress",
        _PLAUSIBLE["livekit.Egress/StartRoomCompositeEgress"][0],
    )
)
@example(case=("livekit.Egress/StartEgress", _PLAUSIBLE["livekit.Egress/StartEgress"][0]))
@example(case=("livekit.Egress/UpdateLayout", {"egress_id": LIVE_EGRESS, "layout": "speaker"}))
@example(
    case=(
        "egresskit.Egress/StartRoomCompositeEgress",
        _PLAUSIBLE["egresskit.Egress/StartRoomCompositeEgress"][0],
    )
)
@example(case=("egresskit.Egress/PauseEgress", {"egress_id": LIVE_EGRESS}))
@example(case=("egresskit.Egress/StopEgress", {"egress_id": LIVE_EGRESS, "discard": True}))
async def test_fuzz_json_bodies_at_every_method(fuzzed, caplog, case):
    method, request = case
    caplog.set_level(logging.WARNING)
    caplog.clear()
    body = json.dumps(fuzzed.substitute(request)).encode()
    status, answer, content_type = await fuzzed.post(method, body, JSON)
    fuzzed.check(method, status, answer, content_type)
    await fuzzed.settle()
    _no_bugs_logged(caplog)


@pytest.mark.slow
@_FUZZ_SETTINGS
@given(case=_protobuf_case())
@example(
    case=(
        "livekit.Egress/StartRoomCompositeEgress",
        _PLAUSIBLE["livekit.Egress/StartRoomCompositeEgress"][1],
        "none",
        0,
        b"",
    )
)
@example(
    case=(
        "livekit.Egress/UpdateLayout",
        {"egressId": LIVE_EGRESS, "layout": "grid"},
        "append",
        0,
        b"\x08",
    )
)
@example(
    case=(
        "egresskit.Egress/UpdateParticipants",
        {"egressId": LIVE_EGRESS, "includeIdentities": ["alice"]},
        "none",
        0,
        b"",
    )
)
async def test_fuzz_protobuf_bodies_at_every_method(fuzzed, caplog, case):
    method, request, mutation, at, noise = case
    caplog.set_level(logging.WARNING)
    caplog.clear()
    message_class = _message_class(_method(method).input_type)
    try:
        message = json_format.ParseDict(
            fuzzed.substitute(request), message_class(), ignore_unknown_fields=True
        )
    except json_format.ParseError:  # e.g. two members of a oneof: send what did parse
        message = message_class()
    valid = message.SerializeToString()
    at = at % (len(valid) + 1)
    body = {
        "none": valid,
        "truncate": valid[:at],
        "flip": valid[:at] + bytes([valid[at] ^ 0xFF]) + valid[at + 1 :]
        if at < len(valid)
        else valid,
        "insert": valid[:at] + noise + valid[at:],
        "append": valid + noise,
        "noise": noise,
    }[mutation]
    status, answer, content_type = await fuzzed.post(method, body, PROTOBUF)
    fuzzed.check(method, status, answer, content_type)
    await fuzzed.settle()
    _no_bugs_logged(caplog)


# --- ListEgress answers from cached encodings ----------------------------------------------------


async def test_list_answers_track_every_change(fuzzed):
    """Each ListEgress answer is exactly the current listing encoded, in both formats,
    however often it is asked and whatever changed in between."""

    def expected(content_type: str) -> bytes:
        listing = egress_pb.ListEgressResponse(items=fuzzed.manager.list())
        if content_type == PROTOBUF:
            return listing.SerializeToString()
        return json.dumps(to_json_dict(listing)).encode()

    async def assert_current() -> None:
        for content_type, body in ((PROTOBUF, b""), (JSON, b"{}")):
            for _ in range(2):  # the second answer comes from the cache
                before = expected(content_type)
                status, answer, _ = await fuzzed.post(LIST_EGRESS, body, content_type)
                # An egress may change state (ACTIVE) while the request is in flight.
                assert status == 200 and answer in (before, expected(content_type))

    await assert_current()
    started = await fuzzed.manager.start(
        egress_pb.RoomCompositeEgressRequest(
            room_name=ROOM, audio_only=True, file_outputs=[egress_pb.EncodedFileOutput()]
        )
    )
    await assert_current()
    session = fuzzed.manager.get(started.egress_id)
    fuzzed.stop(started.egress_id)  # ENDING
    await assert_current()
    await asyncio.wait_for(session.wait(), 30)  # COMPLETE or ABORTED, with results
    await assert_current()
    status, answer, _ = await fuzzed.post(LIST_EGRESS, b'{"active": true}', JSON)
    assert [i["egress_id"] for i in json.loads(answer)["items"]] == [fuzzed.background]
