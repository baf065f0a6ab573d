"""Custom templates: the page a room composite with `custom_base_url` records, and its address.

As LiveKit does, the page is opened at
`{custom_base_url}?url=<server>&layout=<layout>&template=<layout>&token=<token>`. For a
LiveKit room, `url` is that server and the token a hidden recorder's, so a
page built on `@livekit/egress-sdk` joins the room itself. For an embedded
room, `url` is egresskit's own address: the page plays the room's
publishers over WHEP (egresskit serves `/sdk/template.js` for that) with a
token of the same grants, signed with egresskit's own key.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from egresskit.rooms.signal import recorder_token


def template_page_url(base: str, server_url: str, layout: str, token: str) -> str:
    """The page's address: `base` with url, template and token added to its own query."""
    parts = urlsplit(base)
    query = parse_qsl(parts.query, keep_blank_values=True)
    layout = layout or "grid"
    # `layout` is what @livekit/egress-sdk's getLayout() reads; `template` names it too
    query += [("url", server_url), ("layout", layout), ("template", layout), ("token", token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def template_token(api_key: str, api_secret: str, room: str, egress_id: str) -> str:
    """The page's token: a hidden recorder of `room` that may subscribe and never publish."""
    return recorder_token(api_key, api_secret, room, egress_id)
