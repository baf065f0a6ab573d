"""Lip sync over a full minute: Chromium, an impaired network, and aiortc.

    python bench/lip_sync.py chromium      # headless Chromium page: canvas flash + WebAudio beep
    python bench/lip_sync.py impaired      # aiortc publisher behind 100 ms jitter and 2 % loss
    python bench/lip_sync.py aiortc        # the clean aiortc publisher

The service runs as its own process and records a room composite, a participant
egress and a track composite at once through livekit-api (the recordings of
tests/test_lip_sync.py, which records the impaired network's participant
egress only, for 12 s). Each file's line gives the flash/beep
pairs found (the drops: a pair the file lost is a pair not measured), the median
and worst audio minus video offset, the drift from the first to the last
quarter, the duration against wall time and the longest freeze, then whether it
meets the target (issue: 20 ms for clean publishers and 10 ms of drift, 40 ms
with jitter and loss; plus half a frame of the 30 fps output grid, see
FRAME_PHASE_S).
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
from test_lip_sync import (  # noqa: E402
    CLEAN_S,
    FRAME_PHASE_S,
    IMPAIRED_S,
    JITTER_MS,
    LOSS,
    MAX_DRIFT_S,
    MAX_FREEZE_S,
    SECONDS,
    Recorded,
    check_sync,
    record_from_aiortc,
    record_from_chromium,
)

TARGET_S = {
    "aiortc": CLEAN_S + FRAME_PHASE_S,
    "chromium": CLEAN_S + FRAME_PHASE_S,
    "impaired": IMPAIRED_S + FRAME_PHASE_S,
}


async def record(kind: str, output_dir: Path) -> dict[str, Recorded]:
    if kind == "chromium":
        return await record_from_chromium(output_dir, SECONDS)
    extra = (str(JITTER_MS), str(LOSS)) if kind == "impaired" else ()
    results, _ = await record_from_aiortc(output_dir, SECONDS, *extra)
    return results


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
                drift = IMPAIRED_S if args.publisher == "impaired" else MAX_DRIFT_S
                check_sync(Path(result.location), recorded, target, MAX_FREEZE_S, drift)
                verdict = "meets"
            except AssertionError as exc:
                verdict = f"MISSES ({str(exc).splitlines()[0]})"
            print(f"HEADLINE {args.publisher} {kind}: {verdict} the {target * 1000:.1f} ms target")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
