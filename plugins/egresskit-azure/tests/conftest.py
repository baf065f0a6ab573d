"""Fixtures for the egresskit-azure tests: Azurite's blob service on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from storage_servers import AzuriteBlob  # noqa: E402 - found through the path set above


@pytest.fixture(scope="session")
def azurite():
    with AzuriteBlob() as server:
        yield server
