"""`GET /files/{path}`: the output directory, read-only, for the console's player.

Enabled only with the console. A request needs a token with the
`roomRecord` grant, like any Egress API call: in the Authorization header or,
for a `<video src>` that cannot send headers, as a path prefix
`/files/.token/<token>/<path>`: a prefix, not a query parameter, so the
relative segment URLs of an HLS playlist carry it too. No file can be named
so (hidden segments are refused), and `RedactedAccessLogger` keeps the token
out of the access log. Range requests come from
aiohttp's `FileResponse`. A path with a `..`, `.` or hidden segment, or one
that resolves (through a symlink) outside the output directory, is 404:
nothing outside the root is ever opened.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.web_log import AccessLogger

from egresskit.service.auth import EGRESS_GRANT
from egresskit.tokens import TokenError, VerifiedTokens, bearer_token

TOKEN_PREFIX = ".token/"
_TOKEN_IN_PATH = re.compile(r"/\.token/[^/\s?]+")


def files_app(
    root: Path, keys: Mapping[str, str], *, max_token_ttl_s: float = 0
) -> web.Application:
    """The files endpoint, to mount with `app.add_subapp("/files", files_app(...))`."""
    tokens = VerifiedTokens(keys, max_ttl=max_token_ttl_s)
    base = root.resolve()

    async def serve(request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"]
        token = ""
        if relative.startswith(TOKEN_PREFIX):
            token, _, relative = relative.removeprefix(TOKEN_PREFIX).partition("/")
        _authorize(request, tokens, token)
        path = safe_path(base, relative)
        if path is None:
            raise web.HTTPNotFound(text="no such file")
        response = web.FileResponse(path)
        if request.query.get("download"):
            response.headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
        return response

    app = web.Application()
    app.router.add_get("/{path:.+}", serve)
    return app


def safe_path(base: Path, relative: str) -> Path | None:
    """The regular file `relative` names under `base`, or None if it names anything else."""
    parts = relative.split("/")
    if any(not p or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        return None
    path = base.joinpath(*parts)
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(base) or not resolved.is_file():
        return None
    return resolved


def _authorize(request: web.Request, tokens: VerifiedTokens, token: str) -> None:
    header = request.headers.get("Authorization")
    try:
        token = bearer_token(header) if header else token
        if not token:
            raise TokenError(f"missing Authorization header or /files/{TOKEN_PREFIX}<token>/")
        claims = tokens.verify(token)
    except TokenError as exc:
        raise web.HTTPUnauthorized(text=f"invalid token: {exc}") from None
    if claims.grant(EGRESS_GRANT) is not True:
        raise web.HTTPForbidden(text=f"token lacks the {EGRESS_GRANT} grant needed for files")


class RedactedAccessLogger(AccessLogger):
    """aiohttp's access log, with tokens in /files paths replaced (they are credentials)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if "/.token/" in request.raw_path:
            redacted = _TOKEN_IN_PATH.sub("/.token/redacted", request.raw_path)
            request = request.clone(rel_url=redacted)
        super().log(request, response, time)
