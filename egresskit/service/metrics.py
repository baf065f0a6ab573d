"""Prometheus text exposition of the service's counters.

Written by hand: the format is a few lines of text, and the numbers already
live in the manager; a client library would add a registry to keep in sync.
"""

from __future__ import annotations

from egresskit.egress.manager import EgressManager
from egresskit.service.webhooks import WebhookNotifier


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, value: float, **labels: str) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


def render_metrics(manager: EgressManager, webhooks: WebhookNotifier | None) -> str:
    lines = [
        "# HELP egresskit_egress_started_total Egresses started, by type.",
        "# TYPE egresskit_egress_started_total counter",
        *(
            _sample("egresskit_egress_started_total", n, type=k)
            for k, n in sorted(manager.started.items())
        ),
        "# HELP egresskit_egress_ended_total Egresses ended, by type and final status.",
        "# TYPE egresskit_egress_ended_total counter",
        *(
            _sample("egresskit_egress_ended_total", n, type=kind, status=status)
            for (kind, status), n in sorted(manager.ended.items())
        ),
        "# HELP egresskit_egress_active Egresses starting, active or ending now.",
        "# TYPE egresskit_egress_active gauge",
        _sample("egresskit_egress_active", len(manager.active())),
        "# HELP egresskit_cpu_available Cores of the CPU budget a new egress may take now.",
        "# TYPE egresskit_cpu_available gauge",
        _sample("egresskit_cpu_available", round(manager.admission.available, 3)),
        "# HELP egresskit_dropped_frames_total Items dropped by leaky links of known egresses.",
        "# TYPE egresskit_dropped_frames_total counter",
        _sample("egresskit_dropped_frames_total", manager.dropped_frames()),
        "# HELP egresskit_upload_bytes_total Bytes uploaded to storage backends.",
        "# TYPE egresskit_upload_bytes_total counter",
        _sample("egresskit_upload_bytes_total", manager.upload_bytes()),
    ]
    if webhooks is not None:
        stats = webhooks.stats
        lines += [
            "# HELP egresskit_webhooks_total Webhook deliveries, by outcome.",
            "# TYPE egresskit_webhooks_total counter",
            *(
                _sample("egresskit_webhooks_total", getattr(stats, outcome), outcome=outcome)
                for outcome in ("delivered", "failed", "dropped")
            ),
        ]
    return "\n".join(lines) + "\n"
