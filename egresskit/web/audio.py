"""A private PulseAudio server with one null sink: where a page's sound goes, and is read back.

PyAV's FFmpeg has no `pulse` input, so the sink's monitor is read with
`parec` as raw 48 kHz stereo s16le on a pipe (no measurable CPU).
"""

from __future__ import annotations

import asyncio

from egresskit.web.processes import WorkDir

SINK = "egress"
SAMPLE_RATE = 48_000
CHANNELS = 2
BYTES_PER_SAMPLE = 2 * CHANNELS


class AudioSink:
    """One PulseAudio server whose socket and state live in the egress's directory."""

    def __init__(self, work: WorkDir) -> None:
        self.work = work
        self.socket = work.path / "pulse.sock"

    @property
    def server(self) -> str:
        return f"unix:{self.socket}"

    async def start(self, timeout: float = 10.0) -> None:
        process = await self.work.spawn(
            "pulseaudio",
            "-n",  # no default script: only the modules below
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--use-pid-file=no",
            "--disable-shm=yes",
            "--log-level=error",
            "-L",
            f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
            "-L",
            f"module-null-sink sink_name={SINK} rate={SAMPLE_RATE} channels={CHANNELS}",
            env=self.work.env(),
            log_name="pulseaudio",
        )
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.socket.exists():
            if process.returncode is not None:
                raise RuntimeError(f"pulseaudio failed: {self.work.log_tail('pulseaudio')}")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("pulseaudio did not start in time")
            await asyncio.sleep(0.02)

    async def record(self) -> asyncio.subprocess.Process:
        """`parec` on the sink's monitor; its stdout is the raw sound from now on."""
        return await self.work.spawn(
            "parec",
            f"--server={self.server}",
            f"--device={SINK}.monitor",
            "--raw",
            "--format=s16le",
            f"--rate={SAMPLE_RATE}",
            f"--channels={CHANNELS}",
            "--latency-msec=100",  # a bigger buffer: fewer drops when this process is starved
            env=self.work.env(),
            stdout=asyncio.subprocess.PIPE,
            log_name="parec",
        )
