"""Redaction of storage secrets and stream keys in everything the service returns."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb

from egresskit.egress.redact import redact
from egresskit.masking import mask_url, mask_value

SECRETS = [
    "AKIA-access-0001",
    "s3-secret-0002",
    "s3-session-0003",
    "gcp-credentials-json-0004",
    "azure-account-key-0005",
    "ali-access-0006",
    "ali-secret-0007",
    "proxy-password-0008",
    "webhook-signing-0009",
    "streamkey-0010",
    "srt-passphrase-0011",
]


def _request() -> egress_pb.RoomCompositeEgressRequest:
    proxy = egress_pb.ProxyConfig(url="http://proxy:3128", username="me", password=SECRETS[7])
    return egress_pb.RoomCompositeEgressRequest(
        room_name="studio",
        file_outputs=[
            egress_pb.EncodedFileOutput(
                filepath="a.mp4",
                s3=egress_pb.S3Upload(
                    bucket="rec",
                    region="eu",
                    access_key=SECRETS[0],
                    secret=SECRETS[1],
                    session_token=SECRETS[2],
                    proxy=proxy,
                    metadata={"team": "blue"},
                ),
            )
        ],
        segment_outputs=[
            egress_pb.SegmentedFileOutput(
                gcp=egress_pb.GCPUpload(bucket="g", credentials=SECRETS[3])
            )
        ],
        image_outputs=[
            egress_pb.ImageOutput(
                azure=egress_pb.AzureBlobUpload(
                    account_name="acct", account_key=SECRETS[4], container_name="c"
                )
            ),
            egress_pb.ImageOutput(
                aliOSS=egress_pb.AliOSSUpload(bucket="o", access_key=SECRETS[5], secret=SECRETS[6])
            ),
        ],
        stream_outputs=[
            egress_pb.StreamOutput(
                urls=[
                    f"rtmp://live.example.com/app/{SECRETS[9]}",
                    f"srt://srt.example.com:9000?streamid=publish/{SECRETS[9]}&passphrase={SECRETS[10]}&latency=200",
                ]
            )
        ],
        webhooks=[models_pb.WebhookConfig(url="https://hooks/x", signing_key=SECRETS[8])],
    )


def _info() -> egress_pb.EgressInfo:
    return egress_pb.EgressInfo(
        egress_id="EG_1",
        room_composite=_request(),
        stream_results=[
            egress_pb.StreamInfo(
                url=f"rtmp://live.example.com/app/{SECRETS[9]}",
                error=f"connection to rtmp://live.example.com/app/{SECRETS[9]} refused",
            )
        ],
        error=f"upload failed with key {SECRETS[0]} and secret {SECRETS[1]}",
        details=f"stream rtmp://live.example.com/app/{SECRETS[9]} ended",
    )


def test_no_secret_survives_in_any_encoding():
    redacted = redact(_info())
    text = str(redacted) + json_format.MessageToJson(redacted)
    for secret in SECRETS:
        assert secret not in text, secret


def test_what_stays_visible():
    redacted = redact(_info())
    s3 = redacted.room_composite.file_outputs[0].s3
    assert (s3.bucket, s3.region, s3.access_key, s3.secret) == (
        "rec",
        "eu",
        "{access_key}",
        "{secret}",
    )
    assert s3.proxy.url == "http://proxy:3128" and s3.proxy.username == "me"
    assert s3.proxy.password == "{password}" and s3.metadata["team"] == "blue"
    assert s3.assume_role_arn == ""  # empty stays empty
    urls = redacted.room_composite.stream_outputs[0].urls
    assert urls[0] == "rtmp://live.example.com/app/{st...10}"
    assert "srt.example.com:9000" in urls[1] and "latency=200" in urls[1]
    assert redacted.stream_results[0].url == urls[0]
    assert redacted.stream_results[0].error == f"connection to {urls[0]} refused"
    assert redacted.error == "upload failed with key {access_key} and secret {secret}"
    assert redacted.room_composite.webhooks[0].url == "https://hooks/x"


def test_original_untouched_and_redaction_idempotent():
    info = _info()
    before = info.SerializeToString()
    once = redact(info)
    assert info.SerializeToString() == before
    assert redact(once) == once


def test_update_stream_and_start_egress_requests():
    update = redact(
        egress_pb.UpdateStreamRequest(
            egress_id="EG_1",
            add_output_urls=["rtmps://a.example/live2/abcd-efgh-ijkl"],
            add_destinations=[egress_pb.StreamDestination(url="rtmp://b/app/zyxwvutsrq")],
        )
    )
    assert update.add_output_urls[0] == "rtmps://a.example/live2/{ab...kl}"
    assert update.add_destinations[0].url == "rtmp://b/app/{zy...rq}"
    start = redact(
        egress_pb.StartEgressRequest(
            storage=egress_pb.StorageConfig(s3=egress_pb.S3Upload(secret="top-secret")),
            outputs=[egress_pb.Output(stream=egress_pb.StreamOutput(urls=["rtmp://h/app/short"]))],
        )
    )
    assert start.storage.s3.secret == "{secret}"
    assert start.outputs[0].stream.urls[0] == "rtmp://h/app/{...}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtmp://h/app/stream-key", "rtmp://h/app/{st...ey}"),
        ("rtmp://h/app", "rtmp://h/app"),
        ("rtmps://user:hunter22@h/app/k", "rtmps://user:{...}@h/app/{...}"),
        ("wss://h/ws?token=eyJhbGciOi.x.y&room=a", "wss://h/ws?token={ey....y}&room=a"),
        ("srt://h:1?mode=caller", "srt://h:1?mode=caller"),
    ],
)
def test_stream_url_masking(url, expected):
    assert mask_url(url) == expected


@given(key=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=40))
def test_stream_keys_never_appear_whole(key):
    url = f"rtmp://h/app/{key}"
    masked = mask_url(url)
    assert masked.startswith("rtmp://h/app/{")
    if len(key) > 4:
        assert key not in masked
    assert mask_url(masked) == masked
    assert mask_value(mask_value(key)) == mask_value(key)
