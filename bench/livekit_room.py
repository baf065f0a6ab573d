"""Recording LiveKit rooms: what egresskit's process costs, against an embedded room in the same run.

composite  Four publishers (640x360@30 video: bench/composite.py's four VP8
           test pictures, and an Opus tone) in a LiveKit room (livekit-server
           on 127.0.0.1, publishers on the official `livekit` SDK, which
           re-encodes the decoded pictures) and, in the same run, the same
           files sent as they are over WHIP into an embedded room. The recording process records a 1280x720@30 grid
           (H.264 veryfast + AAC, MP4) of each for `--seconds`. Printed: its
           CPU (user + sys, every thread) per media second for each room and
           the ratio LiveKit / embedded (target: at most 1.1).
tracks     `--tracks` track egresses (VP8 video to WebM, Opus to Ogg) of one
           LiveKit room, each joining as its own hidden recorder as LiveKit's
           egress does. Printed: CPU (cores) and RSS growth per egress
           (targets: 0.02 core, 15 MB), and in the headline the drops: RTP
           packets lost before the recorder read them, frames dropped on the
           way to an egress, egresses ended early (a run with any does not
           count); gaps in the files beyond those are frames never sent.

Publishers and recorders are separate processes; only the recorder is measured.
Needs livekit-server (scripts/install-test-deps.sh).

Run: python bench/livekit_room.py composite [--seconds 20]
     python bench/livekit_room.py tracks [--tracks 20] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from _common import TESTS_DIR, CpuTimes, ThreadCpu, missing_packets, vp8_inputs

sys.path.insert(0, str(TESTS_DIR))

from livekit_server import LiveKitServer, unavailable_reason  # noqa: E402

from egresskit.stages.encoder import VideoEncoding  # noqa: E402

COLORS = [(220, 40, 40), (40, 60, 220), (40, 200, 60), (220, 200, 40), (160, 40, 200)]
WIDTH, HEIGHT, FPS = 640, 360, 30
ROOM = "bench"
INPUT_SECONDS = 20  # the input files loop
CPU_RATIO_TARGET = 1.1
TRACK_CPU_TARGET, TRACK_RSS_TARGET_MB = 0.02, 15.0
MB = 1024 * 1024


def moving_block(color: tuple[int, int, int], index: int, width: int, height: int) -> np.ndarray:
    """The same picture as tests/publishers.SyntheticVideoTrack: a colour, a block moving."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = color
    block = max(8, height // 8)
    x = (index * 4) % max(1, width - block)
    y = (height - block) // 2
    image[y : y + block, x : x + block] = [255 - c for c in color]
    return image


# --- publishers (their own process) ------------------------------------------------------


def looped_frames(path: Path):
    """The I420 bytes of every frame of a video file, from the start again at its end."""
    import av

    while True:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="yuv420p").tobytes()


async def publish_livekit(
    url: str, key: str, secret: str, count: int, size: str, fps: int, files: list[Path]
) -> None:
    """`count` SDK publishers of a camera (the `files`, else a moving block) and a tone."""
    from livekit import api, rtc

    width, height = (int(v) for v in size.split("x"))
    rooms, tasks = [], []

    async def camera(source: rtc.VideoSource, color, path: Path | None) -> None:
        """The moving block, or the frames of `path` (looped), paced at `fps`."""
        start, index = time.monotonic(), 0
        frames = looped_frames(path) if path is not None else None
        while True:
            if frames is not None:
                i420 = await asyncio.to_thread(next, frames)
                frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.I420, i420)
            else:
                rgb = moving_block(color, index, width, height)
                rgba = np.dstack([rgb, np.full((height, width), 255, np.uint8)])
                frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes())
            source.capture_frame(frame)
            index += 1
            await asyncio.sleep(max(0.0, start + index / fps - time.monotonic()))

    async def tone(source: rtc.AudioSource, freq: float) -> None:
        n = 0
        while True:
            t = (np.arange(480) + n * 480) / 48000
            pcm = (0.1 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
            await source.capture_frame(rtc.AudioFrame(pcm.tobytes(), 48000, 1, 480))
            n += 1

    for index in range(count):
        token = (
            api.AccessToken(key, secret)
            .with_identity(f"pub{index:02d}")
            .with_grants(api.VideoGrants(room_join=True, room=ROOM))
            .to_jwt()
        )
        room = rtc.Room()
        await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
        rooms.append(room)
        video = rtc.VideoSource(width, height)
        await room.local_participant.publish_track(
            rtc.LocalVideoTrack.create_video_track("camera", video),
            rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA,
                video_codec=rtc.VideoCodec.VP8,
                simulcast=False,
                video_encoding=rtc.VideoEncoding(max_bitrate=1_000_000, max_framerate=fps),
            ),
        )
        audio = rtc.AudioSource(48000, 1, queue_size_ms=50)
        await room.local_participant.publish_track(
            rtc.LocalAudioTrack.create_audio_track("mic", audio),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
        )
        color = COLORS[index % len(COLORS)]
        tasks += [
            asyncio.create_task(camera(video, color, files[index % len(files)] if files else None)),
            asyncio.create_task(tone(audio, 300.0 + 100 * index)),
        ]
    print("published", flush=True)
    await wait_for_sigterm()
    for task in tasks:
        task.cancel()
    for room in rooms:
        await room.disconnect()


