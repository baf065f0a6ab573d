"""Upload throughput to a local S3 server: egresskit S3Storage vs boto3's TransferManager.

Also measures event-loop responsiveness during the egresskit upload: the p99 lateness of
a ticker that asks to wake every 1 ms. Run: python bench/upload_s3.py [size_mb]
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


async def ticker(stop: asyncio.Event, lateness: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        lateness.append(time.perf_counter() - start - 0.001)


async def egresskit_upload(server: MotoServer, path: Path, key: str) -> tuple[float, list[float]]:
    storage = S3Storage(
        bucket="bench",
        access_key="testing",
        secret="testing",
        endpoint=server.url,
        force_path_style=True,
    )
    lateness: list[float] = []
    stop = asyncio.Event()
    async with storage:
        tick = asyncio.create_task(ticker(stop, lateness))
        start = time.perf_counter()
        await storage.upload_file(path, key, "video/mp4")
        elapsed = time.perf_counter() - start
        stop.set()
        await tick
    return elapsed, lateness


def boto3_upload(server: MotoServer, path: Path, key: str) -> float:
    client = server.boto3_client()
    start = time.perf_counter()
    client.upload_file(str(path), "bench", key)
    return time.perf_counter() - start


def p99_ms(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] * 1000


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with tempfile.TemporaryDirectory() as tmp, MotoServer() as server:
        path = Path(tmp) / "bench.bin"
        path.write_bytes(os.urandom(size_mb * MB))
        server.boto3_client().create_bucket(Bucket="bench")
        # Warm both clients once, then alternate runs and keep each one's best.
        boto3_upload(server, path, "warm-boto3")
        asyncio.run(egresskit_upload(server, path, "warm-egresskit"))
        boto3_times, ours, lateness = [], [], []
        for i in range(3):
            boto3_times.append(boto3_upload(server, path, f"boto3-{i}"))
            elapsed, late = asyncio.run(egresskit_upload(server, path, f"egresskit-{i}"))
            ours.append(elapsed)
            lateness += late
    boto3_rate = size_mb / min(boto3_times)
    our_rate = size_mb / min(ours)
    print(f"file: {size_mb} MB to moto S3 server on 127.0.0.1 (best of 3 each)")
    print(f"boto3 upload_file (TransferManager): {boto3_rate:8.1f} MB/s")
    print(f"egresskit S3Storage.upload_file:     {our_rate:8.1f} MB/s")
    print(f"ratio egresskit/boto3: {our_rate / boto3_rate:.2f} (target >= 0.8)")
    print(
        f"event loop during egresskit uploads: 1 ms ticker lateness p50 "
        f"{statistics.median(lateness) * 1000:.2f} ms, p99 {p99_ms(lateness):.2f} ms, "
        f"max {max(lateness) * 1000:.2f} ms ({len(lateness)} ticks)"
    )


if __name__ == "__main__":
    main()
