"""CreamFL (Yu et al., ICLR 2023): its arithmetic on public-set representations, without Flower.

Clients send L2-normalised representations of a shared public set instead of weights. The server
weighs each client's representation of each public sample by how well it retrieves that sample's
global representation in the *other* modality (:func:`aggregate_representations`) and distils its own
model towards the weighted sum (:func:`distillation_loss`). Clients regularise local training with an
inter-modal contrast against the global bank of the other modality (:func:`inter_modal_loss`) and a
MOON-style intra-modal contrast (:func:`intra_modal_loss`), summed by :func:`client_regulariser`.

Each formula follows the authors' code (FLAIR-THU/CreamFL): ``src/algorithms/MMFL.py`` (ensemble and
distillation), ``src/algorithms/ClientTrainer.py`` and ``MMClientTrainer.py`` (client regularisers),
``src/main.py`` (defaults). Their representations are L2-normalised by the models themselves
(``resnet_client.py``, ``language_model.py``, ``image_encoder.py``, ``pcme.py``); here the functions
normalise their inputs, a no-op on theirs, so the scores keep the intended scale whatever a caller sends.
The one departure: where their code forms an N x N (server) or B x N (client) matrix in one piece,
these functions walk the bank in row chunks, with the same result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

TAU = 0.5  # temperature of both client contrasts (hard-coded 0.5 in the authors' trainers)
REGULARISER_WEIGHT = 0.5  # --interintra_weight
KD_WEIGHT = 0.3  # --kd_weight
CHUNK_SIZE = 512  # rows per block: a block is CHUNK_SIZE x N logits (200 MB at N = 100k, float32)

ArrayLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class CreamFLSettings:
    """The method's settings, checked once; defaults are the paper's and the authors' code's."""

    tau: float = TAU
    regulariser_weight: float = REGULARISER_WEIGHT
    kd_weight: float = KD_WEIGHT
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        _check_tau(self.tau)
        _check_weight("regulariser_weight", self.regulariser_weight)
        _check_weight("kd_weight", self.kd_weight)
        _check_chunk(self.chunk_size)


class RepresentationEnsemble(NamedTuple):
    """The server's ensemble of one modality: aggregate (N, d), weights and scores (C, N)."""

    aggregate: torch.Tensor
    weights: torch.Tensor
    scores: torch.Tensor


class RoundTraffic(NamedTuple):
    """Bytes of one CreamFL round: global banks down, client representations up."""

    downlink_bytes: int
    uplink_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.downlink_bytes + self.uplink_bytes


def aggregate_representations(client_reps: ArrayLike | Sequence[ArrayLike], other_global: ArrayLike,
                              chunk_size: int = CHUNK_SIZE) -> RepresentationEnsemble:
    """Global-local cross-modal ensemble of C clients' representations of the N public samples.

    ``s_c(i) = <I_c(i), T(i)> - log sum_j exp <I_c(i), T(j)>`` (no temperature; ``T``: the global
    model's representations of the other modality, the bank computed this round before the clients
    trained and sent to them), ``w_c(i) = softmax_c s_c(i)``, aggregate
    ``sum_c w_c(i) I_c(i)``, not renormalised: all as in ``MMFL.distill``'s ``aggregation``. As the
    vectors are unit-norm, the scores of two clients differ by less than 4, so one client never
    gets more than e^4 times another's weight: the ensemble mixes, it does not select.
    Rows are processed ``chunk_size`` at a time, one client at a time, so the largest temporary
    is ``chunk_size x N`` (the authors' code forms N x N: 10 GB at N = 50k).
    """
    _check_chunk(chunk_size)
    local = _client_stack(client_reps)
    other = _matrix("other_global", other_global)
    n_clients, n, d = local.shape
    if other.shape != (n, d):
        raise ValueError(f"other_global: shape {tuple(other.shape)} does not match the clients' ({n}, {d})")
    with torch.no_grad():
        local = F.normalize(_wide(local.detach()), dim=2)
        other = F.normalize(other.detach().to(device=local.device, dtype=local.dtype), dim=1)
        scores = torch.empty(n_clients, n, dtype=local.dtype, device=local.device)
        for c in range(n_clients):
            for start in range(0, n, chunk_size):
                rows = local[c, start:start + chunk_size]
                positive = (rows * other[start:start + chunk_size]).sum(dim=1)
                scores[c, start:start + chunk_size] = positive - torch.logsumexp(_logits(rows, other), dim=1)
        weights = torch.softmax(scores, dim=0)
        aggregate = (weights.unsqueeze(2) * local).sum(dim=0)
    return RepresentationEnsemble(aggregate, weights, scores)


