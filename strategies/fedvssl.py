"""FedVSSL aggregation (Rehman, Gao, Shen, Porto de Gusmao, Lane: "Federated Self-supervised Learning for
Video Understanding", ECCV Workshops 2022; the authors' code: yasar-rehman/FEDVSSL,
``reproduce_papers/fedssl/main_cam_st_theta_b_mixed_+SWA_wo_mement.py``).

Per round, with client weights ``w_k``, data sizes ``n_k`` and mean local losses ``L_k``:

* ``theta_avg  = sum_k n_k w_k / sum_k n_k`` (FedAvg);
* ``theta_loss = sum_k e^{-L_k} w_k / sum_k e^{-L_k}`` (clients that fit their data better weigh more; as in
  the authors' code no data-size factor enters this mean);
* ``theta = alpha theta_loss + (1 - alpha) theta_avg`` (``alpha`` = 0.9, the paper's best mix);
* with ``beta`` = 1 ("SWA", from round 2 on, as the authors' code only averages once a previous round's
  global model exists): ``theta = (theta + theta_prev) / 2`` with the previous global model.

Both means are linear in the client weights, so the round streams in one pass with one coefficient per client,
``c_k = (1 - s) (alpha e^{-L_k} / sum_j e^{-L_j} + (1 - alpha) n_k / sum_j n_j)``, plus ``s theta_prev``
(``s`` = 1/2 with SWA, else 0): the output holds exactly the global model's arrays, names and dtypes.

The loss ``L_k``: the authors' clients trained one objective and sent ``exp(-mean loss)``. Here a client may
sum an image and an audio NT-Xent, so ``fedvssl-loss`` says which number is ``L_k``: ``modality-mean``
(default: the mean over the modalities the client trained of each one's mean loss, so an audio-visual client
is not down-weighted for holding two modalities; every client of a run shares the batch size, which sets
NT-Xent's scale ``ln(2B - 1)``) or ``sum`` (the client's summed loss, the authors' rule applied literally).
``e^{-L_k}`` is computed as ``e^{-(L_k - min_j L_j)}``, which the normalisation leaves unchanged.

The other half of FedVSSL, *partial weight updating* (clients load only the encoder from the global model and
keep their own projection head across rounds), is the ClientApp's (``fedvssl-partial-update``,
``client_app.partial_update``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from flwr.app import ArrayRecord

from app_config.modalities import MODALITIES
from app_config.numbers import real_number
from strategies.aggregation_rule import AggregationRule, ClientUpdate, RoundMetrics
from strategies.streaming import StreamingSum

LOSS_REDUCTIONS = ("modality-mean", "sum")
LOSS_KEYS = tuple(f"loss-{m}" for m in MODALITIES) + tuple(f"num-{m}-examples" for m in MODALITIES)


def client_loss(metrics: Mapping, reduction: str = "modality-mean") -> float:
    """``L_k`` of one client's train metrics: its modalities' mean losses, averaged (or summed)."""
    losses = [real_number(metrics[f"loss-{m}"]) or 0.0 for m in MODALITIES
              if (real_number(metrics[f"num-{m}-examples"]) or 0.0) > 0]
    if not losses:
        raise ValueError("a FedVSSL reply reports no trained modality")
    return math.fsum(losses) / (len(losses) if reduction == "modality-mean" else 1)


def mixing_coefficients(losses: Sequence[float], sizes: Sequence[float], alpha: float,
                        swa_share: float) -> list[float]:
    """``c_k`` of the module docstring; with ``swa_share`` the remainder ``1 - sum c_k`` goes to the old model."""
    if not losses or len(losses) != len(sizes):
        raise ValueError("one loss and one data size per client")
    if not 0 <= alpha <= 1 or not 0 <= swa_share < 1:
        raise ValueError("alpha must be in [0, 1] and the SWA share in [0, 1)")
    low = min(losses)
    loss_weights = [math.exp(-(loss - low)) for loss in losses]  # the largest is 1: no underflow to 0
    loss_total, size_total = math.fsum(loss_weights), math.fsum(sizes)
    if size_total <= 0:
        raise ValueError("the clients' data sizes sum to zero")
    return [(1 - swa_share) * (alpha * lw / loss_total + (1 - alpha) * n / size_total)
            for lw, n in zip(loss_weights, sizes)]


def fedvssl_aggregate(clients: Iterable[ArrayRecord], coefficients: Sequence[float],
                      previous: ArrayRecord | None, swa_share: float) -> ArrayRecord:
    """``sum_k c_k w_k + s theta_prev`` in one streaming pass (the coefficients already sum to ``1 - s``)."""
    total = StreamingSum()
    for record, coefficient in zip(clients, coefficients, strict=True):
        total.add(record, coefficient)
    if swa_share:
        if previous is None:
            raise ValueError("SWA needs the previous global model")
        total.add(previous, swa_share)
    return total.finish(1.0)


class FedVSSL(AggregationRule):
    """FedVSSL's loss-mixed aggregate, optionally averaged with the model sent this round (SWA)."""

    name = "fedvssl"
    required_metrics = LOSS_KEYS  # screened with the other reply checks and carried to the rule

    def __init__(self, alpha: float = 0.9, swa: int = 0, loss_reduction: str = "modality-mean") -> None:
        if not 0 <= alpha <= 1:
            raise ValueError("fedvssl-alpha must be in [0, 1]")
        if swa not in (0, 1):
            raise ValueError("fedvssl-beta must be 0 or 1")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"fedvssl-loss: unknown value {loss_reduction!r}; valid: {', '.join(LOSS_REDUCTIONS)}")
        self.alpha, self.swa, self.loss_reduction = alpha, swa, loss_reduction

    def describe(self) -> str:
        return (f"FedVSSL (alpha, the loss-based share, {self.alpha:g}; beta, SWA with the previous model, "
                f"{self.swa}; loss {self.loss_reduction})")

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        losses = [client_loss(update.metrics, self.loss_reduction) for update in updates]
        swa_share = 0.5 if self.swa and server_round > 1 and global_model is not None else 0.0
        coefficients = mixing_coefficients(losses, [update.weight for update in updates], self.alpha, swa_share)
        arrays = fedvssl_aggregate((update.arrays for update in updates), coefficients, global_model, swa_share)
        return arrays, {"fedvssl-swa": int(swa_share > 0), "fedvssl-coefficient-max": max(coefficients),
                        "fedvssl-coefficient-min": min(coefficients)}
