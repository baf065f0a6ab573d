"""`egresskit` subcommands that call a running service's egresskit.Egress extension methods.

`start-composite`, `pause`, `resume`, `stop` (with `--discard`) and
`participants` print the EgressInfo answered as JSON. The service is
`--url` (EGRESSKIT_URL, default http://127.0.0.1:7880) with `--api-key` /
`--api-secret` (EGRESSKIT_API_KEY / EGRESSKIT_API_SECRET, default the dev pair).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aiohttp
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import egress as egress_pb

from egresskit.client import (
    EgressClient,
    EgressClientError,
    PauseEgressRequest,
    ResumeEgressRequest,
    RoomCompositeEgressRequest,
    StopEgressRequest,
    UpdateParticipantsRequest,
)

COMMANDS = ("start-composite", "pause", "resume", "stop", "participants")
DEFAULT_URL = "http://127.0.0.1:7880"


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    """Register the extension subcommands on the `egresskit` parser."""
    start = commands.add_parser(
        "start-composite", help="start a room composite with egresskit's options"
    )
    _connection_flags(start)
    start.add_argument("--room", required=True, help="room to record")
    start.add_argument("--layout", default="", help="grid, speaker, single-speaker (+-light)")
    start.add_argument("--file", help="output file path (relative to the service's output dir)")
    start.add_argument("--segments", help="HLS filename prefix")
    start.add_argument("--include", action="append", default=[], help="identity (repeatable)")
    start.add_argument("--exclude", action="append", default=[], help="identity (repeatable)")
    start.add_argument("--faststart", action="store_true", help="MP4 index before the media")
    start.add_argument("--video-codec", default="", help="h264, vp9 or av1")
    for name, text in (("pause", "pause an egress"), ("resume", "resume a paused egress")):
        command = commands.add_parser(name, help=text)
        _connection_flags(command)
        command.add_argument("egress_id")
    stop = commands.add_parser("stop", help="stop an egress (--discard deletes its outputs)")
    _connection_flags(stop)
    stop.add_argument("egress_id")
    stop.add_argument("--discard", action="store_true", help="delete what was recorded")
    participants = commands.add_parser("participants", help="replace who a room composite records")
    _connection_flags(participants)
    participants.add_argument("egress_id")
    participants.add_argument("--include", action="append", default=[], help="identity")
    participants.add_argument("--exclude", action="append", default=[], help="identity")


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"the service (EGRESSKIT_URL, default {DEFAULT_URL})")
    parser.add_argument("--api-key", dest="api_key", help="API key (EGRESSKIT_API_KEY)")
    parser.add_argument("--api-secret", dest="api_secret", help="API secret (EGRESSKIT_API_SECRET)")


def request_of(args: argparse.Namespace) -> tuple[str, Message]:
    """The client method and request message a parsed command stands for."""
    if args.command == "start-composite":
        livekit_request = egress_pb.RoomCompositeEgressRequest(
            room_name=args.room, layout=args.layout
        )
        if args.file:
            livekit_request.file_outputs.add(filepath=args.file)
        if args.segments:
            livekit_request.segment_outputs.add(filename_prefix=args.segments)
        return "start_room_composite_egress", RoomCompositeEgressRequest(
            request=livekit_request,
            include_identities=args.include,
            exclude_identities=args.exclude,
            faststart=args.faststart,
            video_codec=args.video_codec,
        )
    if args.command == "pause":
        return "pause_egress", PauseEgressRequest(egress_id=args.egress_id)
    if args.command == "resume":
        return "resume_egress", ResumeEgressRequest(egress_id=args.egress_id)
    if args.command == "stop":
        return "stop_egress", StopEgressRequest(egress_id=args.egress_id, discard=args.discard)
    return "update_participants", UpdateParticipantsRequest(
        egress_id=args.egress_id, include_identities=args.include, exclude_identities=args.exclude
    )


async def _run(args: argparse.Namespace) -> int:
    method, request = request_of(args)
    env = os.environ
    async with EgressClient(
        args.url or env.get("EGRESSKIT_URL", DEFAULT_URL),
        args.api_key or env.get("EGRESSKIT_API_KEY", "devkey"),
        args.api_secret or env.get("EGRESSKIT_API_SECRET", "secret"),
    ) as client:
        try:
            info = await getattr(client, method)(request)
        except EgressClientError as exc:
            print(f"egresskit: {exc}", file=sys.stderr)
            return 1
        except aiohttp.ClientError as exc:
            print(f"egresskit: cannot reach the service: {exc}", file=sys.stderr)
            return 1
    print(json_format.MessageToJson(info, preserving_proto_field_name=True))
    return 0


def run_client_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
