"""`egresskit serve` runs the service; `egresskit record` makes one recording with live progress;
`egresskit worker` serves a LiveKit server's egress requests from Redis, as livekit/egress does;
`start-composite`, `pause`, `resume`, `stop`, `participants` call a running service's
egresskit.Egress extension methods."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from pathlib import Path

from aiohttp import web
from livekit.protocol import egress as egress_pb

from egresskit.cli_client import COMMANDS as CLIENT_COMMANDS
from egresskit.cli_client import add_client_commands, run_client_command
from egresskit.egress.encoding import InvalidRequest
from egresskit.egress.errors import EgressEnded, EgressError
from egresskit.egress.manager import EgressManager
from egresskit.egress.session import EgressSession
from egresskit.pipeline import memory
from egresskit.service.app import HEADER_TIMEOUT_S, MANAGER, ROOMS, create_app
from egresskit.service.config import ConfigError, ServiceConfig, load_config
from egresskit.service.files import RedactedAccessLogger
from egresskit.tokens import create_token

log = logging.getLogger("egresskit")

# The container `record --out` asks for by its suffix (audio-only MP4 is AAC in MP4).
FILE_TYPES = {".mp4": egress_pb.MP4, ".ogg": egress_pb.OGG, ".mp3": egress_pb.MP3}


def _service_flags(parser: argparse.ArgumentParser) -> None:
    # Defaults are None so that environment variables and the YAML file can fill them.
    parser.add_argument("--port", type=int, help="HTTP port (EGRESSKIT_PORT, default 7880)")
    parser.add_argument("--bind", help="address to listen on (EGRESSKIT_BIND, default 127.0.0.1)")
    parser.add_argument("--api-key", dest="api_key", help="API key (EGRESSKIT_API_KEY)")
    parser.add_argument("--api-secret", dest="api_secret", help="API secret (EGRESSKIT_API_SECRET)")
    parser.add_argument("--output-dir", dest="output_dir", help="root of every local output")
    parser.add_argument("--config", help="YAML configuration file (EGRESSKIT_CONFIG)")
    parser.add_argument(
        "--webhook-url", dest="webhook_urls", action="append", help="webhook target (repeatable)"
    )
    parser.add_argument(
        "--max-duration", dest="max_duration_s", type=float, help="session limit, s"
    )
    parser.add_argument(
        "--max-concurrent", dest="max_concurrent", type=int, help="egresses at once"
    )
    parser.add_argument("--log-level", dest="log_level", help="debug, info, warning, error")
    parser.add_argument(
        "--livekit-url",
        dest="livekit_url",
        help="record this LiveKit server's rooms, ws://HOST:7880 (EGRESSKIT_LIVEKIT_URL)",
    )
    parser.add_argument(
        "--livekit-api-key", dest="livekit_api_key", help="its API key (EGRESSKIT_LIVEKIT_API_KEY)"
    )
    parser.add_argument(
        "--livekit-api-secret",
        dest="livekit_api_secret",
        help="its API secret (EGRESSKIT_LIVEKIT_API_SECRET)",
    )
    parser.add_argument(
        "--dev", action="store_true", default=None, help="development keys devkey / secret"
    )
    parser.add_argument(
        "--console",
        action="store_true",
        default=None,
        help="web console at / and recordings at /files (always on with --dev)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egresskit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the Egress API service with embedded rooms")
    _service_flags(serve)
    record = commands.add_parser("record", help="record one room composite with live progress")
    _service_flags(record)
    record.add_argument("--room", required=True, help="embedded room to record (created if new)")
    record.add_argument("--layout", default="grid", help="grid, speaker, single-speaker (+-light)")
    record.add_argument(
        "--out", required=True, help="output file (.mp4, or .ogg with --audio-only)"
    )
    record.add_argument("--duration", type=float, default=0, help="seconds; 0 = until Ctrl-C")
    record.add_argument("--audio-only", action="store_true")
    worker = commands.add_parser(
        "worker", help="an egress worker of a LiveKit server (psrpc on its Redis)"
    )
    worker.add_argument(
        "--config", help="livekit/egress YAML (EGRESS_CONFIG_FILE, or EGRESS_CONFIG_BODY)"
    )
    worker.add_argument(
        "--processes", type=int, default=0, help="worker processes (default: one per core)"
    )
    # Set by the parent for its children.
    worker.add_argument("--child-status-fd", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--child-cores", type=float, help=argparse.SUPPRESS)
    add_client_commands(commands)
    return parser


def _config(args: argparse.Namespace) -> ServiceConfig:
    flags = {k: v for k, v in vars(args).items() if v is not None}
    if args.command == "record":
        out = Path(args.out).resolve()
        flags["output_dir"] = str(out.parent)
    return load_config(flags, os.environ)


def _announce(config: ServiceConfig, room: str | None = None) -> None:
    base = f"http://{config.bind}:{config.port}"
    print(f"egresskit listening on {base} (Twirp API at {base}/twirp, WHIP at {base}/whip/<room>)")
    if config.console_enabled:
        print(f"console: {base}/")
    if config.dev:
        print(f"dev mode: API key {config.api_key!r}, API secret {config.api_secret!r}")
    if room:
        token = create_token(
            config.api_key,
            config.api_secret,
            identity="publisher",
            video={"roomJoin": True, "canPublish": True, "room": room},
        )
        print(f"publish with WHIP: POST {base}/whip/{room}  Authorization: Bearer {token}")
    sys.stdout.flush()


def serve(config: ServiceConfig) -> None:
    app = create_app(config)
    _announce(config)
    # What start-up built lives as long as the process: out of the cyclic collector's full
    # passes, which otherwise walk it all (perf: ~40% of the service's CPU with 10 WHEP viewers).
    gc.freeze()
    web.run_app(
        app,
        host=config.bind,
        port=config.port,
        print=None,
        shutdown_timeout=60,
        keepalive_timeout=HEADER_TIMEOUT_S,
        handle_signals=True,
        access_log_class=RedactedAccessLogger,
    )


def _stop(manager: EgressManager, egress_id: str) -> None:
    """Stop the recording unless it is already ending (the room emptied, a limit hit)."""
    with contextlib.suppress(EgressEnded):
        manager.stop(egress_id)


async def _follow(manager: EgressManager, session: EgressSession, duration: float) -> None:
    """Show the recording's progress until it ends; stop it after `duration` s (if > 0)."""
    egress_id = session.info.egress_id
    try:
        started = time.monotonic()
        stop_at = started + duration if duration > 0 else None
        while not session.done.is_set():
            elapsed = time.monotonic() - started
            if stop_at is not None and time.monotonic() >= stop_at:
                stop_at = None
                _stop(manager, egress_id)
            muxer = session.plan.files[0].writer
            compositor = session.plan.compositor
            fps = compositor.frames_out / elapsed if compositor is not None and elapsed > 0 else 0.0
            status = egress_pb.EgressStatus.Name(session.info.status).removeprefix("EGRESS_")
            print(
                f"\r{status:<8} {elapsed:7.1f} s  {muxer.size / 1e6:8.2f} MB  {fps:5.1f} fps",
                end="",
                flush=True,
            )
            try:
                await asyncio.wait_for(session.done.wait(), 0.5)
            except TimeoutError:
                pass
    except asyncio.CancelledError:
        _stop(manager, egress_id)
        await session.wait()


