"""Shared fixtures: one embedded-data cache per test session (built once, ~15 s), and a small root from it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


def small_data_root(data_root: Path, folder: Path, n_train: int = 400, n_test: int = 120) -> Path:
    """A data root with random subsets of the embedded caches: whole runs then spend seconds, not
    minutes, on the server's central evaluation (round 0 and the last round always evaluate)."""
    from client_app.device_data import write_array_cache
    from data_partition.datasets import cache_folder, load_splits

    rng = np.random.default_rng(0)
    for name in ("digits", "spoken-digits"):
        splits = load_splits(name, data_root)
        train = np.sort(rng.permutation(len(splits.train))[:n_train])
        test = np.sort(rng.permutation(len(splits.test))[:n_test])
        write_array_cache(cache_folder(name, folder), name, splits.train.subset(train), splits.test.subset(test))
    return folder


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, data_root) -> Path:
    return small_data_root(data_root, tmp_path_factory.mktemp("small-data"))
