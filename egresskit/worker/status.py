"""/healthz and Prometheus metrics of `egresskit worker`, from each process's status."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web

ProcessStatus = Mapping[str, float]
StatusSource = Callable[[], list[ProcessStatus]]
_METRICS = {
    "available_cpu": ("gauge", "CPU (cores) the process can still admit egresses for"),
    "cpu_budget": ("gauge", "max_cpu_utilization x the cores the process stands for"),
    "active_egress": ("gauge", "egresses running"),
    "draining": ("gauge", "1 while the process drains on SIGTERM and claims nothing"),
    "dropped_frames": ("counter", "frames dropped by full queues in the process's egresses"),
}


def render(statuses: list[ProcessStatus]) -> str:
    lines = [
        "# HELP egresskit_worker_processes worker processes running",
        "# TYPE egresskit_worker_processes gauge",
        f"egresskit_worker_processes {len(statuses)}",
    ]
    for name, (kind, help_text) in _METRICS.items():
        lines += [
            f"# HELP egresskit_worker_{name} {help_text}",
            f"# TYPE egresskit_worker_{name} {kind}",
        ]
        for index, status in enumerate(statuses):
            lines.append(f'egresskit_worker_{name}{{process="{index}"}} {status.get(name, 0)}')
    return "\n".join(lines) + "\n"


def status_app(source: StatusSource, health: bool, metrics: bool) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        statuses = source()
        return web.json_response(
            {
                "status": "ok" if statuses else "starting",
                "processes": len(statuses),
                "pids": [int(s.get("pid", 0)) for s in statuses],
                "active_egress": sum(int(s.get("active_egress", 0)) for s in statuses),
                "available_cpu": round(sum(s.get("available_cpu", 0) for s in statuses), 3),
            },
            status=200 if statuses else 503,
        )

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(
            body=render(source()).encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    app = web.Application()
    if health:
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/", healthz)
    if metrics:
        app.router.add_get("/metrics", prometheus)
    return app


async def serve_status(
    source: StatusSource, bind: str, health_port: int, prometheus_port: int
) -> _Runners | None:
    """Listen on the configured ports (one app when they are the same); None when both are 0."""
    ports: dict[int, tuple[bool, bool]] = {}
    if health_port:
        ports[health_port] = (True, False)
    if prometheus_port:
        ports[prometheus_port] = (ports.get(prometheus_port, (False, False))[0], True)
    if not ports:
        return None
    runners = []
    for port, (health, metrics) in ports.items():
        runner = web.AppRunner(status_app(source, health, metrics))
        await runner.setup()
        await web.TCPSite(runner, bind, port).start()
        runners.append(runner)
    return _Runners(runners)


class _Runners:
    def __init__(self, runners: list[web.AppRunner]) -> None:
        self.runners = runners

    async def cleanup(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
