"""Fixtures for the egresskit-gcs tests: a gcp-storage-emulator on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from storage_servers import GcsEmulator  # noqa: E402 - found through the path set above


@pytest.fixture(scope="session")
def gcs_emulator():
    with GcsEmulator() as server:
        yield server
