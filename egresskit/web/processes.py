"""The helper programs of a browser source: each in its own process group, nothing left behind.

A web egress runs Xvfb, PulseAudio and Chromium. Each is started in a
session of its own (so one `killpg` ends it with every child it forked)
and dies with the service's loop thread (PR_SET_PDEATHSIG). Their files
live in one private temporary directory per egress, named
`egresskit-web-*`, which records the owner's pid and every process group
started in it; `reap_orphans` at service start ends the groups of
directories whose owner is gone (a killed service) and removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

WORK_DIR_PREFIX = "egresskit-web-"
AUTHORITY_DIR_PREFIX = "egresskit-xauth-"  # a service's X authority file (display.py)
# Set in every helper's environment: the watchdog kills only processes that carry it (or name
# their directory), so a process group id reused by an unrelated program is never touched.
MARKER_ENV = "EGRESSKIT_WEB_DIR"
# The executables a browser source runs, and the Debian package that installs each.
PACKAGES = {"Xvfb": "xvfb", "pulseaudio": "pulseaudio", "parec": "pulseaudio-utils"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
GRACE_S = 2.0
_PR_SET_PDEATHSIG = 1


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_packages() -> list[str]:
    """The packages a browser source needs that this machine lacks (empty: it can run)."""
    missing = [package for exe, package in PACKAGES.items() if shutil.which(exe) is None]
    if chromium_path() is None:
        missing.insert(0, "chromium")
    return missing


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends.

    Also back to normal scheduling: a caller on SCHED_FIFO (seen in a process
    that had run the livekit real-time SDK's publishers) would pass it on, and
    a real-time browser that spins starves the host.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


class WorkDir:
    """One web egress's private directory and the process groups started for it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX))  # mode 0700
        (self.path / "owner").write_text(str(os.getpid()))
        self.processes: list[asyncio.subprocess.Process] = []

    def env(self, **extra: str) -> dict[str, str]:
        """A helper's environment: its home, config and runtime dirs all inside this one."""
        env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "LANG", "LC_ALL", "TZ", "XAUTHORITY")
        }
        home = str(self.path)
        env.update(
            HOME=home,
            XDG_RUNTIME_DIR=home,
            XDG_CONFIG_HOME=f"{home}/config",
            XDG_CACHE_HOME=f"{home}/cache",
            TMPDIR=home,
        )
        env[MARKER_ENV] = home
        env.update(extra)
        return env

    async def spawn(
        self,
        *argv: str,
        env: dict[str, str],
        stdout: int | None = asyncio.subprocess.DEVNULL,
        log_name: str = "",
        pipe_fds: tuple[int, int] | None = None,
        keep_fd: int | None = None,
    ) -> asyncio.subprocess.Process:
        """Start one helper in a new session; its stderr goes to `<log_name>.log` here.

        `pipe_fds` (read, write) become the child's fds 3 and 4 (Chromium's
        DevTools pipe); `keep_fd` stays open in the child under its number.
        """

        def prepare() -> None:
            _die_with_parent()
            if pipe_fds is not None:
                read = fcntl.fcntl(pipe_fds[0], fcntl.F_DUPFD, 10)
                write = fcntl.fcntl(pipe_fds[1], fcntl.F_DUPFD, 10)
                os.dup2(read, 3)
                os.dup2(write, 4)

        log_path = self.path / f"{log_name or Path(argv[0]).name}.log"
        # a small local file in the egress's own directory: opening it does not block
        stderr = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=prepare,
                # fds 3 and 4 are made in `prepare`, so nothing may close them afterwards;
                # every other fd of this process is non-inheritable (PEP 446).
                close_fds=pipe_fds is None,
                pass_fds=(keep_fd,) if keep_fd is not None else (),
            )
        finally:
            os.close(stderr)
        self.processes.append(process)
        self._remember(process.pid)
        return process

    def _remember(self, pgid: int) -> None:
        """Note a process group for the watchdog, before anything else can go wrong."""
        with (self.path / "groups").open("a") as groups:
            groups.write(f"{pgid}\n")

    def log_tail(self, name: str, size: int = 600) -> str:
        """The end of a helper's log, to explain why it failed."""
        try:
            data = (self.path / f"{name}.log").read_bytes()[-size:]
        except OSError:
            return ""
        return data.decode(errors="replace").strip()

    async def close(self) -> None:
        """End every group (TERM, then KILL after a grace period), reap, remove the directory."""
        for process in reversed(self.processes):
            _signal_group(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                await asyncio.wait_for(process.wait(), GRACE_S)
            except TimeoutError:
                pass
            # the leader may be gone while its children linger: the group goes either way
            _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), GRACE_S)
        await asyncio.to_thread(shutil.rmtree, self.path, True)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _owner(path: Path) -> int:
    """The pid of the service that made a directory (0: unknown)."""
    try:
        return int((path / "owner").read_text())
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned_by(work_dir: str, pgid: int | None = None) -> list[int]:
    """Pids of the helpers started for `work_dir` (in process group `pgid`, if given).

    A helper carries MARKER_ENV in its environment, except Chromium's own
    children, which rewrite theirs (their process titles take its place);
    those name the directory in their command line instead.
    """
    marker = f"{MARKER_ENV}={work_dir}".encode()
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if pgid is not None:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) != pgid:  # fields after the name: state, ppid, pgrp
                    continue
            environ = (entry / "environ").read_bytes().split(b"\0")
            if marker in environ or work_dir.encode() in (entry / "cmdline").read_bytes():
                members.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return members


def reap_orphans(root: Path | None = None) -> int:
    """End the helpers of web egresses whose service is gone; returns directories removed."""
    root = root or Path(tempfile.gettempdir())
    removed = 0
    for path in root.glob(AUTHORITY_DIR_PREFIX + "*"):
        if not _alive(_owner(path)):
            shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(WORK_DIR_PREFIX + "*"):
        if _alive(_owner(path)):  # this service's own, or another running service's
            continue
        try:
            groups = [int(line) for line in (path / "groups").read_text().split()]
        except (OSError, ValueError):
            groups = []
        for pgid in groups:
            for pid in owned_by(str(path), pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
        log.warning("removed the leftovers of a web egress of a service that ended: %s", path)
    return removed
