"""psrpc wire vectors: bytes livekit-server v1.13.5 published on Redis, kept verbatim.

RUN1 is a capture (`redis-cli --no-raw psubscribe '*'`) of a CreateRoom and a
StartRoomCompositeEgress with no worker attached; RUN2 one of a room named
`psrpc-vectors.1` (UpdateRoomMetadata), a StartRoomCompositeEgress claimed by
egresskit, an IOInfo.UpdateEgress from egresskit and a StopEgress. Every
payload below was published by livekit-server itself (its psrpc clients and
servers), never by egresskit.
"""

from __future__ import annotations

import re

import pytest
from livekit.protocol import egress as lk

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

RUN1, RUN2 = "run1", "run2"

# (capture, channel, payload) as livekit-server published them
VECTORS = [
    (RUN1, 'RoomManager|CreateRoom|ND_DJ8NnVSTYbaQ|REQ',
     b'\n$type.googleapis.com/internal.Request\x12>\n\x10REQ_DaBq04wuWKit\x12\x10CLI_0YRAkeioA3pc\x18\xf3\xb9\xa6\x8d\xe6\xbb\xc6\xf6\x18 \xf3\x81\xd6\xad\x8b\xbc\xc6\xf6\x18B\x04\n\x02r1'),
    (RUN1, 'RoomManager|CLI_0YRAkeioA3pc|CLAIM',
     b'\n)type.googleapis.com/internal.ClaimRequest\x12)\n\x10REQ_DaBq04wuWKit\x12\x10SRV_mdBa3pWIHDQw\x1d\x00\x00\x80?'),
    (RUN1, 'RoomManager|CreateRoom|ND_DJ8NnVSTYbaQ|RCLAIM',
     b'\n*type.googleapis.com/internal.ClaimResponse\x12$\n\x10REQ_DaBq04wuWKit\x12\x10SRV_mdBa3pWIHDQw'),
    (RUN1, 'RoomManager|CLI_0YRAkeioA3pc|RES',
     b'\n%type.googleapis.com/internal.Response\x12\x8d\x02\n\x10REQ_DaBq04wuWKit\x12\x10SRV_mdBa3pWIHDQw\x18\x8a\xa4\xbf\x8f\xe6\xbb\xc6\xf6\x18:\xdc\x01\n\x0fRM_HMwXMS5HS7V6\x12\x02r1\x18\xac\x02(\xcd\xbd\xba\xd8\x062,BdMQB5yGffj06LkisCjT4KwNHYORZ3hqBPfXm0HDyiGB:\x0c\n\naudio/PCMU:\x0c\n\naudio/PCMA:\x0c\n\naudio/opus:\x0b\n\taudio/red:\x0b\n\tvideo/VP8:\x0c\n\nvideo/H264:\x0b\n\tvideo/VP9:\x0b\n\tvideo/AV1:\x0c\n\nvideo/H265:\x0b\n\tvideo/rtxp\x14x\xf8\xa3\xf1\x88\xa34'),
    (RUN1, 'AgentInternal|CheckEnabled|REQ',
     b'\n$type.googleapis.com/internal.Request\x12:\n\x10REQ_cispCMIJa48r\x12\x10CLI_pS9uDLq719or\x18\xa2\xfc\xf7\x8f\xe6\xbb\xc6\xf6\x18 \xa2\xe0\x8f\xe0\xf8\xbb\xc6\xf6\x18(\x01'),
    (RUN1, 'EgressInternal|StartEgress|REQ',
     b'\n$type.googleapis.com/internal.Request\x12q\n\x10REQ_TRmQ0gS1kaBx\x12\x10CLI_q40P5wqcm9ig\x18\xf5\xea\xee\x91\xe6\xbb\xc6\xf6\x18 \xf5\xb2\x9e\xb2\x8b\xbc\xc6\xf6\x18B7\n\x0fEG_NDwdHiPNFGnH\x1a\x0fRM_HMwXMS5HS7V6*\x13\n\x02r1\x12\x04gridZ\x07\x12\x05x.mp4'),
    (RUN2, 'Room|UpdateRoomMetadata|psrpcu+002dvectorsu+002e1|REQ',
     b'\n$type.googleapis.com/internal.Request\x12N\n\x10REQ_MwodRly8KDp6\x12\x10CLI_SaRKuKT5Cduq\x18\x9f\x9c\x90\xd6\xa5\xc6\xc6\xf6\x18 \x9f\xd8\xd1\xec\xb0\xc6\xc6\xf6\x18B\x14\n\x0fpsrpc-vectors.1\x12\x01m'),
    (RUN2, 'Room|CLI_SaRKuKT5Cduq|CLAIM',
     b'\n)type.googleapis.com/internal.ClaimRequest\x12)\n\x10REQ_MwodRly8KDp6\x12\x10SRV_UkZgHYbdhtRP\x1d\x00\x00\x80?'),
    (RUN2, 'Room|UpdateRoomMetadata|psrpcu+002dvectorsu+002e1|RCLAIM',
     b'\n*type.googleapis.com/internal.ClaimResponse\x12$\n\x10REQ_MwodRly8KDp6\x12\x10SRV_UkZgHYbdhtRP'),
    (RUN2, 'Room|CLI_SaRKuKT5Cduq|RES',
     b'\n%type.googleapis.com/internal.Response\x12\x9c\x02\n\x10REQ_MwodRly8KDp6\x12\x10SRV_UkZgHYbdhtRP\x18\x9b\xa5\xe1\xd6\xa5\xc6\xc6\xf6\x18:\xeb\x01\n\x0fRM_HXUzTnuTZKoz\x12\x0fpsrpc-vectors.1\x18\xac\x02(\xb5\xc0\xba\xd8\x062+JmFjARln0TXh2w78WQMvKhHPNTgKn52RI7Hpd1UO9mA:\x0c\n\naudio/PCMU:\x0c\n\naudio/PCMA:\x0c\n\naudio/opus:\x0b\n\taudio/red:\x0b\n\tvideo/VP8:\x0c\n\nvideo/H264:\x0b\n\tvideo/VP9:\x0b\n\tvideo/AV1:\x0c\n\nvideo/H265:\x0b\n\tvideo/rtxB\x01mp\x14x\xc5\xa5\x87\x89\xa34'),
    (RUN2, 'EgressInternal|StartEgress|RCLAIM',
     b'\n*type.googleapis.com/internal.ClaimResponse\x12$\n\x10REQ_2AF2h27wY2My\x12\x10SRV_G3ewxe2An0MP'),
    (RUN2, 'IOInfo|CLI_lL6VHzPaZXWb|CLAIM',
     b'\n)type.googleapis.com/internal.ClaimRequest\x12)\n\x10REQ_ggmc6UjVKDx8\x12\x10SRV_FOjBpy40KSCq\x1d\x00\x00\x80?'),
    (RUN2, 'IOInfo|CLI_lL6VHzPaZXWb|RES',
     b'\n%type.googleapis.com/internal.Response\x12.\n\x10REQ_ggmc6UjVKDx8\x12\x10SRV_FOjBpy40KSCq\x18\x86\xfb\xe6\xd6\xa7\xc6\xc6\xf6\x18'),
    (RUN2, 'EgressHandler|StopEgress|EG_KPFRui5pZ9qy|REQ',
     b'\n$type.googleapis.com/internal.Request\x12K\n\x10REQ_xhgaDD6HH3iE\x12\x10CLI_HONxHN8hE2cs\x18\x98\xef\xc4\xd8\xa7\xc6\xc6\xf6\x18 \x98\xab\x86\xef\xb2\xc6\xc6\xf6\x18B\x11\n\x0fEG_KPFRui5pZ9qy'),
    (RUN2, 'EgressHandler|StopEgress|EG_KPFRui5pZ9qy|RCLAIM',
     b'\n*type.googleapis.com/internal.ClaimResponse\x12$\n\x10REQ_xhgaDD6HH3iE\x12\x10SRV_G3ewxe2An0MP'),
]

KEEPALIVE = (
    "Keepalive|Ping|ND_DJ8NnVSTYbaQ|REQ",
    b'\n%type.googleapis.com/rpc.KeepalivePing\x12\x06\x08\xcc\xbd\xba\xd8\x06',
)


ROOM = "psrpc-vectors.1"


def has_request(message) -> bool:
    return any(
        isinstance(decode(p), Request) and decode(p).request_id == message.request_id
        for _, _, p in VECTORS
    )


def request_for(request_id: str) -> Request:
    return next(
        decode(p) for _, _, p in VECTORS
        if isinstance(decode(p), Request) and decode(p).request_id == request_id
    )


def vector(channel: str) -> bytes:
    return next(payload for _, ch, payload in VECTORS if ch == channel)


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
        client = request_for(message.request_id).client_id if has_request(message) else parts[1]
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
    assert request_channel("EgressInternal", "StartEgress", [""]) == "EgressInternal|StartEgress|REQ"
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
