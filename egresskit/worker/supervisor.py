"""`egresskit worker`: one worker process per core under a parent that keeps them running.

One Python event loop saturates at about one core, so a worker machine runs
`processes` worker processes, each its own psrpc server with its own claims
and admission for its share of the cores. The parent restarts a child that
crashes, passes SIGTERM on (each child drains its egresses), serves /healthz
and /metrics from the status lines its children write to a pipe, and exits
once every child has. With one process the parent is the worker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from egresskit.web import reap_orphans
from egresskit.worker.config import WorkerConfig
from egresskit.worker.process import WorkerProcess
from egresskit.worker.status import ProcessStatus, serve_status

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0
RESTART_DELAY_S = 1.0
_PR_SET_PDEATHSIG = 1


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def run_process(config: WorkerConfig, cores: float, status_fd: int | None = None) -> None:
    """One worker process until SIGTERM, then drained. `status_fd`: report to a parent."""
    if status_fd is not None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: die with the parent
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    stop = _stop_event()
    # the browsers of web egresses of a worker that was killed: ended before taking work
    await asyncio.to_thread(reap_orphans)
    worker = WorkerProcess(config, cores)
    await worker.start()
    status_server = None
    reporting = None
    if status_fd is None:
        status_server = await serve_status(
            lambda: [worker.status()], config.bind, config.health_port, config.prometheus_port
        )
    else:
        reporting = asyncio.create_task(_report_status(worker, status_fd))
    print(f"egresskit worker {os.getpid()} ready", flush=True)
    await stop.wait()
    try:
        await worker.drain()
    finally:
        if reporting is not None:
            reporting.cancel()
        await worker.close()
        if status_server is not None:
            await status_server.cleanup()
    log.info("egress worker %d stopped", os.getpid())


async def _report_status(worker: WorkerProcess, fd: int) -> None:
    """A JSON line a second; a line is far below PIPE_BUF, so each write is whole."""
    try:
        while True:
            os.write(fd, (json.dumps(worker.status()) + "\n").encode())
            await asyncio.sleep(STATUS_INTERVAL_S)
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.status: ProcessStatus | None = None
        self.restarts = 0


async def supervise(
    config: WorkerConfig, processes: int, cores: float, child_args: Sequence[str]
) -> int:
    """Run `processes` children (`python -m egresskit worker <child_args> --child ...`)."""
    stop = _stop_event()
    children = [_Child(i) for i in range(processes)]
    share = cores / processes

    async def keep_running(child: _Child) -> None:
        while not stop.is_set():
            read_fd, write_fd = os.pipe()
            child.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "egresskit",
                "worker",
                *child_args,
                "--child-status-fd",
                str(write_fd),
                "--child-cores",
                str(share),
                pass_fds=(write_fd,),
            )
            os.close(write_fd)
            reader = asyncio.create_task(_read_status(child, read_fd))
            code = await child.process.wait()
            reader.cancel()
            child.status = None
            if stop.is_set():
                break
            child.restarts += 1
            log.error(
                "worker process %d (pid %d) exited with %s: restarting",
                child.index,
                child.process.pid,
                code,
            )
            await asyncio.sleep(RESTART_DELAY_S)

    def statuses() -> list[ProcessStatus]:
        return [c.status for c in children if c.status is not None]

    status_server = await serve_status(
        statuses, config.bind, config.health_port, config.prometheus_port
    )
    runners = [asyncio.create_task(keep_running(c)) for c in children]
    await stop.wait()
    log.info("SIGTERM: draining %d worker processes", processes)
    for child in children:
        if child.process is not None and child.process.returncode is None:
            child.process.send_signal(signal.SIGTERM)
    await asyncio.gather(*runners, return_exceptions=True)
    if status_server is not None:
        await status_server.cleanup()
    return 0


async def _read_status(child: _Child, fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb")
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while line := await reader.readline():
            with contextlib.suppress(ValueError):
                child.status = json.loads(line)
    finally:
        transport.close()
