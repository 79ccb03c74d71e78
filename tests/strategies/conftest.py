"""Every test here builds Flower messages outside a ServerApp: they need a task identity.

Flower's ``ArrayRecord.to_numpy_ndarrays(keep_input=False)`` (Bulyan, per reply)
runs a full ``gc.collect()``; in a test process that is ~0.1 s per reply and has
nothing to do with what these tests check, so it is a no-op here.
"""

from __future__ import annotations

import gc

import pytest

from tests.fake_grid import task_identity


@pytest.fixture(autouse=True)
def _identity(monkeypatch):
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    with task_identity():
        yield
