"""Why an egress request was refused; the service maps each to a Twirp code."""

from __future__ import annotations


class EgressError(Exception):
    """Base of the refusals below; the message is meant for the caller."""


class EgressNotFound(EgressError):
    def __init__(self, egress_id: str) -> None:
        super().__init__("egress does not exist")
        self.egress_id = egress_id


class RoomNotFound(EgressError):
    def __init__(self, room_name: str) -> None:
        super().__init__(f"room {room_name!r} does not exist")


class TrackNotFound(EgressError):
    """The room has no such track or participant; the message says which, in which room."""


class EgressEnded(EgressError):
    """Stop or update of an egress that is ending or has ended (failed_precondition)."""


class NoCapacity(EgressError):
    """The service runs as many egresses as it is allowed to (unavailable)."""


class SourceUnavailable(EgressError):
    """The room's server cannot be reached or refused egresskit (unavailable)."""


class NotEnoughCpu(EgressError):
    """The CPU budget cannot take this egress now (resource_exhausted); see admission.py."""


class NotSupported(EgressError):
    """A feature egresskit does not offer (unimplemented); the message names it."""