def distillation_loss(server_rep: torch.Tensor, target: ArrayLike, kd_weight: float = KD_WEIGHT) -> torch.Tensor:
    """``kd_weight * mean((normalise(server_rep) - target)^2)`` over all elements of the batch.

    The authors use ``nn.MSELoss()`` (reduction ``mean``: over rows *and* dimensions, not summed
    per row) on the server model's L2-normalised output and the aggregate's rows of the batch,
    times ``kd_weight`` per modality (``MMFL.distill``); a caller sums the modalities' terms.
    The target is a constant. The authors distil after the server's own pass over the public pairs.
    """
    _check_weight("kd_weight", kd_weight)
    rep = _matrix("server_rep", server_rep)
    goal = _matrix("target", target).detach()
    if rep.shape != goal.shape:
        raise ValueError(f"target: shape {tuple(goal.shape)} does not match server_rep's {tuple(rep.shape)}")
    rep = F.normalize(_wide(rep), dim=1)
    return kd_weight * F.mse_loss(rep, goal.to(device=rep.device, dtype=rep.dtype))


def inter_modal_loss(local: torch.Tensor, indices: ArrayLike, other_global: ArrayLike, tau: float = TAU,
                     chunk_size: int = CHUNK_SIZE) -> torch.Tensor:
    """Mean over the batch of ``CE(f_i . G'^T / tau, idx_i)``: retrieve sample ``idx_i`` among ALL N global
    representations ``G'`` of the other modality (``ClientTrainer.tra``, ``logits_inter``).

    ``indices``: the batch's positions in the public set. Adaptation: the log-sum-exp over the bank is
    accumulated ``chunk_size`` rows of ``G'`` at a time with its own backward, so neither the forward
    nor the saved state holds the B x N logits; value and gradient equal the one-piece form.
    The bank is a constant, as in the authors' code.
    """
    _check_tau(tau)
    _check_chunk(chunk_size)
    f = _matrix("local", local)
    bank = _matrix("other_global", other_global).detach()
    idx = _indices(indices, f.shape[0], bank.shape[0])
    if bank.shape[1] != f.shape[1]:
        raise ValueError(f"other_global: dimension {bank.shape[1]} does not match local's {f.shape[1]}")
    f = F.normalize(_wide(f), dim=1)
    bank = F.normalize(bank.to(device=f.device, dtype=f.dtype), dim=1)
    queries = f / tau
    lse = _ChunkedLogSumExp.apply(queries, bank, chunk_size)
    positive = (queries * bank[idx.to(f.device)]).sum(dim=1)
    return (lse - positive).mean()


def intra_modal_loss(local: torch.Tensor, global_same: ArrayLike, old_local: ArrayLike,
                     tau: float = TAU) -> torch.Tensor:
    """MOON-style ``CE([<f_i, G_i>, <f_i, f_i^old>] / tau, 0)``, mean over the batch (``ClientTrainer.tra``).

    ``G_i``: the global representation of the same sample in the same modality (positive);
    ``f_i^old``: the client's model as it was before this round's local training (negative, no gradient).
    """
    _check_tau(tau)
    f = _matrix("local", local)
    positive = _matrix("global_same", global_same).detach()
    negative = _matrix("old_local", old_local).detach()
    for name, other in (("global_same", positive), ("old_local", negative)):
        if other.shape != f.shape:
            raise ValueError(f"{name}: shape {tuple(other.shape)} does not match local's {tuple(f.shape)}")
    f = F.normalize(_wide(f), dim=1)
    positive = F.normalize(positive.to(device=f.device, dtype=f.dtype), dim=1)
    negative = F.normalize(negative.to(device=f.device, dtype=f.dtype), dim=1)
    logits = torch.stack([(f * positive).sum(dim=1), (f * negative).sum(dim=1)], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(f.shape[0], dtype=torch.long, device=f.device))


def client_regulariser(intra: Sequence[torch.Tensor], inter: Sequence[torch.Tensor],
                       weight: float = REGULARISER_WEIGHT) -> torch.Tensor:
    """``weight * (mean of the intra terms + sum of the inter terms)``, one term per held modality.

    One modality: ``weight * (intra + inter)`` (``ClientTrainer``). Two: the authors' multimodal
    client takes one cross-entropy over both modalities' intra logits (their mean, for equal
    batches) but adds the two inter terms (``MMClientTrainer``); kept as written.
    Their optional ``--loss_scale`` rescaling (off by default) is not provided.
    """
    _check_weight("weight", weight)
    if len(intra) != len(inter) or not intra:
        raise ValueError("client_regulariser: needs one intra and one inter term per held modality")
    return weight * (torch.stack(list(intra)).mean() + torch.stack(list(inter)).sum())


