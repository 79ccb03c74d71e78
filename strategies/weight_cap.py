"""Bounded influence: no reply may weigh more than ``factor`` x the round's (lower) median.

FedAvg-style means weight each client by the ``num-examples`` it reports; the
client alone decides that number, so without a cap one reply claiming 1e18
examples *is* the aggregate. Honest data sizes differ by a few times at most
(on the default partitions the largest client holds under 2.5x the median), so
capping at ``factor`` x the lower median leaves honest rounds unchanged and
limits a lying client to ``factor`` honest clients' worth of weight while it
is a minority of the round.

The lower median (the ``(n-1)//2``-th smallest weight) is used so that with two
replies the honest one sets the cap, not the mean of the two.
"""

from __future__ import annotations

from collections.abc import Sequence

from app_config.run_config import RunConfig

DEFAULT_FACTOR = RunConfig().weight_cap_factor
DEFAULT_NORM_FACTOR = RunConfig().update_norm_cap_factor


def lower_median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def cap_weights(weights: Sequence[float], factor: float = DEFAULT_FACTOR) -> tuple[list[float], int]:
    """``(capped weights, how many were capped)``; ``factor <= 0`` turns the cap off."""
    weights = [float(w) for w in weights]
    if factor <= 0 or not weights:
        return weights, 0
    cap = factor * lower_median(weights)
    return [min(w, cap) for w in weights], sum(1 for w in weights if w > cap)


def check_factor(factor: float, key: str = "weight-cap-factor") -> float:
    """``factor`` if it is 0 (off) or >= 1, else a one-line ValueError naming the run-config key."""
    if not (factor == 0 or factor >= 1):
        raise ValueError(f"{key}: must be 0 (off) or >= 1, got {factor!r}")
    return float(factor)
