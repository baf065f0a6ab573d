"""Upload throughput to a local S3 server: egresskit S3Storage vs boto3's TransferManager.

Both upload the same file to the same moto server in alternating rounds (each object is
deleted after its round, so the server's memory stays flat); the report gives medians
and the median of the per-round ratios, which cancels most of a busy machine's drift.
Also reports the event loop's responsiveness during egresskit's uploads: the lateness
of a ticker that asks to wake every 1 ms.

Run: python bench/upload_s3.py [size_mb] [rounds]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from storage_servers import MotoServer  # noqa: E402

from egresskit.storage.s3 import S3Storage  # noqa: E402

MB = 1024 * 1024
BUCKET = "bench"


async def ticker(stop: asyncio.Event, lateness: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        lateness.append(time.perf_counter() - start - 0.001)


async def egresskit_upload(server: MotoServer, path: Path, key: str) -> tuple[float, list[float]]:
    """Seconds for one upload (client set-up included, as an egress pays it) and lateness."""
    lateness: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(stop, lateness))
    start = time.perf_counter()
    async with S3Storage(
        bucket=BUCKET,
        access_key="testing",
        secret="testing",
        endpoint=server.url,
        force_path_style=True,
    ) as storage:
        await storage.upload_file(path, key, "video/mp4")
    elapsed = time.perf_counter() - start
    stop.set()
    await tick
    return elapsed, lateness


def boto3_upload(server: MotoServer, path: Path, key: str) -> float:
    """Seconds for `aws s3 cp`'s equivalent: a fresh client and TransferManager upload_file."""
    start = time.perf_counter()
    server.boto3_client().upload_file(str(path), BUCKET, key)
    return time.perf_counter() - start


async def idle_lateness(seconds: float) -> list[float]:
    """The ticker alone: how late this machine wakes a loop with nothing else to do."""
    lateness: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(stop, lateness))
    await asyncio.sleep(seconds)
    stop.set()
    await tick
    return lateness


def percentile_ms(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] * 1000


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp, MotoServer() as server:
        path = Path(tmp) / "bench.bin"
        path.write_bytes(os.urandom(size_mb * MB))
        client = server.boto3_client()
        client.create_bucket(Bucket=BUCKET)
        # Warm both sides once (imports, server code paths), then alternate.
        boto3_upload(server, path, "warm")
        asyncio.run(egresskit_upload(server, path, "warm"))
        client.delete_object(Bucket=BUCKET, Key="warm")
        idle = asyncio.run(idle_lateness(3.0))
        boto3_rates, our_rates, lateness = [], [], []
        for i in range(rounds):
            first_ours = i % 2 == 1  # alternate who goes first
            for ours in (first_ours, not first_ours):
                if ours:
                    elapsed, late = asyncio.run(egresskit_upload(server, path, "ours"))
                    our_rates.append(size_mb / elapsed)
                    lateness += late
                    client.delete_object(Bucket=BUCKET, Key="ours")
                else:
                    boto3_rates.append(size_mb / boto3_upload(server, path, "boto3"))
                    client.delete_object(Bucket=BUCKET, Key="boto3")
    ratios = [ours / theirs for ours, theirs in zip(our_rates, boto3_rates, strict=True)]
    print(f"file: {size_mb} MB to moto's S3 server on 127.0.0.1, {rounds} alternating rounds")
    print(
        f"boto3 upload_file (TransferManager): median {statistics.median(boto3_rates):6.1f} MB/s"
        f"  {[round(r, 1) for r in boto3_rates]}"
    )
    print(
        f"egresskit S3Storage.upload_file:     median {statistics.median(our_rates):6.1f} MB/s"
        f"  {[round(r, 1) for r in our_rates]}"
    )
    print(
        f"ratio egresskit/boto3: median of rounds {statistics.median(ratios):.2f}, "
        f"of medians {statistics.median(our_rates) / statistics.median(boto3_rates):.2f} "
        f"(target >= 0.8)"
    )
    print(
        f"event loop during egresskit uploads: 1 ms ticker lateness p50 "
        f"{statistics.median(lateness) * 1000:.2f} ms, p99 {percentile_ms(lateness, 99):.2f} ms, "
        f"max {max(lateness) * 1000:.2f} ms ({len(lateness)} ticks)"
    )
    print(
        f"event loop idle (same run, no upload):  1 ms ticker lateness p50 "
        f"{statistics.median(idle) * 1000:.2f} ms, p99 {percentile_ms(idle, 99):.2f} ms, "
        f"max {max(idle) * 1000:.2f} ms ({len(idle)} ticks)"
    )
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
