"""Shared fixtures: the simulated Microsoft cloud and configs that point at it."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import SECRET, CloudSetup
from tests.peers.fake_cloud import FakeCloud


@pytest.fixture(scope="session")
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as server:
        yield server


@pytest.fixture
def setup(cloud: FakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CloudSetup:
    monkeypatch.setenv("DF_TEST_CLIENT_SECRET", SECRET)
    return CloudSetup(cloud, tmp_path)
