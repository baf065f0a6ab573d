"""Copies of requests and EgressInfo with storage secrets and stream keys hidden.

Everything the service returns, logs or sends by webhook goes through
`redact`, so credentials given in a request never leave the process again.
Secret fields become a `{field_name}` placeholder (empty ones stay empty, so
clients still see what was unset); stream keys keep their first and last two
characters, like `rtmp://host/app/{st...ey}`. Redacting twice changes nothing.
"""

from __future__ import annotations

import re
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

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

_SECRET_QUERY = re.compile(
    r"token|key|secret|passw|passphrase|streamid|auth|sig|credential", re.IGNORECASE
)
_MASKED = re.compile(r"^\{.*\}$")
_MIN_QUOTED_SECRET = 4  # shorter values are too common to scrub from free text


def redact(message: M) -> M:
    """A deep copy of `message` with every secret and stream key masked."""
    copy = type(message)()
    copy.CopyFrom(message)
    replacements: dict[str, str] = {}
    _mask(copy, replacements)
    if replacements:
        _scrub_text(copy, replacements)
    return copy


def redact_stream_url(url: str) -> str:
    """`url` with its stream key, credentials and secret-looking query values masked."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return mask_value(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, password = userinfo.partition(":")
        netloc = f"{user}{sep}{'{...}' if password else ''}@{host}"  # passwords fully hidden
    path = parts.path
    if parts.scheme.lower() in ("rtmp", "rtmps"):
        head, sep, key = path.rpartition("/")
        if sep and head and key:
            path = f"{head}/{mask_value(key)}"
    masked_query = [
        (name, mask_value(value) if _SECRET_QUERY.search(name) and value else value)
        for name, value in query
    ]
    # Re-encode the query only when a value changed, so other URLs keep their exact form.
    query_text = parts.query if masked_query == query else urlencode(masked_query, safe="{}.,:!=/")
    return urlunsplit((parts.scheme, netloc, path, query_text, parts.fragment))


def mask_value(value: str) -> str:
    """A stream key shortened to `{ab...yz}` (fully hidden when short)."""
    if not value or _MASKED.match(value):
        return value
    if len(value) >= 8:
        return "{" + value[:2] + "..." + value[-2:] + "}"
    return "{...}"


def _mask(message: Message, replacements: dict[str, str]) -> None:
    name = message.DESCRIPTOR.full_name
    secrets = SECRET_FIELDS.get(name, frozenset())
    urls = URL_FIELDS.get(name, frozenset())
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue  # string maps (S3 metadata) carry no credentials
            for child in value if field.is_repeated else (value,):
                _mask(child, replacements)
        elif field.name in secrets and field.type == FieldDescriptor.TYPE_STRING:
            placeholder = "{" + field.name + "}"
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
    masked = redact_stream_url(url)
    if masked != url:
        replacements[url] = masked
    return masked


def _scrub_text(message: Message, replacements: dict[str, str]) -> None:
    # Longest first, so a URL is replaced whole before any key inside it.
    ordered = sorted(
        (item for item in replacements.items() if len(item[0]) >= _MIN_QUOTED_SECRET),
        key=lambda item: len(item[0]),
        reverse=True,
    )
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue
            for child in value if field.is_repeated else (value,):
                _scrub_text(child, replacements)
        elif field.name in TEXT_FIELDS and field.type == FieldDescriptor.TYPE_STRING:
            for raw, masked in ordered:
                value = value.replace(raw, masked)
            setattr(message, field.name, value)
