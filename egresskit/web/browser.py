"""One page in its own Chromium, on its own display, playing into its own sound sink.

`PageBrowser.open()` starts Xvfb, PulseAudio (unless the sound is not
wanted) and Chromium in kiosk mode, loads the page and returns once its
load event fired; it raises `PageFailed` with the reason when the page
cannot be shown (DNS, refused connection, an HTTP error status, a crash).
While the page runs, `start_signal` / `end_signal` are set when it logs
START_RECORDING / END_RECORDING, and `failed` when it crashes or the
browser exits. `close()` ends every process and removes every file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from egresskit.web.audio import AudioSink
from egresskit.web.devtools import DevTools, DevToolsError
from egresskit.web.display import Display
from egresskit.web.processes import WorkDir, chromium_path, missing_packages

START_RECORDING = "START_RECORDING"
END_RECORDING = "END_RECORDING"
LOAD_TIMEOUT_S = 30.0

# Chromium checks only whether a switch is present: `--mute-audio=false` mutes and
# `--enable-automation=false` shows the automation bar, so such switches are never written
# with a value to turn them off, only left out.
CHROMIUM_FLAGS = (
    "--kiosk",
    "--window-position=0,0",
    "--no-first-run",
    "--no-default-browser-check",
    "--noerrdialogs",
    "--disable-infobars",
    "--disable-session-crashed-bubble",
    "--disable-gpu",  # Xvfb has no GPU: software compositing, without a GPU process
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-translate",
    # WebRtcHideLocalIpsWithMdns: a template page's WHEP offer names its real loopback
    # address, not an mDNS name egresskit's ICE cannot resolve
    "--disable-features=Translate,MediaRouter,DialMediaRouteProvider,WebRtcHideLocalIpsWithMdns",
    # nothing covers the window, but with no window manager Chromium may think so and
    # throttle the page's animation frames
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--autoplay-policy=no-user-gesture-required",
    "--hide-scrollbars",
    "--password-store=basic",
    "--use-mock-keychain",
    "--remote-debugging-pipe",
)


class PageFailed(Exception):
    """The page could not be shown or stopped running; the message says why."""


class BrowserUnavailable(Exception):
    """A program the browser source needs is not installed; the message names its package."""


def check_available() -> None:
    missing = missing_packages()
    if missing:
        raise BrowserUnavailable(
            f"web egress needs the package(s) {', '.join(missing)}, which are not installed"
        )


class PageBrowser:
    """Xvfb + PulseAudio + Chromium showing one page at width x height."""

    def __init__(self, url: str, width: int, height: int, *, audio: bool = True) -> None:
        self.url = url
        self.width = width
        self.height = height
        self.audio = audio
        self.work: WorkDir | None = None
        self.display: Display | None = None
        self.sink: AudioSink | None = None
        self.start_signal = asyncio.Event()
        self.end_signal = asyncio.Event()
        self.failed = asyncio.Event()
        self.error = ""
        self._loaded = asyncio.Event()
        self._devtools: DevTools | None = None
        self._chromium: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._page_session = ""
        self._main_frame = ""

    async def open(self) -> None:
        check_available()
        try:
            await self._start()
        except (RuntimeError, OSError) as exc:  # a helper that would not start
            raise PageFailed(f"the browser could not start: {exc}") from None
        try:
            await self._load()
        except DevToolsError as exc:
            # a browser that exited says why in its log: give its watcher a moment to read it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.failed.wait(), 2.0)
            raise PageFailed(self.error or f"the browser stopped answering: {exc}") from None

    async def _start(self) -> None:
        chromium = chromium_path()
        assert chromium is not None
        self.work = work = WorkDir()
        self.display = Display(work, self.width, self.height)
        await self.display.start()
        extra = {"DISPLAY": self.display.name, "XAUTHORITY": str(self.display.auth_file)}
        flags = [*CHROMIUM_FLAGS, f"--window-size={self.width},{self.height}"]
        if self.audio:
            self.sink = AudioSink(work)
            await self.sink.start()
            extra.update(PULSE_SERVER=self.sink.server, PULSE_SINK="egress")
        else:
            flags.append("--mute-audio")
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox
        self._devtools = DevTools(self._on_event)
        self._chromium = await work.spawn(
            chromium,
            *flags,
            f"--user-data-dir={work.path / 'profile'}",
            "about:blank",
            env=work.env(**extra),
            pipe_fds=self._devtools.child_fds,
            log_name="chromium",
        )
        await self._devtools.connect()
        self._watch = asyncio.create_task(self._watch_browser(self._chromium))

    async def _load(self) -> None:
        devtools = self._devtools
        assert devtools is not None
        await devtools.call("Target.setDiscoverTargets", {"discover": True})
        target = await self._page_target(devtools)
        attached = await devtools.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )
        session = self._page_session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Inspector"):
            await devtools.call(f"{domain}.enable", session=session)
        # known before navigating: the document's response can arrive before navigate's reply
        tree = await devtools.call("Page.getFrameTree", session=session)
        self._main_frame = tree["frameTree"]["frame"]["id"]
        navigated = await devtools.call("Page.navigate", {"url": self.url}, session=session)
        if navigated.get("errorText"):
            raise PageFailed(f"the page did not load: {navigated['errorText']}")
        loaded = asyncio.ensure_future(self._loaded.wait())
        failed = asyncio.ensure_future(self.failed.wait())
        try:
            done, _ = await asyncio.wait(
                {loaded, failed}, timeout=LOAD_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            loaded.cancel()
            failed.cancel()
        if self.failed.is_set():
            raise PageFailed(self.error)
        if not done:
            raise PageFailed(f"the page did not finish loading in {LOAD_TIMEOUT_S:.0f} s")

    @staticmethod
    async def _page_target(devtools: DevTools) -> str:
        for _ in range(50):
            targets = await devtools.call("Target.getTargets")
            for target in targets.get("targetInfos", []):
                if target.get("type") == "page":
                    return str(target["targetId"])
            await asyncio.sleep(0.1)
        raise PageFailed("Chromium opened no page")

    async def dispatch(self, event: str, detail: Any) -> None:
        """Dispatch a CustomEvent named `event` with `detail` (JSON) on the page's window."""
        if self._devtools is None or not self._page_session:
            raise PageFailed("the page is not open")
        script = f"window.dispatchEvent(new CustomEvent({json.dumps(event)}, {{detail: {json.dumps(detail)}}}))"
        try:
            await self._devtools.call(
                "Runtime.evaluate", {"expression": script}, session=self._page_session
            )
        except DevToolsError as exc:
            raise PageFailed(str(exc)) from None

    def _fail(self, reason: str) -> None:
        if not self.failed.is_set():
            self.error = reason
            self.failed.set()

    def _on_event(self, method: str, params: dict[str, Any], session: str) -> None:
        if method == "Runtime.consoleAPICalled":
            for arg in params.get("args", []):
                if arg.get("value") == START_RECORDING:
                    self.start_signal.set()
                elif arg.get("value") == END_RECORDING:
                    self.end_signal.set()
        elif method == "Page.loadEventFired" and session == self._page_session:
            self._loaded.set()
        elif method == "Network.responseReceived" and params.get("type") == "Document":
            status = params.get("response", {}).get("status", 0)
            if params.get("frameId") == self._main_frame and status >= 400:
                self._fail(
                    f"the page answered HTTP {status} {params['response'].get('statusText', '')}".strip()
                )
        elif method in ("Inspector.targetCrashed", "Target.targetCrashed"):
            self._fail("the page crashed")
        elif method == "Inspector.detached" and session == self._page_session:
            self._fail(f"the page went away ({params.get('reason', 'detached')})")

    async def _watch_browser(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        said = self.work.log_tail("chromium", 300).splitlines() if self.work else []
        self._fail(f"Chromium exited (status {code})" + (f": {said[-1]}" if said else ""))

    async def close(self) -> None:
        """End Chromium, PulseAudio and Xvfb and remove their files (idempotent)."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._devtools is not None:
            if self._chromium is not None and self._chromium.returncode is None:
                with contextlib.suppress(DevToolsError):
                    await self._devtools.call("Browser.close", timeout=2.0)
            await self._devtools.close()
            self._devtools = None
        if self.display is not None:
            self.display.close()
        if self.work is not None:
            await self.work.close()
            self.work = None
