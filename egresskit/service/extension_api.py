"""The egresskit.Egress service: egresskit's extension methods, beside livekit.Egress.

Same router, auth (`roomRecord`), wire rules and refusal codes as
`EgressApi`; every method answers LiveKit's EgressInfo.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from livekit.protocol import egress as egress_pb

from egresskit.egress.encoding import InvalidRequest
from egresskit.egress.errors import EgressError
from egresskit.egress.validation import check_identities
from egresskit.protos import egress_pb2 as extension_pb
from egresskit.service.egress_api import EgressApi, twirp_error
from egresskit.service.twirp import TwirpContext

EXTENSION_SERVICE = extension_pb.DESCRIPTOR.services_by_name["Egress"]


@contextmanager
def _for_egress(egress_id: str) -> Iterator[None]:
    """A call on one egress: its id is required, and refusals become Twirp errors."""
    try:
        if not egress_id:
            raise InvalidRequest("egress_id", "is required")
        yield
    except (EgressError, InvalidRequest) as exc:
        raise twirp_error(exc) from None


class ExtensionApi:
    """One coroutine per RPC of egresskit.Egress; refusals become Twirp errors."""

    def __init__(self, livekit_api: EgressApi) -> None:
        """Starts go through `livekit_api`, so that they follow the same caller rules."""
        self._livekit_api = livekit_api
        self.manager = livekit_api.manager

    async def StartRoomCompositeEgress(
        self, request: extension_pb.RoomCompositeEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        return await self._livekit_api.start_as_caller(request, context)

    async def PauseEgress(
        self, request: extension_pb.PauseEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        with _for_egress(request.egress_id):
            return self.manager.pause(request.egress_id)

    async def ResumeEgress(
        self, request: extension_pb.ResumeEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        with _for_egress(request.egress_id):
            return self.manager.resume(request.egress_id)

    async def StopEgress(
        self, request: extension_pb.StopEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        with _for_egress(request.egress_id):
            return self.manager.stop(request.egress_id, discard=request.discard)

    async def UpdateParticipants(
        self, request: extension_pb.UpdateParticipantsRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        with _for_egress(request.egress_id):
            include, exclude = check_identities(
                request.include_identities, request.exclude_identities
            )
            return self.manager.update_participants(request.egress_id, list(include), list(exclude))
