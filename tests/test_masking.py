"""One masking rule for every layer: URLs, configs and free text show secrets as `{...}` forms."""

from __future__ import annotations

from livekit.protocol import egress as egress_pb

from egresskit.egress.redact import redact
from egresskit.masking import mask_config, mask_url, scrub, url_secrets
from egresskit.storage.http import HttpStorage
from egresskit.storage.s3 import S3Storage

KEY = "live_0123456789abcdef"
URL = f"rtmp://user:pw-4321@live.example.com/app/{KEY}"


def test_an_error_quoting_a_stream_url_or_its_key_is_masked_the_same_way():
    error = f"Connection to {URL} refused; key {KEY}"
    masked = scrub(error, url_secrets(URL))
    assert masked == (
        "Connection to rtmp://user:{...}@live.example.com/app/{li...ef} refused; key {li...ef}"
    )
    info = egress_pb.EgressInfo(
        egress_id="EG_x",
        error=error,
        stream_results=[egress_pb.StreamInfo(url=URL, error=f"I/O error on {KEY}")],
    )
    shown = redact(info)
    assert shown.error == masked
    assert shown.stream_results[0].url == mask_url(URL)
    assert shown.stream_results[0].error == "I/O error on {li...ef}"
    assert KEY not in str(shown) and "pw-4321" not in str(shown)


def test_storage_configs_use_the_same_placeholders_as_requests():
    s3 = S3Storage.from_config({"bucket": "b", "access_key": "AKIA0001", "secret": "s3cr3t-2"})
    assert s3.redacted()["access_key"] == "{access_key}"
    assert s3.redacted()["secret"] == "{secret}"
    request = redact(egress_pb.S3Upload(bucket="b", access_key="AKIA0001", secret="s3cr3t-2"))
    assert (request.access_key, request.secret) == ("{access_key}", "{secret}")
    assert mask_config({"gcp": {"credentials": "{...}", "bucket": "g"}}) == {
        "gcp": {"credentials": "{credentials}", "bucket": "g"}
    }


def test_http_storage_masks_its_url_and_headers():
    storage = HttpStorage.from_config(
        {
            "url": "https://me:dav-pass@dav.example/rec/{key}?sv=2024&sig=abcdef0123",
            "headers": {"Authorization": "Bearer t0ken-value"},
        }
    )
    shown = str(storage.redacted()) + repr(storage)
    for secret in ("dav-pass", "abcdef0123", "t0ken-value"):
        assert secret not in shown
    assert storage.redacted()["url"] == (
        "https://me:{...}@dav.example/rec/{key}?sv={...}&sig={ab...23}"
    )
    assert storage.redacted()["headers"] == {"Authorization": "{Authorization}"}


def test_credential_shapes_in_library_errors_are_masked():
    text = "Signature=abcdef0123456789 AccountKey=c2VjcmV0; short x"
    assert scrub(text, ["x"]) == "Signature={...} AccountKey={...}; short x"
