"""The SSL objectives on two views' projections: NT-Xent (SimCLR) and Barlow Twins."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

OBJECTIVES = ("nt-xent", "barlow-twins")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean NT-Xent over the 2N views; the positive of view i is the other view of sample i.

    Written out (a few lines) rather than taken from a metric-learning package,
    to avoid a dependency for one function.
    """
    if z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError("NT-Xent needs two equally shaped batches of at least 2 samples")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins (Zbontar et al., ICML 2021): ``sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2``.

    ``C`` is the cross-correlation of the two views' projections, each standardised over the batch as the
    authors' code does (batch norm without affine parameters: biased variance, ``eps`` inside the root),
    divided by the batch size. ``lambd`` = 0.0051 is the authors' value. A few lines, as NT-Xent above.
    """
    if z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError("Barlow Twins needs two equally shaped batches of at least 2 samples")
    n = z1.shape[0]

    def standardised(z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = standardised(z1).t() @ standardised(z2) / n
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diagonal + lambd * off_diagonal


def pair_loss(objective: str, temperature: float, barlow_lambda: float
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The run's objective as ``loss(z1, z2)``."""
    if objective == "nt-xent":
        return lambda z1, z2: nt_xent(z1, z2, temperature)
    if objective == "barlow-twins":
        return lambda z1, z2: barlow_twins(z1, z2, barlow_lambda)
    raise ValueError(f"ssl-objective: unknown value {objective!r}; valid: {', '.join(OBJECTIVES)}")