async def record(config: ServiceConfig, args: argparse.Namespace) -> int:
    app = create_app(config)
    runner = web.AppRunner(app, shutdown_timeout=60, keepalive_timeout=HEADER_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, config.bind, config.port)
    await site.start()
    _announce(config, args.room)
    manager = app[MANAGER]
    app[ROOMS].get_or_create(args.room)
    out = Path(args.out)
    request = egress_pb.RoomCompositeEgressRequest(
        room_name=args.room,
        layout=args.layout,
        audio_only=args.audio_only,
        file_outputs=[
            egress_pb.EncodedFileOutput(
                filepath=out.name,
                file_type=FILE_TYPES.get(out.suffix.lower(), egress_pb.DEFAULT_FILETYPE),
            )
        ],
    )
    try:
        info = await manager.start(request)
    except (EgressError, InvalidRequest) as exc:
        await runner.cleanup()
        print(f"egresskit: {exc}", file=sys.stderr)
        return 2
    session = manager.get(info.egress_id)
    try:
        if isinstance(session, EgressSession):  # not ended already (failed as it started)
            await _follow(manager, session, args.duration)
    finally:
        await runner.cleanup()
    print()
    final = session.info
    for result in final.file_results:
        print(
            f"{egress_pb.EgressStatus.Name(final.status)}: {result.location} ({result.size} bytes)"
        )
    if final.error:
        print(f"error: {final.error}", file=sys.stderr)
    return 0 if final.status == egress_pb.EGRESS_COMPLETE else 1


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def worker(args: argparse.Namespace) -> int:
    from egresskit.worker.config import default_processes, load_worker_config
    from egresskit.worker.supervisor import run_process, supervise

    try:
        config = load_worker_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"egresskit: {exc}", file=sys.stderr)
        return 2
    _logging(config.log_level)
    memory.limit_arenas()
    if args.child_status_fd is not None:
        asyncio.run(run_process(config, args.child_cores or 1.0, args.child_status_fd))
        return 0
    if config.unused:
        log.info("egress config keys egresskit does not use: %s", ", ".join(config.unused))
    cores = float(default_processes())
    processes = args.processes or default_processes()
    if processes < 1:
        print("egresskit: --processes must be at least 1", file=sys.stderr)
        return 2
    if processes == 1:
        asyncio.run(run_process(config, cores))
        return 0
    child_args = ["--config", args.config] if args.config else []
    return asyncio.run(supervise(config, processes, cores, child_args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        return worker(args)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"egresskit: {exc}", file=sys.stderr)
        return 2
    _logging(config.log_level)
    memory.limit_arenas()  # a long-running recorder: see egresskit/pipeline/memory.py
    if args.command == "serve":
        serve(config)
        return 0
    try:
        return asyncio.run(record(config, args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
