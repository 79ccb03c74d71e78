"""The registered strategies: Flower's own, plus reply filtering and streaming means.

Each class puts :class:`~strategies.reply_filter.ReplyFilter` first (bad
replies are dropped and counted before anything is averaged) and, for the
strategies that build on FedAvg's weighted mean, :class:`StreamingFedAvg`
after the Flower class, so the mean is streamed while the server-side formula
(FedProx's ``proximal-mu``, FedAvgM's momentum, FedOpt's moments) is Flower's
code; :class:`~strategies.finite_state.FiniteServerState` before FedAvgM and the FedOpt family keeps their
server state finite. FedMedian and FedTrimmedAvg aggregate by their own coordinate-wise rules,
and the Byzantine-robust Krum, MultiKrum and Bulyan by their own selection
rules; they are used as Flower ships them. Every class ends with
:class:`~strategies.seeded_sampling.SeededSampling`, so node sampling draws from
the strategy's own seeded RNG, not from the global ``random`` module.

Each class names its server-side state in ``state_attributes`` (the attributes holding arrays that a round
changes and a resumed run must restore); the checkpoint (``server_app.checkpoint``) saves and restores those
and nothing else, so it needs no list of its own.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)

from strategies.fedvssl import FedVSSL
from strategies.finite_state import FiniteServerState
from strategies.ldawa import LDAWA
from strategies.reply_filter import ReplyFilter
from strategies.seeded_sampling import SeededSampling
from strategies.streaming import StreamingFedAvg


class RobustFedAvg(ReplyFilter, StreamingFedAvg, SeededSampling):
    """FedAvg (McMahan et al.): ``sum n_k w_k / sum n_k``."""

    state_attributes = ()


class RobustLDAWA(ReplyFilter, LDAWA, SeededSampling):
    """L-DAWA as in the reference (see ``strategies.ldawa``)."""

    state_attributes = ("_global",)  # the previous global model the layer cosines are measured against


class RobustFedVSSL(ReplyFilter, FedVSSL, SeededSampling):
    """FedVSSL (Rehman et al. 2022): loss-mixed FedAvg, optionally averaged with the previous model (SWA)."""

    state_attributes = ()


class RobustFedProx(ReplyFilter, FedProx, StreamingFedAvg, SeededSampling):
    """FedProx: FedAvg on the server; clients add ``(mu/2)||w - w_global||^2``."""

    state_attributes = ()


class RobustFedAvgM(ReplyFilter, FiniteServerState, FedAvgM, StreamingFedAvg, SeededSampling):
    """FedAvgM: server momentum on the pseudo-gradient ``w_global - FedAvg``."""

    state_attributes = ("current_arrays", "momentum_vector")


class RobustFedAdam(ReplyFilter, FiniteServerState, FedAdam, StreamingFedAvg, SeededSampling):
    """FedAdam (Reddi et al.): Adam on the pseudo-gradient ``FedAvg - w_global``."""

    state_attributes = ("current_arrays", "m_t", "v_t")


class RobustFedYogi(ReplyFilter, FiniteServerState, FedYogi, StreamingFedAvg, SeededSampling):
    """FedYogi (Reddi et al.)."""

    state_attributes = ("current_arrays", "m_t", "v_t")


class RobustFedAdagrad(ReplyFilter, FiniteServerState, FedAdagrad, StreamingFedAvg, SeededSampling):
    """FedAdagrad (Reddi et al.)."""

    state_attributes = ("current_arrays", "m_t", "v_t")


class RobustFedMedian(ReplyFilter, FedMedian, SeededSampling):
    """Coordinate-wise median of the client weights."""

    state_attributes = ()


class RobustFedTrimmedAvg(ReplyFilter, FedTrimmedAvg, SeededSampling):
    """Coordinate-wise mean after cutting a fraction ``beta`` from each tail."""

    state_attributes = ()


class RobustKrum(ReplyFilter, Krum, SeededSampling):
    """Krum (Blanchard et al. 2017): the one reply with the smallest sum of squared distances
    to its ``n - f - 2`` nearest other replies (``f`` = ``num_malicious_nodes``)."""

    state_attributes = ()


class RobustMultiKrum(ReplyFilter, MultiKrum, SeededSampling):
    """MultiKrum: the data-size-weighted mean of the ``num_nodes_to_select`` replies with the
    smallest Krum scores."""

    state_attributes = ()


class RobustBulyan(ReplyFilter, Bulyan, SeededSampling):
    """Bulyan (El Mhamdi et al. 2018): MultiKrum selects ``theta = n - 2f`` replies, then each
    coordinate is the mean of the ``beta = theta - 2f`` selected values nearest the coordinate's
    median. Needs ``n >= 4f + 3`` good replies, else the round keeps the previous model."""

    state_attributes = ()
