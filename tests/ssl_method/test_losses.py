import math

import pytest
import torch

from ssl_method.losses import nt_xent


def hand_nt_xent(z1, z2, t):
    """Loop-by-loop NT-Xent from the SimCLR paper's definition."""
    z = [[x / math.sqrt(sum(x * x for x in v)) for x in v] for v in (z1 + z2)]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = [sum(a * b for a, b in zip(z[i], z[j])) / t for j in range(2 * n)]
        denom = sum(math.exp(s) for j, s in enumerate(sims) if j != i)
        total += -math.log(math.exp(sims[pos]) / denom)
    return total / (2 * n)


def test_matches_hand_computed_value():
    z1 = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
    z2 = [[0.9, 0.1], [0.2, 1.0], [-1.0, 0.5]]
    expected = hand_nt_xent(z1, z2, 0.5)
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), 0.5).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # and a fixed number, so a change in the hand version cannot hide a change here
    assert got == pytest.approx(1.4853, abs=1e-3)


def test_identical_views_far_apart_give_low_loss_and_swapped_give_high():
    eye = torch.eye(4) * 10
    low = nt_xent(eye, eye, 0.1).item()
    high = nt_xent(eye, eye.roll(1, dims=0), 0.1).item()
    assert low < 0.01 < 5 < high


def test_rejects_batches_too_small_to_contrast():
    with pytest.raises(ValueError):
        nt_xent(torch.ones(1, 3), torch.ones(1, 3), 0.5)
