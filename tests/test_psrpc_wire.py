"""psrpc wire vectors: what livekit-server v1.13.5 published (tests/psrpc_vectors.py)
decodes, encodes back byte for byte and names its channels as egresskit does."""

from __future__ import annotations

import re

import pytest
from livekit.protocol import egress as lk
from psrpc_vectors import KEEPALIVE, VECTORS, vector

from egresskit.psrpc.bus import (
    EnvelopeError,
    claim_request_channel,
    claim_response_channel,
    decode,
    encode,
    expired,
    lock_key,
    new_id,
    request_channel,
    response_channel,
    sanitise,
)
from egresskit.psrpc.protos.internal_pb2 import ClaimRequest, ClaimResponse, Request, Response
from egresskit.psrpc.protos.rpc_egress_pb2 import StartEgressRequest

ROOM = "psrpc-vectors.1"


def requests() -> dict[str, Request]:
    """The captured requests by id."""
    found = {}
    for _, _, payload in VECTORS:
        message = decode(payload)
        if isinstance(message, Request):
            found[message.request_id] = message
    return found


@pytest.mark.parametrize(("run", "channel", "payload"), VECTORS, ids=[v[1] for v in VECTORS])
def test_captured_payloads_decode_and_encode_back_identically(run, channel, payload):
    message = decode(payload)
    kind = channel.rsplit("|", 1)[1]
    expected = {"REQ": Request, "CLAIM": ClaimRequest, "RCLAIM": ClaimResponse, "RES": Response}
    assert type(message) is expected[kind]
    assert re.fullmatch(r"REQ_[A-Za-z0-9]{12}", message.request_id)
    assert encode(message) == payload


@pytest.mark.parametrize(("run", "channel", "payload"), VECTORS, ids=[v[1] for v in VECTORS])
def test_captured_channels_are_named_from_their_parts(run, channel, payload):
    """The channel each payload travelled on, rebuilt from the service, method,
    topic and the ids inside the payload."""
    message = decode(payload)
    parts = channel.split("|")
    service, kind = parts[0], parts[-1]
    if kind == "REQ":
        topic = [ROOM] if service == "Room" else parts[2:-1]
        assert request_channel(service, parts[1], topic) == channel
        assert re.fullmatch(r"CLI_[A-Za-z0-9]{12}", message.client_id)
    elif kind == "RCLAIM":
        topic = [ROOM] if service == "Room" else parts[2:-1]
        assert claim_response_channel(service, parts[1], topic) == channel
    else:
        # CLAIM and RES go to the client that sent the request
        request = requests().get(message.request_id)
        client = request.client_id if request is not None else parts[1]
        naming = claim_request_channel if kind == "CLAIM" else response_channel
        assert naming(service, client) == channel
        assert re.fullmatch(r"SRV_[A-Za-z0-9]{12}", message.server_id)


def test_room_name_topic_is_sanitised_as_livekit_server_does():
    assert sanitise(ROOM) == "psrpcu+002dvectorsu+002e1"
    assert (
        request_channel("Room", "UpdateRoomMetadata", [ROOM])
        == "Room|UpdateRoomMetadata|psrpcu+002dvectorsu+002e1|REQ"
    )
    body = decode(vector("Room|UpdateRoomMetadata|psrpcu+002dvectorsu+002e1|REQ")).raw_request
    assert ROOM.encode() in body


def test_channel_rules():
    # psrpc's own formatter cases (facts from its channels_test.go)
    assert response_channel("foo", "bar") == "foo|bar|RES"
    assert claim_request_channel("foo", "bar") == "foo|bar|CLAIM"
    assert request_channel("foo", "bar") == "foo|bar|REQ"
    assert claim_response_channel("foo", "bar") == "foo|bar|RCLAIM"
    assert request_channel("foo", "bar", ["a", "b", "c"]) == "foo|bar|a|b|c|REQ"
    assert sanitise("🚀_É") == "U+0001f680_u+00c9"
    assert sanitise("软件") == "u+8f6fu+4ef6"
    # an empty topic (livekit-server's StartEgress) adds nothing; a cluster id adds a segment
    assert (
        request_channel("EgressInternal", "StartEgress", [""]) == "EgressInternal|StartEgress|REQ"
    )
    assert request_channel("EgressInternal", "StartEgress", ["eu-1"]) == (
        "EgressInternal|StartEgress|euu+002d1|REQ"
    )
    assert sanitise("a|b c") == "au+007cbu+0020c"


