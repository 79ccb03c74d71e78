"""Modality-wise FedAvg (Harmony's first stage, Ouyang et al. MobiSys 2023; ModalityMirror's phase 1, Feng
et al. 2024): one encoder per modality, each averaged only over the clients that hold that modality.

The model's arrays are named with a prefix per modality (``image.`` / ``audio.`` by default); an array with
no modality prefix is shared (e.g. a fusion head). Per round and modality ``m``, with ``H_m`` the updates
whose metrics report ``num-{m}-examples`` > 0:

* ``w_m = sum_{k in H_m} n_k^m w_k^m / sum_{k in H_m} n_k^m`` for the arrays of ``m``'s encoder;
* ``H_m`` empty: ``m``'s arrays stay the global model's (nobody trained them this round);
* shared arrays: the plain weighted mean over every update, with the update's own weight.

Why not FedAvg over all clients: a client without modality ``m`` returns ``m``'s encoder unchanged, and
averaging that copy in drags the trained encoder back towards the old one by the share of clients that lack
the modality.

The per-modality weight is ``min(n_k^m, weight_k)``: the reply filter caps each update's overall weight
(``strategies.weight_cap``); the client's own per-modality count must not undo that cap. The counts' names
are the ones the local training step already reports (``ssl_method.local_training``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from flwr.app import ArrayRecord

from app_config.modalities import AUDIO, IMAGE
from app_config.numbers import real_number
from strategies.aggregation_rule import AggregationRule, ClientUpdate, RoundMetrics
from strategies.streaming import StreamingSum

DEFAULT_PREFIXES: dict[str, str] = {IMAGE: "image.", AUDIO: "audio."}


def modality_weight_key(modality: str) -> str:
    """The train metric that counts a client's examples of ``modality``."""
    return f"num-{modality}-examples"


def check_prefixes(prefixes: Mapping[str, str]) -> dict[str, str]:
    """``prefixes`` as a dict, or a one-line ValueError: non-empty, distinct, none the start of another."""
    if not prefixes:
        raise ValueError("modality-wise mean: needs at least one modality prefix")
    out = dict(prefixes)
    for modality, prefix in out.items():
        if not isinstance(modality, str) or not modality or not isinstance(prefix, str) or not prefix:
            raise ValueError(f"modality-wise mean: modality and prefix must be non-empty strings, got "
                             f"{modality!r}: {prefix!r}")
    for modality, prefix in out.items():
        for other, other_prefix in out.items():
            if other != modality and other_prefix.startswith(prefix):
                raise ValueError(f"modality-wise mean: prefix {prefix!r} ({modality}) also starts "
                                 f"{other_prefix!r} ({other}): an array could belong to both")
    return out


class ModalityWiseMean(AggregationRule):
    """Each modality's arrays averaged over the clients holding it; shared arrays over all; no state."""

    name = "modality-wise"

    def __init__(self, prefixes: Mapping[str, str] | None = None) -> None:
        self.prefixes = check_prefixes(DEFAULT_PREFIXES if prefixes is None else prefixes)
        self.required_metrics = tuple(modality_weight_key(m) for m in self.prefixes)

    def describe(self) -> str:
        listed = ", ".join(f"{m} {p!r}" for m, p in self.prefixes.items())
        return f"modality-wise FedAvg ({listed}; other arrays shared)"

    def modality_of(self, name: str) -> str | None:
        """The modality whose encoder holds array ``name``; None for a shared array."""
        return next((m for m, prefix in self.prefixes.items() if name.startswith(prefix)), None)

    def modality_weight(self, update: ClientUpdate, modality: str) -> float:
        """``min(n_k^m, weight_k)``; 0 when the client lacks the modality (or reports no usable count)."""
        count = real_number(update.metrics.get(modality_weight_key(modality)))
        return min(count, update.weight) if count is not None and count > 0 else 0.0

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        if not updates:
            raise ValueError("modality-wise mean: nothing to aggregate")
        names = list(global_model.keys() if global_model is not None else updates[0].arrays.keys())
        if any(set(update.arrays.keys()) != set(names) for update in updates):
            raise ValueError("modality-wise mean: every update must hold the global model's array names")
        groups: dict[str | None, list[str]] = {}
        for name in names:
            groups.setdefault(self.modality_of(name), []).append(name)
        merged: dict[str | None, ArrayRecord] = {}
        metrics: RoundMetrics = {}
        for group, group_names in groups.items():
            if group is None:
                weights = [update.weight for update in updates]
            else:
                weights = [self.modality_weight(update, group) for update in updates]
                metrics[f"modality-wise-clients-{group}"] = sum(w > 0 for w in weights)
            merged[group] = self.group_mean(group, group_names, global_model, updates, weights)
        out = ArrayRecord()
        for name in names:  # the global model's order
            out[name] = merged[self.modality_of(name)][name]
        return out, metrics

    @staticmethod
    def group_mean(group: str | None, names: list[str], global_model: ArrayRecord | None,
                   updates: list[ClientUpdate], weights: list[float]) -> ArrayRecord:
        """The weighted mean of arrays ``names`` over the updates of positive weight; the global arrays when
        there are none."""
        if math.fsum(weights) <= 0:
            if global_model is None:
                raise ValueError(f"modality-wise mean: no update holds {group or 'the shared arrays'} and "
                                 "there is no global model to keep")
            return ArrayRecord({name: global_model[name] for name in names})
        total = StreamingSum()
        for update, weight in zip(updates, weights, strict=True):
            if weight > 0:
                total.add(ArrayRecord({name: update.arrays[name] for name in names}), weight)
        return total.finish(math.fsum(weights))
