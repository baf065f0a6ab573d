"""A WHIP publisher in its own process, as users run one: plain aiortc, aioice untouched.

Usage: python3 whip_child.py BASE_URL ROOM TOKEN R,G,B [TONE_HZ [WIDTHxHEIGHT]]

Publishes a solid colour and a tone (440 Hz, 640x360 unless given), prints `offered <addresses>` (the host
addresses of its offer) and `published <location>`, then publishes until
SIGTERM, and ends with a WHIP DELETE.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aioice.ice
from aiortc import sdp
from publishers import SineAudioTrack, SyntheticVideoTrack, whip_publish


async def main(
    base: str, room: str, token: str, color: str, tone: str = "440", size: str = "640x360"
) -> None:
    rgb = tuple(int(c) for c in color.split(","))
    width, height = (int(n) for n in size.split("x"))
    assert aioice.ice.get_host_addresses.__module__ == "aioice.ice", "aioice is patched"
    session = await whip_publish(
        base,
        room,
        token,
        [SyntheticVideoTrack(rgb, width, height), SineAudioTrack(float(tone))],
    )
    offer = sdp.SessionDescription.parse(session.pc.localDescription.sdp)
    offered = sorted({c.ip for m in offer.media for c in m.ice_candidates})
    print("offered", " ".join(offered), flush=True)
    print("published", session.location, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await session.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
