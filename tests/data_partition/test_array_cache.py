"""The array cache survives crashes: killed builds leave nothing behind, published caches are whole and never deleted."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import data_partition.array_cache as array_cache
from data_partition.array_cache import cache_ready, cached_splits
from data_partition.modality_data import IMAGE, DatasetSplits, ModalityData
from tests.conftest import PROJECT
from tests.process_helpers import reaped, sigkill


def splits(value: int, n: int = 4) -> DatasetSplits:
    data = ModalityData(IMAGE, np.full((n, 2, 2, 3), value, np.uint8), np.arange(n), ("a", "b", "c", "d"))
    return DatasetSplits("tiny", data, data)


def leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


KILLED_BUILDER = """
import sys, time
from pathlib import Path
import numpy as np
from data_partition.array_cache import cached_splits

def build(scratch):
    np.save(scratch / "decoded.npy", np.zeros(5_000_000, np.float32))  # a dataset-sized scratch file
    print("building", flush=True)
    time.sleep(600)

cached_splits(Path(sys.argv[1]) / "tiny", build)
"""


def test_build_killed_midway_leaves_no_staging_and_the_next_build_succeeds(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER, str(tmp_path)], cwd=PROJECT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    with reaped(proc):
        assert proc.stdout.readline().strip() == "building"
        sigkill(proc)
    assert any(name.startswith(".tiny-") and name != ".tiny.lock" for name in leftovers(tmp_path))  # the dead build's
    back = cached_splits(tmp_path / "tiny", lambda _scratch: splits(7))
    assert int(back.train.x[0, 0, 0, 0]) == 7 and cache_ready(tmp_path / "tiny")
    assert leftovers(tmp_path) == [".tiny.lock", "tiny"]
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "meta.json", "test_x.npy", "test_y.npy", "train_x.npy", "train_y.npy"]


def test_files_are_fsynced_before_the_cache_is_published(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def publishing(real):
        def move(src, dst):
            events.append(("rename", str(dst)))
            return real(src, dst)
        return move

    monkeypatch.setattr(array_cache.os, "fsync", fsync)
    monkeypatch.setattr(array_cache.os, "rename", publishing(real_rename))
    monkeypatch.setattr(array_cache.os, "replace", publishing(real_replace))
    cached_splits(tmp_path / "tiny", lambda _scratch: splits(1))
    published = events.index(("rename", str(tmp_path / "tiny")))
    synced_before = {os.path.basename(path) for kind, path in events[:published] if kind == "fsync"}
    assert {"train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy", "meta.json"} <= synced_before
    assert any(kind == "fsync" and path.startswith(str(tmp_path / ".tiny-")) and path.count("/") ==
               str(tmp_path).count("/") + 1 for kind, path in events[:published])  # the staging folder itself
    assert ("fsync", str(tmp_path)) in events[published:]  # and the parent after the rename


def test_truncated_array_does_not_count_as_ready_and_is_rebuilt(tmp_path):
    cached_splits(tmp_path / "tiny", lambda _scratch: splits(1, n=50))
    target = tmp_path / "tiny" / "train_x.npy"
    target.write_bytes(target.read_bytes()[:-100])  # meta.json beside a truncated .npy, as after a crash
    assert not cache_ready(tmp_path / "tiny")
    builds = []
    back = cached_splits(tmp_path / "tiny", lambda _scratch: builds.append(1) or splits(2, n=50))
    assert builds == [1] and int(back.train.x[-1, 0, 0, 0]) == 2
    assert cache_ready(tmp_path / "tiny")
    assert leftovers(tmp_path) == [".tiny.lock", "tiny"]


def test_a_builder_the_lock_did_not_exclude_keeps_the_published_cache(tmp_path, monkeypatch):
    """On a file system whose lock does not exclude, a second builder must not delete the cache under its readers."""
    monkeypatch.setattr(array_cache, "_exclusive", lambda _path: contextlib.nullcontext())
    folder = tmp_path / "tiny"
    seen = {}

    def slow_build(_scratch):
        first = cached_splits(folder, lambda _s: splits(1))  # another builder publishes meanwhile
        seen["reader"] = first
        seen["inode"] = os.stat(folder / "train_x.npy").st_ino
        return splits(2)

    back = cached_splits(folder, slow_build)
    assert os.stat(folder / "train_x.npy").st_ino == seen["inode"]  # same files: nothing was replaced
    assert int(back.train.x[0, 0, 0, 0]) == 1 and int(seen["reader"].train.x[0, 0, 0, 0]) == 1
    assert leftovers(tmp_path) == ["tiny"]


def test_staging_of_a_live_builder_is_kept(tmp_path):
    """Only dead builders' folders are swept: a build in progress elsewhere is left alone."""
    staging = array_cache._new_staging(tmp_path, "tiny")  # owned by this (live) process
    assert array_cache.sweep_stale(tmp_path, "tiny") == []
    (staging / ".owner.json").write_text('{"host": "elsewhere", "pid": 1}')
    assert array_cache.sweep_stale(tmp_path, "tiny") == []  # another host, recent: may still be building
    old = time.time() - array_cache.STALE_SECONDS - 60
    os.utime(staging, (old, old))
    assert array_cache.sweep_stale(tmp_path, "tiny") == [staging]


@pytest.mark.parametrize("name", ["tiny-imagenet"])
def test_sweep_leaves_other_datasets_alone(tmp_path, name):
    other = array_cache._new_staging(tmp_path, name)
    (other / ".owner.json").write_text('{"host": "%s", "pid": 999999999}' % __import__("socket").gethostname())
    assert array_cache.sweep_stale(tmp_path, "tiny") == []
    assert array_cache.sweep_stale(tmp_path, name) == [other]
