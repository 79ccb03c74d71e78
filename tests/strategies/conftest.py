"""Every test here builds Flower messages outside a ServerApp: they need a task identity."""

from __future__ import annotations

import pytest

from tests.fake_grid import task_identity


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield
