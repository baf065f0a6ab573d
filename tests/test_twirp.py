"""The Twirp router against real HTTP clients: raw aiohttp requests and livekit-api."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from aiohttp import web
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb

from egresskit.service.auth import require_grant
from egresskit.service.twirp import HTTP_STATUS, TwirpError, TwirpService, from_json, to_json_dict
from egresskit.tokens import create_token

KEY, SECRET = "twirp-test-key", "twirp-test-secret-0123456789abcdef"
SERVICE = egress_pb.DESCRIPTOR.services_by_name["Egress"]
ROOM_INFO = egress_pb.EgressInfo(
    egress_id="EG_abcdefghijkl",
    room_name="studio",
    status=egress_pb.EGRESS_ACTIVE,
    started_at=1_700_000_000_123_456_789,
    file_results=[egress_pb.FileInfo(filename="studio.mp4", size=1234)],
    room_composite=egress_pb.RoomCompositeEgressRequest(
        room_name="studio", file_outputs=[egress_pb.EncodedFileOutput(filepath="studio.mp4")]
    ),
)


class CannedEgress:
    """A tiny livekit.Egress handler: canned answers, no StartEgress (-> unimplemented)."""

    async def ListEgress(self, request, context):
        items = [ROOM_INFO] if request.room_name in ("", ROOM_INFO.room_name) else []
        return egress_pb.ListEgressResponse(items=items)

    async def StopEgress(self, request, context):
        if request.egress_id != ROOM_INFO.egress_id:
            raise TwirpError("not_found", "egress does not exist")
        info = egress_pb.EgressInfo()
        info.CopyFrom(ROOM_INFO)
        info.status = egress_pb.EGRESS_ENDING
        return info

    async def StartRoomCompositeEgress(self, request, context):
        return egress_pb.EgressInfo(
            egress_id="EG_000000000001", room_name=request.room_name, room_composite=request
        )

    async def StartWebEgress(self, request, context):
        # The URL names the Twirp error code to raise (for the error table test).
        raise TwirpError(request.url, f"failure {request.url}", {"egress_id": "EG_x"})

    async def UpdateLayout(self, request, context):
        raise RuntimeError("database password hunter2 leaked into an exception")

    async def UpdateStream(self, request, context):
        return "not a protobuf message"


class WellBehavedEgress:
    """Answers every method with an empty message of the right type (for fuzzing)."""

    def __getattr__(self, name):
        method = SERVICE.methods_by_name.get(name)
        if method is None:
            raise AttributeError(name)
        output = egress_pb.EgressInfo if method.output_type.name == "EgressInfo" else None
        output = output or egress_pb.ListEgressResponse

        async def answer(request, context):
            return output()

        return answer


def _app(handler, authorize=None) -> web.Application:
    app = web.Application()
    TwirpService(SERVICE, handler, authorize=authorize).add_to(app)
    return app


@pytest.fixture
async def server(aiohttp_server):
    return await aiohttp_server(_app(CannedEgress()), host="127.0.0.1")


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def _url(server, method: str) -> str:
    return str(server.make_url(f"/twirp/livekit.Egress/{method}"))


async def _post_json(http, server, method, body, content_type="application/json"):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    async with http.post(
        _url(server, method), data=data, headers={"Content-Type": content_type}
    ) as resp:
        return resp.status, await resp.json(), resp.headers["Content-Type"]


async def test_json_in_either_key_style_and_snake_case_out(http, server):
    camel = {
        "roomName": "studio",
        "fileOutputs": [{"filepath": "a.mp4", "fileType": "MP4"}],
        "preset": 2,
        "someFutureField": {"x": 1},
    }
    snake = {
        "room_name": "studio",
        "file_outputs": [{"filepath": "a.mp4", "file_type": 1}],
        "preset": "H264_1080P_30",
    }
    answers = []
    for body in (camel, snake):
        status, data, content_type = await _post_json(
            http, server, "StartRoomCompositeEgress", body
        )
        assert status == 200
        assert content_type == "application/json"
        answers.append(data)
    assert answers[0] == answers[1]
    request = answers[0]["room_composite"]
    assert request["room_name"] == "studio"
    assert request["file_outputs"][0]["file_type"] == "MP4"
    assert request["preset"] == "H264_1080P_30"
    # Unpopulated fields are all present: scalars, lists, unset messages as null.
    assert request["layout"] == "" and request["audio_only"] is False
    assert request["stream_outputs"] == [] and request["webhooks"] == []
    assert answers[0]["status"] == "EGRESS_STARTING"
    assert answers[0]["started_at"] == "0"  # int64 as a string
    assert answers[0]["file_results"] == [] and answers[0]["error"] == ""
    assert "egress" not in answers[0]  # unset oneof members stay out, as in protojson


async def test_json_list_and_charset_suffix(http, server):
    status, data, _ = await _post_json(
        http, server, "ListEgress", {"roomName": "studio"}, "application/json; charset=utf-8"
    )
    assert status == 200
    (item,) = data["items"]
    assert item["egress_id"] == "EG_abcdefghijkl"
    assert item["started_at"] == "1700000000123456789"
    assert item["file_results"][0]["size"] == "1234"
    assert item["file_results"][0]["location"] == ""
    assert data["next_page_token"] is None
    file_output = item["room_composite"]["file_outputs"][0]
    assert "s3" not in file_output  # storage oneof unset


def test_json_int64_and_enums_accept_strings_and_numbers():
    for body in (
        b'{"startedAt": "123", "status": "EGRESS_ACTIVE"}',
        b'{"started_at": 123, "status": 1}',
    ):
        info = from_json(body, egress_pb.EgressInfo)
        assert info.started_at == 123 and info.status == egress_pb.EGRESS_ACTIVE


def test_json_out_matches_protojson_with_nulls_for_unset_messages():
    request = egress_pb.RoomCompositeEgressRequest(
        webhooks=[models_pb.WebhookConfig(url="http://hook")],
        file_outputs=[egress_pb.EncodedFileOutput(s3=egress_pb.S3Upload(bucket="b"))],
    )
    data = to_json_dict(request)
    assert data["webhooks"][0]["filter_params"] is None
    assert data["file_outputs"][0]["s3"]["proxy"] is None
    assert data["file_outputs"][0]["s3"]["metadata"] == {}
    back = json_format.ParseDict(data, egress_pb.RoomCompositeEgressRequest())
    assert back == request


async def test_protobuf_with_the_livekit_api_client(server):
    url = str(server.make_url("/"))
    lkapi = api.LiveKitAPI(url, KEY, SECRET)
    try:
        listed = await lkapi.egress.list_egress(api.ListEgressRequest(room_name="studio"))
        assert [i.egress_id for i in listed.items] == ["EG_abcdefghijkl"]
        assert listed.items[0].started_at == ROOM_INFO.started_at
        stopped = await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id="EG_abcdefghijkl"))
        assert stopped.status == egress_pb.EGRESS_ENDING
        with pytest.raises(api.TwirpError) as caught:
            await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id="EG_unknown"))
        assert (caught.value.code, caught.value.status) == ("not_found", 404)
        assert caught.value.message == "egress does not exist"
        with pytest.raises(api.TwirpError) as caught:
            await lkapi.egress.start_egress(api.StartEgressRequest(room_name="studio"))
        assert (caught.value.code, caught.value.status) == ("unimplemented", 501)
    finally:
        await lkapi.aclose()


async def test_protobuf_response_for_protobuf_request(http, server):
    body = api.ListEgressRequest(room_name="studio").SerializeToString()
    async with http.post(
        _url(server, "ListEgress"), data=body, headers={"Content-Type": "application/protobuf"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/protobuf"
        listed = egress_pb.ListEgressResponse.FromString(await resp.read())
    assert listed.items[0] == ROOM_INFO


@pytest.mark.parametrize("code", sorted(HTTP_STATUS))
async def test_every_error_code_maps_to_its_http_status(http, server, code):
    status, data, content_type = await _post_json(http, server, "StartWebEgress", {"url": code})
    assert status == HTTP_STATUS[code]
    assert content_type == "application/json"  # exactly: the Node SDK compares it verbatim
    assert data == {"code": code, "msg": f"failure {code}", "meta": {"egress_id": "EG_x"}}


def test_error_table_matches_the_twirp_spec():
    assert HTTP_STATUS["unauthenticated"] == 401
    assert HTTP_STATUS["malformed"] == HTTP_STATUS["invalid_argument"] == 400
    assert HTTP_STATUS["not_found"] == HTTP_STATUS["bad_route"] == 404
    assert HTTP_STATUS["failed_precondition"] == 412
    assert HTTP_STATUS["unavailable"] == 503
    assert HTTP_STATUS["unimplemented"] == 501
    with pytest.raises(ValueError):
        TwirpError("no_such_code", "x")


async def test_bad_routes(http, server):
    async with http.get(_url(server, "ListEgress")) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "bad_route"
    status, data, _ = await _post_json(http, server, "NoSuchMethod", {})
    assert (status, data["code"]) == (404, "bad_route")
    status, data, _ = await _post_json(http, server, "ListEgress", "{}", "text/plain")
    assert (status, data["code"]) == (404, "bad_route")
    async with http.post(_url(server, "ListEgress"), data=b"{}") as resp:  # no Content-Type
        assert (resp.status, (await resp.json())["code"]) == (404, "bad_route")


async def test_malformed_bodies(http, server):
    for body in ("{not json", "[1, 2]", '{"roomName": 5}', '{"active": "maybe"}', ""):
        status, data, _ = await _post_json(http, server, "ListEgress", body)
        assert (status, data["code"]) == (400, "malformed"), body
    status, data, _ = await _post_json(
        http, server, "ListEgress", b"\x0a\xff\xff\xff", "application/protobuf"
    )
    assert (status, data["code"]) == (400, "malformed")


async def test_unexpected_handler_failures_are_generic_internal_errors(http, server, caplog):
    with caplog.at_level(logging.ERROR, logger="egresskit.service.twirp"):
        status, data, _ = await _post_json(http, server, "UpdateLayout", {"egressId": "EG_x"})
        assert (status, data) == (500, {"code": "internal", "msg": "internal error", "meta": {}})
        status, data, _ = await _post_json(http, server, "UpdateStream", {})
        assert (status, data["code"]) == (500, "internal")
    assert "hunter2" not in json.dumps(data)
    assert "RuntimeError" in caplog.text  # the traceback stays in the server log
    status, _, _ = await _post_json(http, server, "ListEgress", {})
    assert status == 200  # still serving


async def test_authorize_runs_first_and_its_result_reaches_the_handler(http, aiohttp_server):
    seen = []

    class Recorder:
        async def ListEgress(self, request, context):
            seen.append((context.method, context.auth.api_key))
            return egress_pb.ListEgressResponse()

    app = _app(Recorder(), authorize=require_grant({KEY: SECRET}, "roomRecord"))
    server = await aiohttp_server(app, host="127.0.0.1")
    status, data, _ = await _post_json(http, server, "ListEgress", "{broken")
    assert (status, data["code"]) == (401, "unauthenticated")  # auth before decoding
    token = create_token(KEY, SECRET, video={"roomRecord": True})
    async with http.post(
        _url(server, "ListEgress"),
        data="{}",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200
    assert seen == [("ListEgress", KEY)]


# --- fuzzing: random bodies at every method never crash the router ---------------------

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _field_names(descriptor, depth=0) -> set[str]:
    names = set()
    for field in descriptor.fields:
        names.update({field.name, field.json_name})
        if field.message_type is not None and depth < 2:
            names |= _field_names(field.message_type, depth + 1)
    return names


_KNOWN_KEYS = sorted(set().union(*(_field_names(m.input_type) for m in SERVICE.methods)))
_json_body = st.dictionaries(
    st.sampled_from(_KNOWN_KEYS) | st.text(max_size=8),
    st.recursive(
        _json_leaf,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(_KNOWN_KEYS), inner, max_size=4)
        ),
        max_leaves=10,
    ),
    max_size=6,
)
_methods = st.sampled_from(sorted(SERVICE.methods_by_name))


@pytest.fixture
async def fuzz_target(aiohttp_server):
    server = await aiohttp_server(_app(WellBehavedEgress()), host="127.0.0.1")
    async with aiohttp.ClientSession() as session:
        yield server, session


def _check_answer(status: int, body: bytes, method: str, content_type: str) -> None:
    assert status in (200, 400), (status, body[:200])
    if status == 400:
        assert json.loads(body)["code"] == "malformed"
        return
    output = SERVICE.methods_by_name[method].output_type.name
    message_class = getattr(egress_pb, output)
    if content_type == "application/json":
        json_format.ParseDict(json.loads(body), message_class())
    else:
        message_class.FromString(body)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=_methods, body=_json_body | _json_value)
async def test_fuzz_json_bodies(fuzz_target, method, body):
    server, session = fuzz_target
    async with session.post(
        _url(server, method), data=json.dumps(body), headers={"Content-Type": "application/json"}
    ) as resp:
        _check_answer(resp.status, await resp.read(), method, "application/json")


def _valid_protobuf(method: str) -> bytes:
    request_class = getattr(egress_pb, SERVICE.methods_by_name[method].input_type.name)
    sample = json_format.ParseDict(
        {"room_name": "r", "egress_id": "EG_x", "url": "http://x", "layout": "grid"},
        request_class(),
        ignore_unknown_fields=True,
    )
    return sample.SerializeToString()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=_methods, noise=st.binary(max_size=64), cut=st.integers(0, 40), data=st.data())
async def test_fuzz_protobuf_bodies(fuzz_target, method, noise, cut, data):
    server, session = fuzz_target
    valid = _valid_protobuf(method)
    body = data.draw(st.sampled_from([noise, valid[:cut] + noise, valid + noise, noise + valid]))
    async with session.post(
        _url(server, method), data=body, headers={"Content-Type": "application/protobuf"}
    ) as resp:
        _check_answer(resp.status, await resp.read(), method, "application/protobuf")
