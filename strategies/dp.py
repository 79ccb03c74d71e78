"""Differential privacy around any registered strategy: Flower's four DP wrappers.

The run-config key ``dp`` wraps the strategy chosen by ``strategy``:

================== =============================================== ==========================
``dp``             Flower wrapper                                  clipping happens
================== =============================================== ==========================
``none``           (no wrapper)                                    --
``server-fixed``   DifferentialPrivacyServerSideFixedClipping      on the server, norm fixed
``client-fixed``   DifferentialPrivacyClientSideFixedClipping      on the clients, norm fixed
``server-adaptive`` DifferentialPrivacyServerSideAdaptiveClipping  on the server, norm adapted
``client-adaptive`` DifferentialPrivacyClientSideAdaptiveClipping  on the clients, norm adapted
================== =============================================== ==========================

Parameters (run-config keys): ``dp-noise-multiplier`` (sigma >= 0; the noise
added to the aggregate has standard deviation ``sigma * C / m``),
``dp-clipping-norm`` (C > 0: the fixed norm, or the adaptive modes' initial
norm), ``dp-sampled-clients`` (m >= 0; 0 = ``min-train-nodes``, the fewest
clients a round aggregates, which errs towards more noise),
``dp-target-quantile`` (adaptive: the fraction of updates that should be
clipped, in [0, 1]), ``dp-clip-norm-lr`` (adaptive: the geometric update's
learning rate > 0) and ``dp-clipped-count-stddev`` (adaptive: the noise on
the count of clipped updates, >= 0; 0 = Flower's default ``m / 20``; with
noise it must exceed ``sigma / 2``, so small federations have to set it).

What the project adds around Flower's classes:

* the reply filter runs *before* clipping (``ReplyFilter`` first in the
  bases): Flower's wrappers skip a whole round when one reply is an error and
  crash on replies of other shapes; here those are dropped and counted and the
  good replies are clipped. The wrapped strategy then trusts them
  (``trusted_replies``) instead of checking them twice;
* clients are weighted equally (``uniform_weights``): the noise ``sigma C / m``
  is calibrated for a uniform mean of m clipped updates (Flower's privacy
  accounting requires it too); a data-size weight of ``p_k > 1/m`` would give
  client k ``p_k C`` of influence;
* clipping and noise act on float arrays only (:mod:`strategies.dp_clip`):
  BatchNorm step counters would otherwise dominate the update norm, and a zero
  update would divide by zero. The server-side wrappers' ``aggregate_train``
  is therefore Flower's with the clipping step replaced.

The client-side modes need the clipping mod on the ClientApp
(:func:`client_app.dp_clipping.dp_clipping_mod`), and the
client-adaptive mode drops replies without its ``norm_bit`` metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.serverapp.strategy.dp_fixed_clipping import validate_replies
from flwr.supercore.differential_privacy import KEY_NORM_BIT, compute_stdv

from app_config.run_config import RunConfig
from strategies.dp_clip import clip_update, noise_floats
from strategies.reply_filter import ReplyFilter

NONE = "none"
DP_MODES = (NONE, "server-fixed", "client-fixed", "server-adaptive", "client-adaptive")


class _FloatNoise:
    """Noise the aggregate's float arrays only (with Flower's stdv); mixed into Flower's DP wrappers,
    which set these attributes."""

    noise_multiplier: float
    clipping_norm: float
    num_sampled_clients: int

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        stdv = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        return noise_floats(aggregated_arrays, stdv)


def _clip_replies(replies: list[Message], reference: ArrayRecord, clipping_norm: float) -> int:
    """Clip each reply's float update (the replies are the filter's copies); return how many were clipped."""
    clipped = 0
    for reply in replies:
        (key, record), = reply.content.array_records.items()
        reply.content[key], was_clipped = clip_update(record, reference, clipping_norm)
        clipped += int(was_clipped)
    return clipped


class _ServerFixedClipping(_FloatNoise, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping ``aggregate_train`` with the float-only clipping step."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        event = self._pop_pending_event(server_round)
        if not validate_replies(replies, self.num_sampled_clients, strict=self.accountant is not None):
            return None, None
        self._validate_uniform_weights(replies)
        _clip_replies(replies, self.current_arrays, self.clipping_norm)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays:
            arrays = self._add_noise_to_aggregated_arrays(arrays)
            self._compose_release(event)
        return arrays, metrics


class _ServerAdaptiveClipping(_FloatNoise, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive-clipping ``aggregate_train`` with the float-only clipping step."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not validate_replies(replies, self.num_sampled_clients):
            return None, None
        clipped = _clip_replies(replies, self.current_arrays, self.clipping_norm)
        self._geometric_update(self._noisy_fraction(clipped, len(replies)))
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays:
            arrays = self._add_noise_to_aggregated_arrays(arrays)
        return arrays, metrics


class _DPFilter(ReplyFilter):
    """The reply filter of the DP wrappers: first in their bases, equal client weights."""

    uniform_weights = True


class DPServerFixed(_DPFilter, _ServerFixedClipping):
    """Central DP, updates clipped to a fixed norm on the server."""

    state_attributes = ("current_arrays",)


class DPServerAdaptive(_DPFilter, _ServerAdaptiveClipping):
    """Central DP, clipped on the server to a norm that tracks a quantile of the update norms."""

    state_attributes = ("current_arrays",)


class DPClientFixed(_DPFilter, _FloatNoise, DifferentialPrivacyClientSideFixedClipping):
    """Central DP, clients clip to a fixed norm (``dp_clipping_mod``); the server adds the noise."""

    state_attributes = ()


class DPClientAdaptive(_DPFilter, _FloatNoise, DifferentialPrivacyClientSideAdaptiveClipping):
    """Central DP, clients clip and report ``norm_bit``; the server adapts the norm and adds the noise."""

    state_attributes = ()

    required_metrics = (KEY_NORM_BIT,)


FIXED: dict[str, type[DPServerFixed] | type[DPClientFixed]] = {
    "server-fixed": DPServerFixed, "client-fixed": DPClientFixed}
ADAPTIVE: dict[str, type[DPServerAdaptive] | type[DPClientAdaptive]] = {
    "server-adaptive": DPServerAdaptive, "client-adaptive": DPClientAdaptive}
WRAPPERS = {**FIXED, **ADAPTIVE}


_DEFAULT = RunConfig()  # the defaults are RunConfig's


@dataclass(frozen=True)
class DPSettings:
    mode: str = _DEFAULT.dp
    noise_multiplier: float = _DEFAULT.dp_noise_multiplier
    clipping_norm: float = _DEFAULT.dp_clipping_norm
    sampled_clients: int = _DEFAULT.dp_sampled_clients
    target_quantile: float = _DEFAULT.dp_target_quantile
    clip_norm_lr: float = _DEFAULT.dp_clip_norm_lr
    clipped_count_stddev: float = _DEFAULT.dp_clipped_count_stddev

    def check(self) -> DPSettings:
        """Self, or a one-line ValueError naming the run-config key."""
        if self.mode not in DP_MODES:
            raise ValueError(f"dp: unknown value {self.mode!r}; valid: {', '.join(DP_MODES)}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"dp-noise-multiplier: must be >= 0, got {self.noise_multiplier!r}")
        if not (math.isfinite(self.clipping_norm) and self.clipping_norm > 0):
            raise ValueError(f"dp-clipping-norm: must be > 0, got {self.clipping_norm!r}")
        if isinstance(self.sampled_clients, bool) or not isinstance(self.sampled_clients, int) \
                or self.sampled_clients < 0:
            raise ValueError(f"dp-sampled-clients: must be an int >= 0 (0 = min-train-nodes), "
                             f"got {self.sampled_clients!r}")
        if not 0 <= self.target_quantile <= 1:
            raise ValueError(f"dp-target-quantile: must be in [0, 1], got {self.target_quantile!r}")
        if not (math.isfinite(self.clip_norm_lr) and self.clip_norm_lr > 0):
            raise ValueError(f"dp-clip-norm-lr: must be > 0, got {self.clip_norm_lr!r}")
        if not (math.isfinite(self.clipped_count_stddev) and self.clipped_count_stddev >= 0):
            raise ValueError(f"dp-clipped-count-stddev: must be >= 0 (0 = sampled clients / 20), "
                             f"got {self.clipped_count_stddev!r}")
        return self

    @classmethod
    def from_config(cls, config) -> DPSettings:
        """The ``dp*`` run-config keys of ``config``."""
        return cls(
            mode=config.dp, noise_multiplier=config.dp_noise_multiplier, clipping_norm=config.dp_clipping_norm,
            sampled_clients=config.dp_sampled_clients, target_quantile=config.dp_target_quantile,
            clip_norm_lr=config.dp_clip_norm_lr, clipped_count_stddev=config.dp_clipped_count_stddev,
        ).check()


def wrap_dp(strategy: Strategy, settings: DPSettings, min_train_nodes: int = 2) -> Strategy:
    """``strategy`` wrapped by the DP mode of ``settings`` (itself when the mode is ``none``)."""
    settings.check()
    if settings.mode == NONE:
        return strategy
    sampled = settings.sampled_clients or int(min_train_nodes)
    if isinstance(strategy, ReplyFilter):
        strategy.trusted_replies = True  # the wrapper's own filter checks the replies first
    if settings.mode in FIXED:
        return FIXED[settings.mode](strategy, settings.noise_multiplier, settings.clipping_norm, sampled)
    count_stddev = settings.clipped_count_stddev or None  # None: Flower's default, sampled / 20
    if settings.noise_multiplier > 0 and settings.noise_multiplier >= 2 * (count_stddev or sampled / 20):
        raise ValueError(f"dp-clipped-count-stddev: {settings.mode} with dp-noise-multiplier "
                         f"{settings.noise_multiplier} needs it above {settings.noise_multiplier / 2:g} "
                         f"(0 means sampled clients / 20 = {sampled / 20:g})")
    return ADAPTIVE[settings.mode](strategy, settings.noise_multiplier, sampled,
                                   initial_clipping_norm=settings.clipping_norm,
                                   target_clipped_quantile=settings.target_quantile,
                                   clip_norm_lr=settings.clip_norm_lr, clipped_count_stddev=count_stddev)
