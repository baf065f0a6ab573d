"""Copies of requests and EgressInfo with storage secrets and stream keys hidden.

Everything the service returns, logs or sends by webhook goes through
`redact`, so credentials given in a request never leave the process again.
Which fields of LiveKit's messages hold secrets is known here; how a value
is masked is `egresskit.masking`'s rule: secret fields become `{field_name}`
(empty ones stay empty, so clients still see what was unset), stream keys
keep their ends, like `rtmp://host/app/{st...ey}`. Redacting twice changes nothing.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from egresskit.masking import mask_url, named, scrub, url_secrets

M = TypeVar("M", bound=Message)

# Fields holding credentials, by message type.
SECRET_FIELDS: dict[str, frozenset[str]] = {
    "livekit.S3Upload": frozenset(
        {"access_key", "secret", "session_token", "assume_role_external_id"}
    ),
    "livekit.GCPUpload": frozenset({"credentials"}),
    "livekit.AzureBlobUpload": frozenset({"account_key"}),
    "livekit.AliOSSUpload": frozenset({"access_key", "secret"}),
    "livekit.ProxyConfig": frozenset({"password"}),
    "livekit.WebhookConfig": frozenset({"signing_key"}),
}

# Fields holding URLs that may carry a stream key or token, by message type.
URL_FIELDS: dict[str, frozenset[str]] = {
    "livekit.StreamOutput": frozenset({"urls"}),
    "livekit.StreamDestination": frozenset({"url"}),
    "livekit.StreamInfo": frozenset({"url"}),
    "livekit.UpdateStreamRequest": frozenset({"add_output_urls", "remove_output_urls"}),
    "livekit.TrackEgressRequest": frozenset({"websocket_url"}),
    "livekit.WebEgressRequest": frozenset({"url"}),
    "livekit.WebSource": frozenset({"url"}),
}

# Free-text fields that may quote a URL or secret (error messages from stages).
TEXT_FIELDS = frozenset({"error", "details"})


def redact(message: M) -> M:
    """A deep copy of `message` with every secret and stream key masked."""
    copy = type(message)()
    copy.CopyFrom(message)
    replacements: dict[str, str] = {}
    _mask(copy, replacements)
    if replacements:
        _scrub_text(copy, replacements)
    return copy


def _mask(message: Message, replacements: dict[str, str]) -> None:
    name = message.DESCRIPTOR.full_name
    secrets = SECRET_FIELDS.get(name, frozenset())
    urls = URL_FIELDS.get(name, frozenset())
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if _is_map(field):
                continue
            for child in value if field.is_repeated else (value,):
                _mask(child, replacements)
        elif field.name in secrets and field.type == FieldDescriptor.TYPE_STRING:
            placeholder = named(field.name)
            if value != placeholder:
                replacements[value] = placeholder
                setattr(message, field.name, placeholder)
        elif field.name in urls:
            if field.is_repeated:
                masked = [_masked_url(url, replacements) for url in value]
                del value[:]
                value.extend(masked)
            else:
                setattr(message, field.name, _masked_url(value, replacements))


def _masked_url(url: str, replacements: dict[str, str]) -> str:
    replacements.update(url_secrets(url))
    return mask_url(url)


def _scrub_text(message: Message, replacements: dict[str, str]) -> None:
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if _is_map(field):
                continue
            for child in value if field.is_repeated else (value,):
                _scrub_text(child, replacements)
        elif field.name in TEXT_FIELDS and field.type == FieldDescriptor.TYPE_STRING:
            setattr(message, field.name, scrub(value, replacements))


def _is_map(field: FieldDescriptor) -> bool:
    """String maps (S3 metadata, tags) carry no credentials."""
    return field.message_type is not None and field.message_type.GetOptions().map_entry
