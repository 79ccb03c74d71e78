"""NT-Xent (normalised temperature-scaled cross entropy), SimCLR's contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
