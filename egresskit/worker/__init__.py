"""`egresskit worker`: egresskit as a LiveKit egress worker, a front end beside the service.

`config` reads livekit/egress's YAML; `admission` decides whether a request's
CPU cost fits; `process` is one psrpc server in front of an EgressManager;
`supervisor` runs one process per core; `status` serves /healthz and /metrics.
"""
