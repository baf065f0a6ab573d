"""Fixtures for the egresskit-alioss tests: moto's S3 app as the OSS protocol target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from storage_servers import MotoS3Only  # noqa: E402 - found through the path set above


@pytest.fixture(scope="session")
def oss_target():
    with MotoS3Only() as server:
        yield server
