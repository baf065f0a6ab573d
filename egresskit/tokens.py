"""LiveKit-style access tokens: HS256 JWTs whose `iss` is an API key.

The same token format serves the Egress API (grant `video.roomRecord`) and
WHIP publishers of the embedded rooms (grants `roomJoin`, `canPublish`,
`room`), so both layers verify through this one module.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

DEFAULT_LEEWAY_S = 60
DEFAULT_TTL_S = 6 * 3600


class TokenError(Exception):
    """The token is missing, malformed, badly signed, expired or lacks a grant."""


@dataclass(frozen=True)
class Claims:
    """What a verified token says about its holder."""

    api_key: str
    identity: str
    name: str = ""
    metadata: str = ""
    video: Mapping[str, Any] = field(default_factory=dict)
    kind: str = ""
    not_before: float = 0.0
    expires_at: float = 0.0

    def grant(self, name: str) -> Any:
        """A video grant by its camelCase claim name (`roomRecord`, `roomJoin`, ...)."""
        return self.video.get(name)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <jwt>` header value."""
    if not authorization:
        raise TokenError("missing Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("Authorization header must be 'Bearer <token>'")
    return token.strip()


def verify_token(
    token: str,
    keys: Mapping[str, str],
    *,
    leeway: float = DEFAULT_LEEWAY_S,
    max_ttl: float = 0,
) -> Claims:
    """Check signature (HS256 only), issuer and validity window; return the claims.

    `leeway` absorbs clock skew between the signer and this machine. `max_ttl`
    (seconds, 0 = no limit) refuses a token that stays valid longer than that
    from now: a leaked long-lived token can only be revoked by rotating the key.
    """
    try:
        # One unverified pass for both parts: pyjwt's segment checks cost more than the HMAC.
        parts = jwt.decode_complete(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    header, unverified = parts["header"], parts["payload"]
    if header.get("alg") != "HS256":
        raise TokenError("only HS256 tokens are accepted")
    api_key = unverified.get("iss")
    if not isinstance(api_key, str) or api_key not in keys:
        raise TokenError("unknown API key")
    try:
        claims = jwt.decode(
            token,
            keys[api_key],
            algorithms=["HS256"],
            leeway=leeway,
            options={"require": ["exp"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token has expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("token is not valid yet") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    if max_ttl and float(claims["exp"]) - time.time() > max_ttl + leeway:
        raise TokenError(f"token lifetime exceeds the {max_ttl:.0f} s this service accepts")
    video = claims.get("video") or {}
    if not isinstance(video, dict):
        raise TokenError("token grant 'video' must be an object")
    return Claims(
        api_key=api_key,
        identity=str(claims.get("sub") or ""),
        name=str(claims.get("name") or ""),
        metadata=str(claims.get("metadata") or ""),
        video=video,
        kind=str(claims.get("kind") or ""),
        not_before=float(claims.get("nbf") or 0),
        expires_at=float(claims["exp"]),
    )


class VerifiedTokens:
    """Remembers tokens it has verified, until they expire.

    Verifying costs more than serving a small request (pyjwt parses and
    checks every part in Python), and SDKs resend the same token for every
    call within its second or for its whole lifetime. A hit still checks the
    validity window; a token is only ever remembered after a full check.
    """

    def __init__(
        self,
        keys: Mapping[str, str],
        *,
        leeway: float = DEFAULT_LEEWAY_S,
        max_ttl: float = 0,
        size: int = 1024,
    ) -> None:
        self._keys = keys
        self._leeway = leeway
        self._max_ttl = max_ttl
        self._size = size
        self._known: dict[str, Claims] = {}

    def verify(self, token: str) -> Claims:
        now = time.time()
        claims = self._known.get(token)
        if claims is not None:
            if claims.not_before - self._leeway <= now <= claims.expires_at + self._leeway:
                return claims
            del self._known[token]
            raise TokenError("token has expired")
        # A remembered token's remaining lifetime only shrinks: max_ttl holds on hits too.
        claims = verify_token(token, self._keys, leeway=self._leeway, max_ttl=self._max_ttl)
        if len(self._known) >= self._size:
            self._known.pop(next(iter(self._known)))  # the oldest entry
        self._known[token] = claims
        return claims


def create_token(
    api_key: str,
    api_secret: str,
    *,
    identity: str = "",
    name: str = "",
    video: Mapping[str, Any] | None = None,
    ttl: float = DEFAULT_TTL_S,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Sign a token the way LiveKit's server SDKs do (for the CLI, examples and dev mode)."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": api_key, "nbf": now, "exp": now + int(ttl)}
    if identity:
        claims["sub"] = identity
    if name:
        claims["name"] = name
    if video:
        claims["video"] = dict(video)
    if extra:
        claims.update(extra)
    return jwt.encode(claims, api_secret, algorithm="HS256")
