"""ListEgress answers from cached encodings: each EgressInfo encoded once per change.

A listing of many egresses is cheap to find (the manager keeps them) but
costly to copy and encode, and between two calls almost none has changed.
`EgressSession.public_info()` hands out the same redacted message until its
egress changes, then a new one; so an encoding stays valid exactly as long
as it was made from that very message object, and a whole answer as long as
it lists the very same objects in the same order.
"""

from __future__ import annotations

from livekit.protocol import egress as egress_pb

from egresskit.service.twirp import RepeatedEncoding

_LISTING = RepeatedEncoding(egress_pb.ListEgressResponse, "items")


class EncodedListings:
    """Encoded ListEgressResponse bodies, per wire format."""

    def __init__(self) -> None:
        # (egress id, wire format) -> (the message encoded, its encoding)
        self._elements: dict[tuple[str, str], tuple[egress_pb.EgressInfo, bytes]] = {}
        # wire format -> (the messages of the last answer, that answer)
        self._last: dict[str, tuple[list[egress_pb.EgressInfo], bytes]] = {}

    def encode(self, infos: list[egress_pb.EgressInfo], content_type: str) -> bytes:
        """The ListEgressResponse of `infos` in `content_type` (each a public EgressInfo)."""
        last = self._last.get(content_type)
        if (
            last is not None
            and len(last[0]) == len(infos)
            and all(a is b for a, b in zip(last[0], infos, strict=True))
        ):
            return last[1]
        body = _LISTING.join([self._element(info, content_type) for info in infos], content_type)
        self._last[content_type] = (infos, body)
        return body

    def _element(self, info: egress_pb.EgressInfo, content_type: str) -> bytes:
        key = (info.egress_id, content_type)
        entry = self._elements.get(key)
        if entry is None or entry[0] is not info:
            entry = (info, _LISTING.element(info, content_type))
            self._elements[key] = entry
        return entry[1]

    def keep_only(self, infos: list[egress_pb.EgressInfo]) -> None:
        """Forget the encodings of egresses not in `infos` (every egress still listable)."""
        if len(self._elements) <= 2 * len(infos):  # two wire formats per egress at most
            return
        live = {info.egress_id for info in infos}
        for key in [key for key in self._elements if key[0] not in live]:
            del self._elements[key]
