"""Hiding secrets in what the service shows: the one home of URL and secret masking.

Requests carry storage credentials, stream keys and tokens; logs, errors,
Twirp responses, webhooks and storage reprs must never repeat them. Every
layer masks through this module, so there is one rule and one placeholder
style: braces around what was hidden.

- `{name}`: a value whose field or config key is known (`{secret}`, `{access_key}`);
- `{ab...yz}`: a stream key or token of 8 characters or more keeps its ends,
  so an operator can tell two destinations apart;
- `{...}`: anything else (short values, passwords in URLs, credential-shaped text).

Masking what is already masked changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HIDDEN = "{...}"

# Query parameters whose values are credentials (SRT's streamid and passphrase among them).
SECRET_QUERY = re.compile(
    r"token|key|secret|passw|passphrase|streamid|auth|sig|credential", re.IGNORECASE
)
# Config keys whose values are credentials, in any storage backend's config.
SECRET_KEYS = frozenset(
    {"access_key", "secret", "session_token", "account_key", "credentials", "password"}
)
# Values shorter than this are too common to scrub from free text.
MIN_QUOTED_SECRET = 4
# Shapes of credentials that may surface in a library's exception text even when the
# exact configured value does not (signatures, PEM keys, shared-key headers).
_SECRET_PATTERNS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"(Signature=)[0-9a-fA-F]+"),
    re.compile(r"(SharedKey [^:\s]+:)\S+"),
    re.compile(r"(AccountKey=)[^;\s]+"),
    re.compile(r'("private_key(?:_id)?"\s*:\s*")[^"]*'),
)
_MASKED = re.compile(r"^\{.*\}$")
_HINT_LENGTH = 8  # values at least this long keep two characters at each end


def named(name: str) -> str:
    """The placeholder of a secret whose field or key is `name`: `{name}`."""
    return "{" + name + "}"


def mask_value(value: str) -> str:
    """A stream key or token shortened to `{ab...yz}` (`{...}` when short; empty stays empty)."""
    if not value or _MASKED.match(value):
        return value
    if len(value) >= _HINT_LENGTH:
        return "{" + value[:2] + "..." + value[-2:] + "}"
    return HIDDEN


def mask_url(url: str, *, every_query_value: bool = False) -> str:
    """`url` with its RTMP stream key, password and secret-looking query values masked.

    `every_query_value` masks all query values (for URLs whose whole query is
    a signature, as an upload endpoint's may be). A URL that cannot be parsed
    is hidden whole.
    """
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return mask_value(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, password = userinfo.partition(":")
        netloc = f"{user}{sep}{HIDDEN if password else ''}@{host}"  # passwords fully hidden
    path = parts.path
    if parts.scheme.lower() in ("rtmp", "rtmps"):
        head, sep, key = path.rpartition("/")
        if sep and head and key:
            path = f"{head}/{mask_value(key)}"
    masked_query = [
        (
            name,
            mask_value(value)
            if value and (every_query_value or SECRET_QUERY.search(name))
            else value,
        )
        for name, value in query
    ]
    # Re-encode the query only when a value changed, so other URLs keep their exact form.
    query_text = parts.query if masked_query == query else urlencode(masked_query, safe="{}.,:!=/")
    return urlunsplit((parts.scheme, netloc, path, query_text, parts.fragment))


def url_secrets(url: str) -> dict[str, str]:
    """What `scrub` replaces when a text may quote `url`: the URL and its secret parts.

    FFmpeg and network libraries quote a URL whole or in pieces (the stream
    key alone, the host and path); each piece maps to its masked form.
    """
    masked = mask_url(url)
    if masked == url:
        return {}
    secrets = {url: masked}
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        password = parts.password
    except ValueError:
        return secrets
    if password:
        secrets[password] = HIDDEN
    if parts.scheme.lower() in ("rtmp", "rtmps"):
        key = parts.path.rpartition("/")[2]
        if key:
            secrets[key] = mask_value(key)
    for name, value in query:
        if value and SECRET_QUERY.search(name):
            secrets[value] = mask_value(value)
    return secrets


def scrub(text: str, secrets: Mapping[str, str] | Iterable[str] = ()) -> str:
    """`text` with known secret values and credential-shaped substrings masked.

    `secrets` maps each raw value to what replaces it (as `url_secrets` gives),
    or lists raw values, which become `{...}`. Longer values go first, so a
    URL is replaced whole before any key inside it; values shorter than
    MIN_QUOTED_SECRET are left, being too common to find safely.
    """
    if not isinstance(secrets, Mapping):
        secrets = dict.fromkeys(secrets, HIDDEN)
    for raw in sorted(secrets, key=len, reverse=True):
        if len(raw) >= MIN_QUOTED_SECRET and raw != secrets[raw]:
            text = text.replace(raw, secrets[raw])
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + HIDDEN, text)
    return text


def mask_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a config mapping with every credential value as `{key}`, nested ones too."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            out[key] = mask_config(value)
        elif key in SECRET_KEYS and value:
            out[key] = named(key)
        else:
            out[key] = value
    return out


def config_secrets(cfg: Mapping[str, Any]) -> list[str]:
    """Every credential string in a config mapping, nested ones too (for `scrub`)."""
    found: list[str] = []
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            found.extend(config_secrets(value))
        elif key in SECRET_KEYS and isinstance(value, str) and value:
            found.append(value)
    return found