async def publish_whip(base_url: str, count: int, files: list[Path]) -> None:
    """`count` aiortc WHIP publishers sending the files as they are (no re-encode), a tone."""
    from aiortc.contrib.media import MediaPlayer
    from publishers import (
        WHIP_API_KEY,
        WHIP_API_SECRET,
        SineAudioTrack,
        make_publisher_token,
        whip_publish,
    )

    sessions = []
    for index in range(count):
        token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, f"pub{index:02d}")
        camera = MediaPlayer(str(files[index % len(files)]), loop=True, decode=False)
        tracks = [camera.video, SineAudioTrack(300.0 + 100 * index)]
        sessions.append(await whip_publish(base_url, ROOM, token, tracks))
    print("published", flush=True)
    await wait_for_sigterm()
    for session in sessions:
        with contextlib.suppress(Exception):  # the recorder may be gone already
            await session.close()


async def wait_for_sigterm() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


# --- recorders (the measured process) ------------------------------------------------------


async def record_composite(room, out: Path, seconds: float) -> dict:
    from egresskit import FileOutput, composite_graph
    from egresskit.pipeline import GraphState

    graph, _ = composite_graph(
        room,
        [FileOutput(out)],
        video=VideoEncoding(width=1280, height=720, fps=30, preset="veryfast"),
        name="bench",
    )
    await graph.start()
    await asyncio.sleep(2.0)  # warm up: key frames, decoders
    threads = ThreadCpu()
    threads.start()
    received = await received_rtp(room)
    before, wall = CpuTimes.now(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = (CpuTimes.now() - before).own, time.monotonic() - wall
    after = await received_rtp(room)
    by_thread = threads.stop()
    state = await graph.stop()
    assert state is GraphState.COMPLETE, graph.error
    return {
        "cpu_per_media_s": cpu / wall,
        "rss_mb": psutil.Process().memory_info().rss / MB,
        "packets_per_s": (after[0] - received[0]) / wall,
        "threads": {name: round(t / wall, 3) for name, t in list(by_thread.items())[:6]},
    }


async def received_rtp(room) -> tuple[int, int]:
    """RTP packets received and lost (sequence gaps) for the room's tracks so far (aiortc's
    inbound stats)."""
    packets = lost = 0
    for track in room.tracks():
        receiver = track.encoded._receiver  # the aiortc receiver behind the encoded tap
        for stat in (await receiver.getStats()).values():
            if stat.type == "inbound-rtp":
                packets += stat.packetsReceived
                lost += stat.packetsLost
    return packets, lost


async def recorder_livekit(url: str, key: str, secret: str, out: Path, seconds: float) -> None:
    from egresskit import LiveKitRoom

    room = await LiveKitRoom.connect(url, key, secret, ROOM, identity="EG_bench")
    try:
        print(json.dumps(await record_composite(room, out, seconds)), flush=True)
    finally:
        await room.close()


async def recorder_whip(port_file: Path, out: Path, seconds: float, count: int) -> None:
    from aiohttp import web
    from publishers import WHIP_API_KEY, WHIP_API_SECRET

    from egresskit import RoomManager, whip_app

    rooms = RoomManager()
    app = web.Application()
    app.add_subapp(
        "/whip", whip_app(rooms, {WHIP_API_KEY: WHIP_API_SECRET}, ice_addresses=["127.0.0.1"])
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    port_file.write_text(str(port))  # noqa: ASYNC240 - once, before recording
    while (room := rooms.get(ROOM)) is None or len(room.tracks()) < 2 * count:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    try:
        print(json.dumps(await record_composite(room, out, seconds)), flush=True)
    finally:
        await rooms.close()
        await runner.cleanup()


async def recorder_tracks(url: str, key: str, secret: str, out_dir: Path, seconds: float) -> None:
    """One LiveKitRoom + track graph per track of the room; CPU and RSS growth per egress."""
    from livekit.protocol import models

    from egresskit import LiveKitRoom
    from egresskit.egress.track_graphs import track_graph
    from egresskit.pipeline import GraphState

    process = psutil.Process()
    probe = await LiveKitRoom.connect(
        url, key, secret, ROOM, identity="EG_probe", wanted=lambda p, t: False
    )
    sids = [(track.sid, track.type) for _, track in probe.announced()]
    await probe.close()
    await asyncio.sleep(1.0)
    rss_before = process.memory_info().rss
    idle_before, wall = CpuTimes.now(), time.monotonic()
    await asyncio.sleep(3.0)
    idle = (CpuTimes.now() - idle_before).own / (time.monotonic() - wall)

    rooms, graphs, sources = [], [], []
    for index, (sid, kind) in enumerate(sids):
        room = await LiveKitRoom.connect(
            url,
            key,
            secret,
            ROOM,
            identity=f"EG_{index:03d}",
            wanted=lambda p, t, s=sid: t.sid == s,
        )
        extension = "webm" if kind == models.TrackType.VIDEO else "ogg"
        graph, stages = track_graph(room, sid, out_dir / f"{sid}.{extension}", name=sid)
        await graph.start()
        rooms.append(room)
        graphs.append(graph)
        sources.append(stages.source)
    await asyncio.sleep(2.0)
    before, wall = CpuTimes.now(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = (CpuTimes.now() - before).own / (time.monotonic() - wall)
    rss_after = process.memory_info().rss
    lasted = sum(not g.state.ended for g in graphs)
    rtp_lost = sum([(await received_rtp(room))[1] for room in rooms])
    link_dropped = sum(source.stats()["dropped"] for source in sources)
    states = [await g.stop() for g in graphs]
    for room in rooms:
        await room.close()
    failed = [g.error for g, s in zip(graphs, states, strict=True) if s is not GraphState.COMPLETE]
    print(
        json.dumps(
            {
                "egresses": len(graphs),
                "failed": [str(e) for e in failed],
                "ended_early": len(graphs) - lasted,
                "rtp_lost": rtp_lost,
                "link_dropped": link_dropped,
                "missing": sum(missing_packets(p) for p in out_dir.iterdir()),  # noqa: ASYNC240
                "missing_by_file": sorted(
                    (missing_packets(p), p.suffix)
                    for p in out_dir.iterdir()  # noqa: ASYNC240
                )[-6:],
                "idle_cores": idle,
                "cores": cpu,
                "rss_growth_mb": (rss_after - rss_before) / MB,
                "sizes": sorted(p.stat().st_size for p in out_dir.iterdir()),  # noqa: ASYNC240
            }
        ),
        flush=True,
    )


# --- the orchestrator --------------------------------------------------------------------


async def child(*args: str, wait_line: str | None = None) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)]))
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    if wait_line is not None:
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), 120)
            if not line:
                raise RuntimeError(f"{args[0]} exited before {wait_line!r}")
            if line.decode().strip() == wait_line:
                break
    return process


