"""Is the service responsive while it uploads? ListEgress latency during 100 MB S3 uploads.

A running `create_app` service (real HTTP on 127.0.0.1) uploads a file to moto's S3
server with `upload_with_retry`, on its own event loop, exactly as an egress delivers a
finished recording. Meanwhile a separate client process calls ListEgress (Twirp,
protobuf) back to back and times each call. The same client first runs with no upload,
as the machine's baseline. Target: p99 under 50 ms during the uploads.

Run: python bench/upload_responsiveness.py [size_mb] [uploads]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from storage_servers import MotoServer, free_port  # noqa: E402

MB = 1024 * 1024
API_KEY, API_SECRET = "benchkey", "bench-secret-long-enough-for-hs256-signing"


async def client(base: str, seconds: float) -> None:
    """Call ListEgress back to back for `seconds` or until SIGTERM; print the samples.

    Samples are [(wall time at the answer, latency s), ...].
    """
    import aiohttp
    from livekit.protocol import egress as egress_pb

    from egresskit.tokens import create_token

    token = create_token(API_KEY, API_SECRET, video={"roomRecord": True}, ttl=3600)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/protobuf"}
    body = egress_pb.ListEgressRequest().SerializeToString()
    url = f"{base}/twirp/livekit.Egress/ListEgress"
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession() as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop.is_set():
            start = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            samples.append((time.time(), time.perf_counter() - start))
    print(json.dumps(samples))


def start_client(base: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--client", base, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def collect(proc: subprocess.Popen[str]) -> list[tuple[float, float]]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"client failed with {proc.returncode}")
    return [tuple(s) for s in json.loads(out)]


def summary(name: str, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = statistics.quantiles(ms, n=100)[98]
    return (
        f"{name}: {len(ms)} calls, p50 {statistics.median(ms):.2f} ms, "
        f"p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"
    )


async def serve_and_upload(size_mb: int, uploads: int) -> None:
    from aiohttp import web

    from egresskit.service.app import create_app
    from egresskit.service.config import ServiceConfig
    from egresskit.storage import upload_with_retry
    from egresskit.storage.s3 import S3Storage

    with tempfile.TemporaryDirectory() as tmp, MotoServer() as s3:
        path = Path(tmp) / "recording.mp4"
        await asyncio.to_thread(path.write_bytes, os.urandom(size_mb * MB))
        await asyncio.to_thread(s3.create_bucket, "bench")
        config = ServiceConfig(
            port=free_port(), api_key=API_KEY, api_secret=API_SECRET, output_dir=Path(tmp)
        )
        runner = web.AppRunner(create_app(config))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", config.port).start()
        base = f"http://127.0.0.1:{config.port}"
        try:
            baseline = await asyncio.to_thread(collect, start_client(base, 4.0))
            windows: list[tuple[float, float]] = []
            proc = start_client(base, 600.0)
            await asyncio.sleep(1.5)  # the client is up and calling
            durations = []
            for i in range(uploads):
                async with S3Storage(
                    bucket="bench",
                    access_key="testing",
                    secret="testing",
                    endpoint=s3.url,
                    force_path_style=True,
                ) as storage:
                    began, start = time.time(), time.perf_counter()
                    await upload_with_retry(storage, path, f"rec-{i}.mp4", "video/mp4")
                    durations.append(time.perf_counter() - start)
                    windows.append((began, time.time()))
                await asyncio.to_thread(
                    s3.boto3_client().delete_object, Bucket="bench", Key=f"rec-{i}.mp4"
                )
            proc.terminate()
            during_samples = await asyncio.to_thread(_collect_terminated, proc)
        finally:
            await runner.cleanup()
    during = [lat for t, lat in during_samples if any(a <= t - lat and t <= b for a, b in windows)]
    print(f"{uploads} uploads of {size_mb} MB to moto S3 from the service's event loop")
    print(f"upload times: {[round(d, 2) for d in durations]} s")
    print(summary("ListEgress, no upload (baseline)", [lat for _, lat in baseline]))
    print(summary("ListEgress during uploads       ", during))
    print("target: p99 < 50 ms during uploads")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def _collect_terminated(proc: subprocess.Popen[str]) -> list[tuple[float, float]]:
    out, _ = proc.communicate(timeout=60)
    return [tuple(s) for s in json.loads(out)] if out.strip() else []


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        asyncio.run(client(sys.argv[2], float(sys.argv[3])))
        return
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    uploads = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    asyncio.run(serve_and_upload(size_mb, uploads))


if __name__ == "__main__":
    main()
