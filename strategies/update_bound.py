"""Bounded influence of well-formed extremes: no update larger than ``factor`` x the round's lower-median norm.

The weight cap (:mod:`strategies.weight_cap`) bounds a reply's *share* of a
mean, not the *size* of what it adds: one finite float32 reply of 3e38, or a
model-replacement vector, moved FedAvg, FedProx, FedAvgM, L-DAWA and FedOpt by
up to 1e37 relative to the honest aggregate, and made FedAdam's second moment
infinite for the rest of the run. Here each reply's update (its float arrays
minus the global model sent that round, L2 norm in float64) is scaled down to
at most ``factor`` x the round's lower median update norm before any strategy
sees it (norm bounding, Sun et al. 2019, "Can you really backdoor federated
learning?"; the median makes the bound the honest clients' while they are the
majority). Honest updates differ by a few times (clients train a few more or
fewer steps), so the default of 10 leaves honest rounds as they are.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Message

from strategies.dp_clip import clip_update, update_norm
from strategies.weight_cap import lower_median


def bound_updates(replies: list[Message], reference: ArrayRecord, factor: float) -> int:
    """Scale every reply whose update norm exceeds ``factor`` x the lower median down to it (in place, on the
    filter's copies); return how many were scaled. ``factor <= 0`` or fewer than 2 replies: nothing."""
    if factor <= 0 or len(replies) < 2:
        return 0
    records = [next(iter(r.content.array_records.items())) for r in replies]
    norms = [update_norm(record, reference) for _, record in records]
    cap = factor * lower_median(norms)
    if not cap > 0:  # most replies did not move: no scale to bound by
        return 0
    bounded = 0
    for reply, (key, record), norm in zip(replies, records, norms):
        if norm > cap:
            reply.content[key], _ = clip_update(record, reference, cap, norm)
            bounded += 1
    return bounded