def round_traffic(n_public: int, dim: int, held_modalities: Sequence[int], n_modalities: int = 2,
                  bytes_per_value: int = 4) -> RoundTraffic:
    """Bytes of one round for the sampled clients, each holding ``held_modalities[k]`` modalities.

    Down: every client gets the global bank of each modality (``n_modalities * N * d`` values: the
    intra contrast needs its own modality's, the inter contrast the other's). Up: ``N * d`` per
    held modality. The public set itself, shipped once, is not counted.
    """
    for name, value in (("n_public", n_public), ("dim", dim), ("n_modalities", n_modalities),
                        ("bytes_per_value", bytes_per_value)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"round_traffic: {name} must be an integer >= 1, got {value!r}")
    for held in held_modalities:
        if isinstance(held, bool) or not isinstance(held, int) or not 1 <= held <= n_modalities:
            raise ValueError(f"round_traffic: a client holds 1..{n_modalities} modalities, got {held!r}")
    bank = n_public * dim * bytes_per_value
    return RoundTraffic(downlink_bytes=len(held_modalities) * n_modalities * bank,
                        uplink_bytes=sum(held_modalities) * bank)


class _ChunkedLogSumExp(torch.autograd.Function):
    """Row-wise ``log sum_j exp(q . b_j)`` over a bank walked in chunks; its gradient in q is the
    softmax-weighted mean of the bank, accumulated in the same pass (online softmax)."""

    @staticmethod
    def forward(ctx: Any, queries: torch.Tensor, bank: torch.Tensor, chunk_size: int) -> torch.Tensor:
        top = torch.full((queries.shape[0],), -math.inf, dtype=queries.dtype, device=queries.device)
        total = torch.zeros_like(top)
        mean = torch.zeros_like(queries)
        for start in range(0, bank.shape[0], chunk_size):
            block = bank[start:start + chunk_size]
            logits = _logits(queries, block)
            new_top = torch.maximum(top, logits.max(dim=1).values)
            rescale = torch.exp(top - new_top)
            exp = torch.exp(logits - new_top.unsqueeze(1))
            total = total * rescale + exp.sum(dim=1)
            mean = mean * rescale.unsqueeze(1) + exp @ block
            top = new_top
        ctx.save_for_backward(mean / total.unsqueeze(1))
        return top + torch.log(total)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (softmax_mean,) = ctx.saved_tensors
        return grad.unsqueeze(1) * softmax_mean, None, None


def _logits(rows: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """One block of dot products, rows x bank (the only place a block of logits is formed)."""
    return rows @ bank.t()


def _client_stack(client_reps: ArrayLike | Sequence[ArrayLike]) -> torch.Tensor:
    """Clients' representations as one (C, N, d) tensor, every client checked for shape and finiteness."""
    if isinstance(client_reps, torch.Tensor | np.ndarray):
        stack = _tensor("client_reps", client_reps)
        if stack.ndim != 3 or 0 in stack.shape:
            raise ValueError(f"client_reps: expected a non-empty (C, N, d) array, got shape {tuple(stack.shape)}")
        return stack
    if len(client_reps) == 0:
        raise ValueError("client_reps: no client representations")
    mats = [_matrix(f"client_reps[{c}]", rep) for c, rep in enumerate(client_reps)]
    for c, mat in enumerate(mats):
        if mat.shape != mats[0].shape:
            raise ValueError(f"client_reps[{c}]: shape {tuple(mat.shape)} is not client 0's {tuple(mats[0].shape)}")
    dtype = mats[0].dtype
    for mat in mats[1:]:
        dtype = torch.promote_types(dtype, mat.dtype)
    return torch.stack([mat.to(dtype) for mat in mats])


def _matrix(name: str, value: ArrayLike) -> torch.Tensor:
    """A non-empty, finite (rows, d) floating tensor."""
    mat = _tensor(name, value)
    if mat.ndim != 2 or 0 in mat.shape:
        raise ValueError(f"{name}: expected a non-empty (rows, d) array, got shape {tuple(mat.shape)}")
    return mat


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    """float64 stays float64; anything else is computed in float32 (differentiably)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _tensor(name: str, value: ArrayLike) -> torch.Tensor:
    """``value`` as a floating tensor (integers become float32); non-finite values refused."""
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    if not torch.is_floating_point(tensor):
        tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor.detach()).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return tensor


def _indices(indices: ArrayLike, batch: int, n_bank: int) -> torch.Tensor:
    """The batch's public-set positions as a long tensor, one per row, each in [0, n_bank)."""
    idx = indices if isinstance(indices, torch.Tensor) else torch.from_numpy(np.asarray(indices))
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool or idx.shape != (batch,):
        raise ValueError(f"indices: expected {batch} integer positions, got dtype {idx.dtype} shape {tuple(idx.shape)}")
    if batch and (int(idx.min()) < 0 or int(idx.max()) >= n_bank):
        raise ValueError(f"indices: positions must lie in [0, {n_bank})")
    return idx.long()


def _check_tau(tau: float) -> None:
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")


def _check_weight(name: str, weight: float) -> None:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {weight!r}")


def _check_chunk(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
