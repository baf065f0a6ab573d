"""psrpc wire vectors for the tests: bytes livekit-server v1.13.5 published on Redis, kept verbatim.

RUN1 is a capture (`redis-cli --no-raw psubscribe '*'`) of a CreateRoom and a
StartRoomCompositeEgress with no worker attached; RUN2 one of a room named
`psrpc-vectors.1` (UpdateRoomMetadata), a StartRoomCompositeEgress claimed by
egresskit, an IOInfo.UpdateEgress from egresskit and a StopEgress. Every
payload below was published by livekit-server itself (its psrpc clients and
servers), never by egresskit.
"""

from __future__ import annotations

RUN1, RUN2 = "run1", "run2"

# (capture, channel, payload) as livekit-server published them
VECTORS = [
    (
        RUN1,
        "RoomManager|CreateRoom|ND_DJ8NnVSTYbaQ|REQ",
        b"\n$type.googleapis.com/internal.Request\x12>\n\x10REQ_DaBq04wuWKit\x12\x10CLI_0YRAkeioA3pc\x18\xf3\xb9\xa6\x8d\xe6\xbb\xc6\xf6\x18 \xf3\x81\xd6\xad\x8b\xbc\xc6\xf6\x18B\x04\n\x02r1",
    ),
    (
        RUN1,
        "RoomManager|CLI_0YRAkeioA3pc|CLAIM",
        b"\n)type.googleapis.com/internal.ClaimRequest\x12)\n\x10REQ_DaBq04wuWKit\x12\x10SRV_mdBa3pWIHDQw\x1d\x00\x00\x80?",
    ),
    (
        RUN1,
        "RoomManager|CreateRoom|ND_DJ8NnVSTYbaQ|RCLAIM",
        b"\n*type.googleapis.com/internal.ClaimResponse\x12$\n\x10REQ_DaBq04wuWKit\x12\x10SRV_mdBa3pWIHDQw",
    ),
    (
        RUN1,
        "RoomManager|CLI_0YRAkeioA3pc|RES",
        b"\n%type.googleapis.com/internal.Response\x12\x8d\x02\n\x10REQ_DaBq04wuWKit\x12\x10SRV_mdBa3pWIHDQw\x18\x8a\xa4\xbf\x8f\xe6\xbb\xc6\xf6\x18:\xdc\x01\n\x0fRM_HMwXMS5HS7V6\x12\x02r1\x18\xac\x02(\xcd\xbd\xba\xd8\x062,BdMQB5yGffj06LkisCjT4KwNHYORZ3hqBPfXm0HDyiGB:\x0c\n\naudio/PCMU:\x0c\n\naudio/PCMA:\x0c\n\naudio/opus:\x0b\n\taudio/red:\x0b\n\tvideo/VP8:\x0c\n\nvideo/H264:\x0b\n\tvideo/VP9:\x0b\n\tvideo/AV1:\x0c\n\nvideo/H265:\x0b\n\tvideo/rtxp\x14x\xf8\xa3\xf1\x88\xa34",
    ),
    (
        RUN1,
        "AgentInternal|CheckEnabled|REQ",
        b"\n$type.googleapis.com/internal.Request\x12:\n\x10REQ_cispCMIJa48r\x12\x10CLI_pS9uDLq719or\x18\xa2\xfc\xf7\x8f\xe6\xbb\xc6\xf6\x18 \xa2\xe0\x8f\xe0\xf8\xbb\xc6\xf6\x18(\x01",
    ),
    (
        RUN1,
        "EgressInternal|StartEgress|REQ",
        b"\n$type.googleapis.com/internal.Request\x12q\n\x10REQ_TRmQ0gS1kaBx\x12\x10CLI_q40P5wqcm9ig\x18\xf5\xea\xee\x91\xe6\xbb\xc6\xf6\x18 \xf5\xb2\x9e\xb2\x8b\xbc\xc6\xf6\x18B7\n\x0fEG_NDwdHiPNFGnH\x1a\x0fRM_HMwXMS5HS7V6*\x13\n\x02r1\x12\x04gridZ\x07\x12\x05x.mp4",
    ),
    (
        RUN2,
        "Room|UpdateRoomMetadata|psrpcu+002dvectorsu+002e1|REQ",
        b"\n$type.googleapis.com/internal.Request\x12N\n\x10REQ_MwodRly8KDp6\x12\x10CLI_SaRKuKT5Cduq\x18\x9f\x9c\x90\xd6\xa5\xc6\xc6\xf6\x18 \x9f\xd8\xd1\xec\xb0\xc6\xc6\xf6\x18B\x14\n\x0fpsrpc-vectors.1\x12\x01m",
    ),
    (
        RUN2,
        "Room|CLI_SaRKuKT5Cduq|CLAIM",
        b"\n)type.googleapis.com/internal.ClaimRequest\x12)\n\x10REQ_MwodRly8KDp6\x12\x10SRV_UkZgHYbdhtRP\x1d\x00\x00\x80?",
    ),
    (
        RUN2,
        "Room|UpdateRoomMetadata|psrpcu+002dvectorsu+002e1|RCLAIM",
        b"\n*type.googleapis.com/internal.ClaimResponse\x12$\n\x10REQ_MwodRly8KDp6\x12\x10SRV_UkZgHYbdhtRP",
    ),
    (
        RUN2,
        "Room|CLI_SaRKuKT5Cduq|RES",
        b"\n%type.googleapis.com/internal.Response\x12\x9c\x02\n\x10REQ_MwodRly8KDp6\x12\x10SRV_UkZgHYbdhtRP\x18\x9b\xa5\xe1\xd6\xa5\xc6\xc6\xf6\x18:\xeb\x01\n\x0fRM_HXUzTnuTZKoz\x12\x0fpsrpc-vectors.1\x18\xac\x02(\xb5\xc0\xba\xd8\x062+JmFjARln0TXh2w78WQMvKhHPNTgKn52RI7Hpd1UO9mA:\x0c\n\naudio/PCMU:\x0c\n\naudio/PCMA:\x0c\n\naudio/opus:\x0b\n\taudio/red:\x0b\n\tvideo/VP8:\x0c\n\nvideo/H264:\x0b\n\tvideo/VP9:\x0b\n\tvideo/AV1:\x0c\n\nvideo/H265:\x0b\n\tvideo/rtxB\x01mp\x14x\xc5\xa5\x87\x89\xa34",
    ),
    (
        RUN2,
        "EgressInternal|StartEgress|RCLAIM",
        b"\n*type.googleapis.com/internal.ClaimResponse\x12$\n\x10REQ_2AF2h27wY2My\x12\x10SRV_G3ewxe2An0MP",
    ),
    (
        RUN2,
        "IOInfo|CLI_lL6VHzPaZXWb|CLAIM",
        b"\n)type.googleapis.com/internal.ClaimRequest\x12)\n\x10REQ_ggmc6UjVKDx8\x12\x10SRV_FOjBpy40KSCq\x1d\x00\x00\x80?",
    ),
    (
        RUN2,
        "IOInfo|CLI_lL6VHzPaZXWb|RES",
        b"\n%type.googleapis.com/internal.Response\x12.\n\x10REQ_ggmc6UjVKDx8\x12\x10SRV_FOjBpy40KSCq\x18\x86\xfb\xe6\xd6\xa7\xc6\xc6\xf6\x18",
    ),
    (
        RUN2,
        "EgressHandler|StopEgress|EG_KPFRui5pZ9qy|REQ",
        b"\n$type.googleapis.com/internal.Request\x12K\n\x10REQ_xhgaDD6HH3iE\x12\x10CLI_HONxHN8hE2cs\x18\x98\xef\xc4\xd8\xa7\xc6\xc6\xf6\x18 \x98\xab\x86\xef\xb2\xc6\xc6\xf6\x18B\x11\n\x0fEG_KPFRui5pZ9qy",
    ),
    (
        RUN2,
        "EgressHandler|StopEgress|EG_KPFRui5pZ9qy|RCLAIM",
        b"\n*type.googleapis.com/internal.ClaimResponse\x12$\n\x10REQ_xhgaDD6HH3iE\x12\x10SRV_G3ewxe2An0MP",
    ),
]

KEEPALIVE = (
    "Keepalive|Ping|ND_DJ8NnVSTYbaQ|REQ",
    b"\n%type.googleapis.com/rpc.KeepalivePing\x12\x06\x08\xcc\xbd\xba\xd8\x06",
)


def vector(channel: str) -> bytes:
    """The payload captured on `channel`."""
    return next(payload for _, ch, payload in VECTORS if ch == channel)
