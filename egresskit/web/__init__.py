"""The browser source: a web page in Chromium on a private Xvfb display with a PulseAudio sink."""

from egresskit.web.browser import BrowserUnavailable, PageBrowser, PageFailed, check_available
from egresskit.web.processes import missing_packages, reap_orphans

__all__ = [
    "BrowserUnavailable",
    "PageBrowser",
    "PageFailed",
    "check_available",
    "missing_packages",
    "reap_orphans",
]
