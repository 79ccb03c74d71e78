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


def hand_barlow_twins(z1, z2, lambd, eps=1e-5):
    """Element by element from the Barlow Twins paper: batch-standardised views, cross-correlation, two terms."""
    n, d = len(z1), len(z1[0])

    def standardised(z):
        cols = []
        for j in range(d):
            col = [row[j] for row in z]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n
            cols.append([(x - mean) / math.sqrt(var + eps) for x in col])
        return cols  # cols[j][b]

    a, b = standardised(z1), standardised(z2)
    c = [[sum(a[i][k] * b[j][k] for k in range(n)) / n for j in range(d)] for i in range(d)]
    return sum((1 - c[i][i]) ** 2 for i in range(d)) + lambd * sum(c[i][j] ** 2 for i in range(d) for j in range(d)
                                                                  if i != j)


def test_barlow_twins_matches_hand_computed_value():
    from ssl_method.losses import barlow_twins

    z1 = [[1.0, 0.0, 2.0], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [3.0, -1.0, 0.5]]
    z2 = [[0.9, 0.1, 1.0], [0.2, 1.0, 2.0], [-1.0, 0.5, 0.0], [2.0, 0.0, 1.0]]
    expected = hand_barlow_twins(z1, z2, 0.0051)
    got = barlow_twins(torch.tensor(z1), torch.tensor(z2), 0.0051).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # The redundancy weight matters, and a fixed number pins the hand version too.
    assert barlow_twins(torch.tensor(z1), torch.tensor(z2), 1.0).item() == pytest.approx(
        hand_barlow_twins(z1, z2, 1.0), rel=1e-5)
    assert got == pytest.approx(0.3780, abs=1e-3)


def test_barlow_twins_is_zero_for_identical_decorrelated_views_and_high_for_unrelated_ones():
    from ssl_method.losses import barlow_twins

    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # zero mean, unit variance, uncorrelated
    assert barlow_twins(signs, signs, 0.0051).item() == pytest.approx(0.0, abs=1e-4)
    assert barlow_twins(signs, signs.flip(0), 0.0051).item() > 3.9  # the views' diagonals anti-correlate
    with pytest.raises(ValueError):
        barlow_twins(torch.ones(1, 3), torch.ones(1, 3), 0.0051)


def test_pair_loss_picks_the_configured_objective():
    from ssl_method.losses import barlow_twins, pair_loss

    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    assert pair_loss("nt-xent", 0.3, 0.0051)(z1, z2).item() == pytest.approx(nt_xent(z1, z2, 0.3).item())
    assert pair_loss("barlow-twins", 0.3, 0.02)(z1, z2).item() == pytest.approx(barlow_twins(z1, z2, 0.02).item())
    with pytest.raises(ValueError, match="ssl-objective"):
        pair_loss("byol", 0.3, 0.0051)
