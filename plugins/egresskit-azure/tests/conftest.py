"""Fixtures for the egresskit-azure tests: the repository's shared Azurite fixture."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from storage_servers import azurite, azurite_env  # noqa: E402, F401 - shared fixtures