async def result_of(process: asyncio.subprocess.Process, timeout: float) -> dict:
    """The recorder's JSON line; a recorder that hangs (its publishers died) is killed."""
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError("the recorder did not finish (did its publishers start?)") from None
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"recorder failed ({process.returncode}): {stdout.decode()[-2000:]}")
    return json.loads(lines[-1])


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


async def composite(seconds: float, count: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="egresskit-bench-"))
    files = vp8_inputs(INPUT_SECONDS)  # the same pictures into both rooms (made once)
    with LiveKitServer(log_level="warn") as server:
        pubs = await child(
            "_publish-livekit",
            server.url,
            server.api_key,
            server.api_secret,
            str(count),
            f"{WIDTH}x{HEIGHT}",
            str(FPS),
            *map(str, files),
            wait_line="published",
        )
        await asyncio.sleep(1.0)
        recorder = await child(
            "_record-livekit",
            server.url,
            server.api_key,
            server.api_secret,
            str(out / "livekit.mp4"),
            str(seconds),
        )
        try:
            livekit = await result_of(recorder, seconds + 180)
        finally:
            await stop(pubs)
    port_file = out / "port"
    recorder = await child(
        "_record-whip", str(port_file), str(out / "embedded.mp4"), str(seconds), str(count)
    )
    while not port_file.exists():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    pubs = await child(
        "_publish-whip", f"http://127.0.0.1:{port_file.read_text()}", str(count), *map(str, files)
    )
    try:
        embedded = await result_of(recorder, seconds + 180)
    finally:
        await stop(pubs)
    ratio = livekit["cpu_per_media_s"] / embedded["cpu_per_media_s"]
    print(f"{count} publishers {WIDTH}x{HEIGHT}@{FPS}, 1280x720@30 grid, {seconds:.0f} s each")
    print(
        f"  LiveKit room   {livekit['cpu_per_media_s']:.3f} core per media second, "
        f"RSS {livekit['rss_mb']:.0f} MB"
    )
    print(
        f"  embedded room  {embedded['cpu_per_media_s']:.3f} core per media second, "
        f"RSS {embedded['rss_mb']:.0f} MB"
    )
    print(f"  ratio LiveKit / embedded: {ratio:.2f} (target at most {CPU_RATIO_TARGET})")
    for name, result in (("LiveKit", livekit), ("embedded", embedded)):
        print(
            f"  {name}: {result['packets_per_s']:.0f} RTP packets/s received; "
            f"core per media second by thread: {result['threads']}"
        )


