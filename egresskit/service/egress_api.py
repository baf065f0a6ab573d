"""The livekit.Egress service: Twirp handlers over the EgressManager."""

from __future__ import annotations

import logging

from aiohttp import web
from google.protobuf.message import Message
from livekit.protocol import egress as egress_pb

from egresskit.egress.encoding import InvalidRequest
from egresskit.egress.errors import (
    EgressError,
)
from egresskit.egress.manager import EgressManager
from egresskit.egress.refusals import refusal_code
from egresskit.egress.validation import Caller, check_destination, stream_protocol
from egresskit.netpolicy import NetworkPolicy
from egresskit.service.listings import EncodedListings
from egresskit.service.twirp import Encoded, TwirpContext, TwirpError
from egresskit.storage.registry import StorageNotInstalled

log = logging.getLogger(__name__)


def twirp_error(exc: Exception) -> TwirpError:
    """The Twirp error a refusal from the egress layer becomes."""
    return TwirpError(refusal_code(exc), str(exc))


def service_url(request: web.Request) -> str:
    """This service's address as the connection that carried `request` reached it.

    The local end of the connection, not the Host header: a page in this
    machine's Chromium can reach that address whatever name the caller used.
    """
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return ""
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class EgressApi:
    """One coroutine per RPC of livekit.Egress; refusals become Twirp errors."""

    def __init__(self, manager: EgressManager, network: NetworkPolicy) -> None:
        """`network`: where destinations named in requests may be."""
        self.manager = manager
        self.network = network
        self._listings = EncodedListings()

    async def start_as_caller(
        self, request: Message, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        """Start any kind of request (egresskit.Egress's extension too) under the caller rules."""
        caller = Caller(api_key=context.auth.api_key, network=self.network)
        try:
            return await self.manager.start(
                request, caller, service_url=service_url(context.http_request)
            )
        except (EgressError, InvalidRequest, StorageNotInstalled) as exc:
            raise twirp_error(exc) from None

    async def StartRoomCompositeEgress(
        self, request: egress_pb.RoomCompositeEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        return await self.start_as_caller(request, context)

    async def StartTrackCompositeEgress(
        self, request: egress_pb.TrackCompositeEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        return await self.start_as_caller(request, context)

    async def StartTrackEgress(
        self, request: egress_pb.TrackEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        return await self.start_as_caller(request, context)

    async def StartParticipantEgress(
        self, request: egress_pb.ParticipantEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        return await self.start_as_caller(request, context)

    async def StartWebEgress(
        self, request: egress_pb.WebEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        return await self.start_as_caller(request, context)

    async def StartEgress(
        self, request: egress_pb.StartEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        return await self.start_as_caller(request, context)

    async def UpdateLayout(
        self, request: egress_pb.UpdateLayoutRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        try:
            if not request.egress_id:
                raise InvalidRequest("egress_id", "is required")
            return self.manager.update_layout(request.egress_id, request.layout)
        except (EgressError, InvalidRequest) as exc:
            raise twirp_error(exc) from None

    async def UpdateStream(
        self, request: egress_pb.UpdateStreamRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        try:
            if not request.egress_id:
                raise InvalidRequest("egress_id", "is required")
            for index, url in enumerate(request.add_output_urls):
                stream_protocol(url, f"add_output_urls[{index}]")
                check_destination(url, f"add_output_urls[{index}]", self.network)
            return await self.manager.update_stream(
                request.egress_id, list(request.add_output_urls), list(request.remove_output_urls)
            )
        except (EgressError, InvalidRequest) as exc:
            raise twirp_error(exc) from None
        except ValueError as exc:
            raise TwirpError("invalid_argument", str(exc)) from None  # stream sinks mask keys

    async def ListEgress(
        self, request: egress_pb.ListEgressRequest, context: TwirpContext
    ) -> Encoded:
        items = self.manager.list(
            room_name=request.room_name, egress_id=request.egress_id, active=request.active
        )
        if not (request.room_name or request.egress_id or request.active):
            self._listings.keep_only(items)  # an unfiltered listing holds every known egress
        return Encoded(self._listings.encode(items, context.content_type))

    async def StopEgress(
        self, request: egress_pb.StopEgressRequest, context: TwirpContext
    ) -> egress_pb.EgressInfo:
        try:
            if not request.egress_id:
                raise InvalidRequest("egress_id", "is required")
            return self.manager.stop(request.egress_id)
        except (EgressError, InvalidRequest) as exc:
            raise twirp_error(exc) from None