def test_start_egress_request_from_livekit_server():
    request = decode(vector("EgressInternal|StartEgress|REQ"))
    assert request.client_id == "CLI_q40P5wqcm9ig"
    assert not request.multi
    # livekit-server's first StartEgress attempt lives 10 s
    assert request.expiry - request.sent_at == 10_000_000_000
    body = StartEgressRequest.FromString(request.raw_request)
    assert body.egress_id == "EG_NDwdHiPNFGnH"
    assert body.room_id == "RM_HMwXMS5HS7V6"
    assert body.WhichOneof("request") == "room_composite"
    assert body.room_composite.room_name == "r1"
    assert body.room_composite.layout == "grid"
    assert [o.filepath for o in body.room_composite.file_outputs] == ["x.mp4"]
    assert body.SerializeToString() == request.raw_request


def test_stop_egress_request_from_livekit_server():
    request = decode(vector("EgressHandler|StopEgress|EG_KPFRui5pZ9qy|REQ"))
    assert request.expiry - request.sent_at == 3_000_000_000  # psrpc's default timeout
    stop = lk.StopEgressRequest.FromString(request.raw_request)
    assert stop.egress_id == "EG_KPFRui5pZ9qy"


def test_multi_request_and_empty_response_from_livekit_server():
    multi = decode(vector("AgentInternal|CheckEnabled|REQ"))
    assert multi.multi and multi.raw_request == b""
    empty = decode(vector("IOInfo|CLI_lL6VHzPaZXWb|RES"))
    assert empty.raw_response == b"" and empty.error == "" and empty.code == ""


def test_messages_built_in_python_encode_to_livekit_server_bytes():
    claim = decode(vector("IOInfo|CLI_lL6VHzPaZXWb|CLAIM"))
    assert claim.affinity == 1.0
    assert encode(
        ClaimRequest(request_id="REQ_ggmc6UjVKDx8", server_id="SRV_FOjBpy40KSCq", affinity=1.0)
    ) == vector("IOInfo|CLI_lL6VHzPaZXWb|CLAIM")
    assert encode(
        ClaimResponse(request_id="REQ_2AF2h27wY2My", server_id="SRV_G3ewxe2An0MP")
    ) == vector("EgressInternal|StartEgress|RCLAIM")
    start = decode(vector("EgressInternal|StartEgress|REQ"))
    rebuilt = Request(
        request_id=start.request_id,
        client_id=start.client_id,
        sent_at=start.sent_at,
        expiry=start.expiry,
        raw_request=StartEgressRequest(
            egress_id="EG_NDwdHiPNFGnH",
            room_id="RM_HMwXMS5HS7V6",
            room_composite=lk.RoomCompositeEgressRequest(
                room_name="r1",
                layout="grid",
                file_outputs=[lk.EncodedFileOutput(filepath="x.mp4")],
            ),
        ).SerializeToString(),
    )
    assert encode(rebuilt) == vector("EgressInternal|StartEgress|REQ")


def test_captured_requests_are_expired_now():
    for _, _, payload in VECTORS:
        message = decode(payload)
        if isinstance(message, Request):
            assert expired(message)
            assert not expired(message, now=message.sent_at)
            assert expired(message, now=message.expiry)  # psrpc drops at now >= expiry


def test_other_payloads_are_refused():
    with pytest.raises(EnvelopeError, match="rpc.KeepalivePing"):
        decode(KEEPALIVE[1])
    with pytest.raises(EnvelopeError):
        decode(b"\xff\xff\xff")


def test_ids_and_lock_key():
    for prefix in ("CLI_", "SRV_", "REQ_"):
        ids = {new_id(prefix) for _ in range(50)}
        assert len(ids) == 50
        assert all(re.fullmatch(prefix + r"[A-Za-z0-9]{12}", i) for i in ids)
    # base64 (standard alphabet, padded) of a 32-byte sha256
    key = lock_key(vector("IOInfo|CLI_lL6VHzPaZXWb|CLAIM"))
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", key)