async def tracks(seconds: float, count: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="egresskit-bench-"))
    with LiveKitServer(log_level="warn") as server:
        pubs = await child(
            "_publish-livekit",
            server.url,
            server.api_key,
            server.api_secret,
            str((count + 1) // 2),
            "320x180",
            "15",
            wait_line="published",
        )
        await asyncio.sleep(1.0)
        recorder = await child(
            "_record-tracks", server.url, server.api_key, server.api_secret, str(out), str(seconds)
        )
        try:
            result = await result_of(recorder, seconds + 180)
        finally:
            await stop(pubs)
    n = result["egresses"]
    per_cpu = (result["cores"] - result["idle_cores"]) / n
    per_rss = result["rss_growth_mb"] / n
    # frames lost here: before this process read them (RTP sequence gaps), between receiver and
    # egress (link overflow), or egresses that ended early; gaps in the files beyond those are
    # frames the publishers never sent (their process behind on a busy machine)
    drops = (
        result["rtp_lost"] + result["link_dropped"] + result["ended_early"] + len(result["failed"])
    )
    print(
        f"HEADLINE {per_cpu:.4f} core per track egress, receive included, {n} egresses"
        f"{'' if not drops else ' (does not count: the run had drops)'}; drops: "
        f"{result['rtp_lost']} RTP packets lost before this process read them, "
        f"{result['link_dropped']} frames dropped between receiver and egress, "
        f"{result['ended_early']} egresses ended early, {len(result['failed'])} failed"
    )
    print(
        f"  gaps in the files' timestamps: {result['missing']} frames "
        "(beyond the drops above: never sent, the publishers' process behind)"
    )
    print(
        f"{n} track egresses (VP8 320x180@15 -> WebM, Opus -> Ogg) of one LiveKit room, "
        f"{seconds:.0f} s; failed: {result['failed'] or 'none'}"
    )
    print(f"  process: {result['cores']:.3f} cores recording, {result['idle_cores']:.3f} idle")
    print(
        f"  per egress: {per_cpu:.4f} core (target {TRACK_CPU_TARGET}, "
        f"ratio {per_cpu / TRACK_CPU_TARGET:.2f}), RSS {per_rss:.1f} MB "
        f"(target {TRACK_RSS_TARGET_MB}, ratio {per_rss / TRACK_RSS_TARGET_MB:.2f})"
    )
    print(
        f"  smallest file {min(result['sizes'])} bytes; most frames missing: "
        f"{result['missing_by_file']}"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        command, args = sys.argv[1], sys.argv[2:]
        if command == "_publish-livekit":
            url, key, secret, count, size, fps, *files = args
            asyncio.run(
                publish_livekit(
                    url, key, secret, int(count), size, int(fps), list(map(Path, files))
                )
            )
        elif command == "_publish-whip":
            asyncio.run(publish_whip(args[0], int(args[1]), list(map(Path, args[2:]))))
        elif command == "_record-livekit":
            url, key, secret, out, seconds = args
            asyncio.run(recorder_livekit(url, key, secret, Path(out), float(seconds)))
        elif command == "_record-whip":
            port_file, out, seconds, count = args
            asyncio.run(recorder_whip(Path(port_file), Path(out), float(seconds), int(count)))
        elif command == "_record-tracks":
            url, key, secret, out, seconds = args
            asyncio.run(recorder_tracks(url, key, secret, Path(out), float(seconds)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["composite", "tracks"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--tracks", type=int, default=20)
    options = parser.parse_args()
    if unavailable_reason():
        sys.exit(unavailable_reason())
    if options.mode == "composite":
        asyncio.run(composite(options.seconds, options.publishers))
    else:
        asyncio.run(tracks(options.seconds, options.tracks))


if __name__ == "__main__":
    main()
