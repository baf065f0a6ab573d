"""UpdateLayout through the real livekit-api client switches a running composite quickly."""

from __future__ import annotations

import asyncio

import av
import numpy as np
from livekit import api
from livekit.protocol import egress as egress_pb
from service_fixtures import API_KEY, API_SECRET, join, service_config, wait_status

from egresskit.service.app import MANAGER, create_app

PROBE = (900, 100)  # inside the large speaker tile; background above the two grid tiles
DONE = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED)


def probe_series(path) -> list[tuple[float, int, float]]:
    """(time, pts, brightness at the probe) for every decoded frame."""
    out = []
    x, y = PROBE
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            image = frame.to_ndarray(format="rgb24")
            out.append((frame.time, frame.pts, float(np.mean(image[y - 4 : y + 4, x - 4 : x + 4]))))
    return out


async def test_update_layout_switches_within_200_ms(aiohttp_server, tmp_path):
    app = create_app(service_config(tmp_path))
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    sessions = [
        await join(base, "switch", "alice", (220, 40, 40), 440.0),
        await join(base, "switch", "bob", (40, 60, 220), 1000.0),
    ]
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    try:
        info = await client.egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name="switch",
                layout="grid",
                file_outputs=[egress_pb.EncodedFileOutput(filepath="switch.mp4")],
            )
        )
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        clock = app[MANAGER].get(info.egress_id).plan.graph.clock
        await clock.sleep_until(2.0)
        called_at = clock.now()
        updated = await client.egress.update_layout(
            egress_pb.UpdateLayoutRequest(egress_id=info.egress_id, layout="speaker")
        )
        assert updated.room_composite.layout == "speaker"
        await clock.sleep_until(called_at + 2.0)
        await client.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(client, info.egress_id, DONE)
        assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    finally:
        await client.aclose()
        for session in sessions:
            await session.close()

    series = await asyncio.to_thread(probe_series, tmp_path / "switch.mp4")
    # a loaded machine may draw a frame a little after its time: look well before the call
    before = [b for t, _, b in series if 0.5 < t < called_at - 0.5]
    assert before and max(before) < 40, "grid should leave the probe on the dark background"
    switched = [t for t, _, b in series if t >= called_at and b > 60]
    assert switched, "the layout never changed"
    assert switched[0] - called_at <= 0.2, (
        f"switched {switched[0] - called_at:.3f} s after the call"
    )
    assert all(b > 60 for t, _, b in series if t >= switched[0] and t < called_at + 1.5)
    pts = [p for _, p, _ in series]
    steps = set(np.diff(pts).tolist())
    assert len(steps) == 1, f"the timeline has gaps: frame pts steps {sorted(steps)}"
