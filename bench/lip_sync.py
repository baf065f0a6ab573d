"""Lip sync of publishers whose targets are not met yet: Chromium and an impaired network.

    python bench/lip_sync.py chromium      # headless Chromium page: canvas flash + WebAudio beep
    python bench/lip_sync.py impaired      # aiortc publisher behind 100 ms jitter and 2 % loss
    python bench/lip_sync.py aiortc        # the case tests/test_lip_sync.py holds to 20 ms

The service runs as its own process and records a room composite, a participant
egress and a track composite at once through livekit-api (the same recording as
tests/test_lip_sync.py). Each file's line gives the flash/beep pairs found (the
drops: a pair the file lost is a pair not measured), the median and worst audio
minus video offset, the drift from the first to the last quarter, the duration
against wall time and the longest freeze, then whether it meets the target
(issue: 20 ms for clean publishers, 40 ms with jitter and loss).

These are measurements, not tests: the targets are open defects, and a test that
is expected to fail can never fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from _common import TESTS_DIR

sys.path.insert(0, str(TESTS_DIR))
from chromium import FLASH_BEEP, chromium_publisher  # noqa: E402
from livekit import api  # noqa: E402
from publishers import make_publisher_token  # noqa: E402
from service_fixtures import API_KEY, API_SECRET  # noqa: E402
from test_cli import stop  # noqa: E402
from test_lip_sync import (  # noqa: E402
    IDENTITY,
    MAX_FREEZE_S,
    ROOM,
    SECONDS,
    Recorded,
    check_sync,
    publish_flash_beep,
    record_all_three,
    serve,
)

IMPAIRED_SECONDS = 30.0
JITTER_MS, LOSS = 100, 0.02
TARGET_S = {"aiortc": 0.020 + 0.5 / 30, "chromium": 0.020, "impaired": 0.040}


async def record(kind: str, output_dir: Path) -> dict[str, Recorded]:
    service, base = await serve(output_dir)
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    publisher = None
    try:
        if kind == "chromium":
            token = make_publisher_token(API_KEY, API_SECRET, ROOM, IDENTITY)
            async with chromium_publisher(base, ROOM, token, FLASH_BEEP) as browser:
                await browser.wait_published(30)
                return await record_all_three(client, SECONDS)
        extra = (str(JITTER_MS), str(LOSS)) if kind == "impaired" else ()
        publisher = await publish_flash_beep(base, *extra)
        return await record_all_three(client, IMPAIRED_SECONDS if extra else SECONDS)
    finally:
        await client.aclose()
        if publisher is not None:
            await stop(publisher)
        await stop(service)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("publisher", choices=sorted(TARGET_S))
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="egresskit-lipsync-") as tmp:
        results = asyncio.run(record(args.publisher, Path(tmp)))
        target = TARGET_S[args.publisher]
        for kind, recorded in results.items():
            (result,) = recorded.info.file_results
            try:
                check_sync(Path(result.location), recorded, target, MAX_FREEZE_S)
                verdict = "meets"
            except AssertionError as exc:
                verdict = f"MISSES ({str(exc).splitlines()[0]})"
            print(f"HEADLINE {args.publisher} {kind}: {verdict} the {target * 1000:.1f} ms target")


if __name__ == "__main__":
    main()
