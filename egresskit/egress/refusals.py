"""Which error code each refusal of the egress layer carries, for every front end.

Twirp (`egresskit serve`) and psrpc (`egresskit worker`, whose codes
livekit-server turns into the same Twirp codes) name errors with the same
strings, so one table serves both.
"""

from __future__ import annotations

from egresskit.egress.encoding import InvalidRequest
from egresskit.egress.errors import (
    EgressEnded,
    EgressNotFound,
    NoCapacity,
    NotEnoughCpu,
    NotSupported,
    RoomNotFound,
    SourceUnavailable,
    TrackNotFound,
)
from egresskit.storage.registry import StorageNotInstalled

_CODES: tuple[tuple[type[Exception], str], ...] = (
    (EgressNotFound, "not_found"),
    (RoomNotFound, "not_found"),
    (TrackNotFound, "not_found"),
    (EgressEnded, "failed_precondition"),
    (NoCapacity, "unavailable"),
    (SourceUnavailable, "unavailable"),
    (NotEnoughCpu, "resource_exhausted"),
    (NotSupported, "unimplemented"),
    (InvalidRequest, "invalid_argument"),
    (StorageNotInstalled, "invalid_argument"),
)
# Every exception type that is a refusal (to catch), as opposed to a fault.
REFUSALS: tuple[type[Exception], ...] = tuple(kind for kind, _ in _CODES)


def refusal_code(exc: Exception) -> str:
    """The error code of a refusal; raises `exc` itself when it is not one."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    raise exc
