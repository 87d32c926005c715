"""Shared test set-up: ``ARCHSIM_DATA`` points at ``../shared/data`` when that folder exists; tests
marked ``shared_data`` skip cleanly when it does not (the package itself never needs it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if SHARED_DATA.is_dir():
    os.environ.setdefault("ARCHSIM_DATA", str(SHARED_DATA))


def shared_file(name: str) -> Path:
    path = Path(os.environ.get("ARCHSIM_DATA", SHARED_DATA)) / name
    if not path.exists():
        pytest.skip(f"{name} not available (../shared/data absent)")
    return path


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir() or os.environ.get("ARCHSIM_DATA"):
        return
    skip = pytest.mark.skip(reason="../shared/data absent")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)
