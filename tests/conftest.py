"""Shared fixtures: one embedded-data cache per test session (built once, ~15 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding the embedded digits and spoken-digits caches."""
    from data_partition.datasets import load_splits

    root = Path(os.environ.get("FSSUAVL_TEST_DATA_ROOT") or tmp_path_factory.mktemp("data"))
    load_splits("digits", root)
    load_splits("spoken-digits", root)
    return root
