"""L-DAWA: layer-wise divergence-aware weight aggregation (Rehman et al.).

For client k and every parameter tensor l with at least one dimension,
``delta_k^l = <w_k^l, w_g^l> / (||w_k^l|| ||w_g^l||)`` -- the cosine between the
client's layer and the *previous global* layer -- clipped to at most 1. The new
global layer is the uniform mean ``(1/K) sum_k delta_k^l w_k^l``: no data-size
weights, no renormalisation by the sum of deltas. 0-dim tensors (e.g. BN's
``num_batches_tracked``) are averaged unscaled; a client layer of norm 0 is left
unscaled, as in the reference implementation (``L-DAWA-Agg.py``).

One deviation, documented: where the previous global layer has norm 0 (e.g.
zero-initialised BN biases in round 1) the reference divides by zero and yields
NaN; here the cosine is taken as 1 (plain averaging of that layer).

The first ``warmup_rounds`` rounds use data-size-weighted FedAvg, as the
reference's training scripts do.

Options beyond the reference, both off by default (run-config keys):

* ``ldawa-weighting`` (``weighting=True``): weight client k by its data size,
  ``sum_k p_k delta_k^l w_k^l`` with ``p_k = n_k / sum_j n_j`` instead of ``1/K``
  (0-dim tensors then use the same ``p_k``).
* ``ldawa-normalise`` (``normalise=True``): divide by the (weighted) sum of the
  deltas instead of by ``K`` (or ``sum n_k``), ``sum_k c_k delta_k^l w_k^l /
  sum_k c_k delta_k^l`` with ``c_k`` = 1 or ``n_k``, so each layer is a convex
  combination of the client layers re-weighted by their cosines rather than
  shrunk by them. Should that sum not be positive (only possible with
  opposed client layers) the layer falls back to dividing by ``sum_k c_k``.

The aggregation streams: the replies are visited once, one at a time, and the
working memory is the previous global model, one accumulator and one client
layer (see ``strategies.streaming``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord

from strategies.aggregation_rule import AggregationRule, ClientUpdate, RoundMetrics, as_numpy
from strategies.streaming import StreamingSum
from strategies.weighted_mean import weighted_mean

NORMALISE_EPS = 1e-12


CHUNK = 8192  # elements per float64 block: cache-sized, no full-layer float64 copies


def _dot64(a: np.ndarray, b: np.ndarray) -> float:
    """``<a, b>`` accumulated in float64, converting one cache-sized block at a time."""
    a, b = a.ravel(), b.ravel()
    total = 0.0
    for i in range(0, a.size, CHUNK):
        total += float(np.dot(a[i:i + CHUNK].astype(np.float64), b[i:i + CHUNK].astype(np.float64)))
    return total


def layer_cosine(client: np.ndarray, global_: np.ndarray, global_sq: float | None = None) -> float:
    """Clipped cosine between a client layer and the previous global layer.

    ``global_sq`` (``||global_||^2``) may be passed to avoid recomputing it per client.
    """
    gg = _dot64(global_, global_) if global_sq is None else global_sq
    cc = _dot64(client, client)
    if cc == 0 or gg == 0:
        return 1.0
    return min(_dot64(client, global_) / (np.sqrt(cc) * np.sqrt(gg)), 1.0)


def layer_group(name: str) -> str:
    """Coarse group of a parameter name for reporting (encoder stage / projector)."""
    parts = name.split(".")
    if parts[0] == "encoder" and len(parts) > 1:
        return "encoder." + parts[1]
    return parts[0]


class LDAWASum:
    """Streaming L-DAWA: ``add`` one client at a time, then ``finish``.

    ``global_`` maps names to the previous global arrays (an ArrayRecord or a
    dict of numpy arrays); the result has the same names, shapes and dtypes.
    """

    def __init__(self, global_: ArrayRecord | Mapping[str, np.ndarray], *,
                 weighting: bool = False, normalise: bool = False) -> None:
        self.global_ = as_numpy(global_)
        self._global_sq = {n: _dot64(g, g) for n, g in self.global_.items() if g.ndim >= 1}
        self.weighting, self.normalise = weighting, normalise
        self._sum = StreamingSum()
        self._coef_sum = 0.0
        self._delta_sum = {n: 0.0 for n, g in self.global_.items() if g.ndim >= 1}  # sum_k c_k delta_k^l
        self.deltas: dict[str, list[float]] = {n: [] for n in self._delta_sum}  # per layer, per client
        self.client_mean_deltas: list[float] = []

    def add(self, record: ArrayRecord | Mapping[str, np.ndarray], num_examples: float = 1.0) -> None:
        if set(record.keys()) != set(self.global_):
            raise ValueError("client arrays must have the same names as the global model")
        coef = float(num_examples) if self.weighting else 1.0
        mine: list[float] = []

        def scale(name: str, x: np.ndarray) -> float:
            g = self.global_[name]
            if x.shape != g.shape:
                raise ValueError(f"array {name!r}: shape {x.shape} differs from the global {g.shape}")
            if x.ndim == 0:
                return 1.0  # 0-dim tensors are averaged unscaled
            d = layer_cosine(x, g, self._global_sq[name])
            self.deltas[name].append(d)
            self._delta_sum[name] += coef * d
            mine.append(d)
            return d

        self._sum.add(record, coef, scale)
        self._coef_sum += coef
        if mine:
            self.client_mean_deltas.append(float(np.mean(mine)))

    def finish(self) -> ArrayRecord:
        if not self._sum.count:
            raise ValueError("L-DAWA needs at least one client")
        if self._coef_sum <= 0:
            raise ValueError("L-DAWA: the clients' data sizes sum to zero")
        dens = {}
        for name in self.global_:
            den = self._coef_sum
            if self.normalise and name in self._delta_sum and self._delta_sum[name] > NORMALISE_EPS:
                den = self._delta_sum[name]
            dens[name] = den
        merged = self._sum.finish(dens)
        # Same order as the global model.
        return ArrayRecord({name: merged[name] for name in self.global_})

    def metrics(self) -> dict[str, float]:
        """Mean delta per layer group, overall, and the client-to-global divergence."""
        out: dict[str, float] = {}
        groups: dict[str, list[float]] = {}
        for name, ds in self.deltas.items():
            groups.setdefault(layer_group(name), []).extend(ds)
        for group, ds in sorted(groups.items()):
            if ds:
                out[f"ldawa-delta/{group}"] = float(np.mean(ds))
        all_deltas = [d for ds in self.deltas.values() for d in ds]
        if all_deltas:
            out["ldawa-delta-mean"] = float(np.mean(all_deltas))
            out["ldawa-delta-min"] = float(np.min(all_deltas))
            out["ldawa-divergence"] = float(1.0 - np.mean(all_deltas))
        if self.client_mean_deltas:
            out["ldawa-divergence-max-client"] = float(1.0 - min(self.client_mean_deltas))
        return out


def ldawa_aggregate(
    clients: Iterable[Mapping[str, np.ndarray] | ArrayRecord],
    global_: Mapping[str, np.ndarray] | ArrayRecord,
    num_examples: Iterable[float] | None = None,
    *,
    weighting: bool = False,
    normalise: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """Aggregate client weights; also return each layer's per-client deltas.

    ``clients`` may be a generator: each client is visited once and released.
    ``num_examples`` is only used with ``weighting=True``.
    """
    agg = LDAWASum(global_, weighting=weighting, normalise=normalise)
    sizes = iter(num_examples) if num_examples is not None else None
    for client in clients:
        agg.add(client, next(sizes) if sizes is not None else 1.0)
    merged = agg.finish()
    return {k: a.numpy() for k, a in merged.items()}, {k: v for k, v in agg.deltas.items() if v}


class LDAWA(AggregationRule):
    """L-DAWA against the model sent this round; data-size FedAvg for the first ``warmup_rounds`` rounds."""

    name = "ldawa"

    def __init__(self, warmup_rounds: int = 0, weighting: bool = False, normalise: bool = False) -> None:
        if warmup_rounds < 0:
            raise ValueError("ldawa-warmup-rounds: must be >= 0")
        self.warmup_rounds, self.weighting, self.normalise = warmup_rounds, weighting, normalise

    def describe(self) -> str:
        return (f"L-DAWA (FedAvg for {self.warmup_rounds} warm-up rounds; data-size weighting {self.weighting}, "
                f"normalise by the sum of deltas {self.normalise})")

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        if server_round <= self.warmup_rounds or global_model is None:
            return weighted_mean(updates), {}
        agg = LDAWASum(global_model, weighting=self.weighting, normalise=self.normalise)
        for update in updates:
            agg.add(update.arrays, update.weight)
        return agg.finish(), dict(agg.metrics())
