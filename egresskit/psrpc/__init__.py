"""psrpc on Redis: how livekit-server reaches egress workers.

`bus` speaks the wire (envelopes, channel names, ids, the queue lock) over one
Redis pub/sub connection; `rpc` runs calls on it (claims, queues, multi,
error codes); `egress` names the worker's services and livekit-server's IOInfo.
`protos/` holds the .proto files written from psrpc's wire layout and the
modules generated from them by scripts/gen-protos.sh.
"""

from egresskit.psrpc.bus import Bus
from egresskit.psrpc.egress import EgressServer, IOInfoClient, start_affinity
from egresskit.psrpc.rpc import ErrorCode, Method, PsrpcError, RPCClient, RPCServer, Selection

__all__ = [
    "Bus",
    "EgressServer",
    "ErrorCode",
    "IOInfoClient",
    "Method",
    "PsrpcError",
    "RPCClient",
    "RPCServer",
    "Selection",
    "start_affinity",
]
