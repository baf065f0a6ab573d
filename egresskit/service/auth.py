"""Twirp authorization: a Bearer access token carrying the grants a service needs.

Egress calls need `video.roomRecord`; a RoomService would ask for `roomList`
or `roomAdmin`. Every failure is `unauthenticated` (401) with a message that
says what was wrong with the token and never echoes the token or a secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiohttp import web

from egresskit.service.twirp import Authorize, TwirpError
from egresskit.tokens import DEFAULT_LEEWAY_S, Claims, TokenError, VerifiedTokens, bearer_token

EGRESS_GRANT = "roomRecord"


def require_grant(
    keys: Mapping[str, str],
    grant: str | Sequence[str],
    *,
    leeway: float = DEFAULT_LEEWAY_S,
    max_ttl: float = 0,
    any_of: bool = False,
) -> Authorize:
    """An `authorize` callable for `TwirpService` accepting tokens signed by one of `keys`.

    `keys` maps API keys to their secrets. `grant` names the video grant(s)
    the token must hold, as `roomRecord` or `video.roomRecord`; with several,
    every one is required, or one of them with `any_of`. `max_ttl` (0 = no
    limit) refuses tokens valid for longer (see `verify_token`). The callable
    returns the verified `Claims`.
    """
    names = (grant,) if isinstance(grant, str) else tuple(grant)
    required = tuple(name.removeprefix("video.") for name in names)
    if not required:
        raise ValueError("at least one grant is required")

    tokens = VerifiedTokens(keys, leeway=leeway, max_ttl=max_ttl)

    async def authorize(request: web.Request, method: str) -> Claims:
        try:
            claims = tokens.verify(bearer_token(request.headers.get("Authorization")))
        except TokenError as error:
            raise TwirpError("unauthenticated", f"invalid token: {error}") from None
        missing = [name for name in required if claims.grant(name) is not True]
        if any_of and len(missing) < len(required):
            return claims
        if any_of:
            raise TwirpError(
                "unauthenticated",
                f"token needs one of the {' or '.join(required)} grants for {method}",
            )
        if missing:
            raise TwirpError(
                "unauthenticated",
                f"token lacks the {', '.join(missing)} grant needed for {method}",
            )
        return claims

    return authorize
