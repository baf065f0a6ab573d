"""Fixtures for the egresskit-alioss tests: moto's S3 app as the OSS protocol target (shared)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from storage_servers import oss_target  # noqa: E402, F401 - shared fixture
