"""Differential privacy around any registered strategy: Flower's DP wrappers, unchanged, behind one adapter.

The run-config key ``dp`` wraps the strategy chosen by ``strategy``:

=================== ================================================ =====================================
``dp``              Flower wrapper (unchanged)                       clipping happens
=================== ================================================ =====================================
``none``            (no wrapper)                                     --
``server-fixed``    DifferentialPrivacyClientSideFixedClipping       on the server (this adapter), norm fixed
``client-fixed``    DifferentialPrivacyClientSideFixedClipping       on the clients (``dp_clipping_mod``)
``server-adaptive`` DifferentialPrivacyClientSideAdaptiveClipping    on the server (this adapter), norm adapted
``client-adaptive`` DifferentialPrivacyClientSideAdaptiveClipping    on the clients, norm adapted
=================== ================================================ =====================================

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

How the project uses Flower's classes: **unchanged, through one adapter**
(:class:`DPAdapter`), which sits between the round loop and Flower's wrapper:

* the reply filter runs first (``DPAdapter`` is a :class:`~strategies.reply_filter.ReplyFilter`):
  Flower's wrappers skip a whole round when one reply is an error and crash
  on replies of other shapes; here those are dropped and counted and the good
  replies go on. The wrapped strategy then trusts them (``trusted_replies``)
  instead of checking them twice;
* clients are weighted equally (``uniform_weights``): the noise ``sigma C / m``
  is calibrated for a uniform mean of m clipped updates (Flower's privacy
  accounting requires it too); a data-size weight of ``p_k > 1/m`` would give
  client k ``p_k C`` of influence;
* Flower's wrapper sees the model's **float arrays only**: BatchNorm step
  counters would otherwise dominate the update norm and be noised
  (:mod:`strategies.dp_clip`). The adapter sends the clients the whole model,
  hands Flower the float part of the global model and of each reply, and
  averages the integer buffers itself (equal weights, rounded by the filter's
  cast);
* every mode runs Flower's *client-side* wrapper
  (``DifferentialPrivacyClientSide{Fixed,Adaptive}Clipping``), which owns the
  noise (Flower's ``compute_stdv`` from its current norm), the privacy events
  and, for the adaptive modes, the norm's geometric update from the replies'
  ``norm_bit``. In the server modes the adapter clips each float update on the
  server exactly where a client's clipping mod would have (Flower's FlatClip
  with the norm accumulated in float64, and a zero update left as it is,
  :func:`strategies.dp_clip.clip_update`), writes each reply's ``norm_bit``,
  and removes ``clipping_norm`` from the messages so that no client clips
  again. Flower's server-side wrappers are not used: their clipping step is
  the one thing the project does differently, and a zero update makes it
  divide by zero.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from app_config.run_config import RunConfig
from strategies.aggregation_rule import refuse_unknown
from strategies.dp_clip import clip_update, float_names
from strategies.reply_filter import ReplyFilter
from strategies.rule_strategy import RuleStrategy

NONE = "none"
DP_MODES = (NONE, "server-fixed", "client-fixed", "server-adaptive", "client-adaptive")
FlowerDP = DifferentialPrivacyClientSideFixedClipping | DifferentialPrivacyClientSideAdaptiveClipping
WRAPPERS: dict[str, type[FlowerDP]] = {
    "server-fixed": DifferentialPrivacyClientSideFixedClipping,
    "client-fixed": DifferentialPrivacyClientSideFixedClipping,
    "server-adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
    "client-adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
}  # the Flower class each mode runs, unchanged
SERVER_CLIPPING = frozenset({"server-fixed", "server-adaptive"})
INNER_STATE, NORM_STATE = "strategy", "clipping-norm"  # the checkpoint's names for the adapter's state


def _only(record: ArrayRecord, names: Iterable[str]) -> ArrayRecord:
    return ArrayRecord({name: record[name] for name in names})


def _mean_of(arrays: list[Array]) -> Array:
    """Equal-weight mean in float64 (the reply filter casts it back to the model's dtype)."""
    return Array(np.asarray(np.mean(np.stack([a.numpy().astype(np.float64) for a in arrays]), axis=0)))


class _FloatsThroughFlower(Strategy):
    """Below the reply filter: Flower's DP wrapper on the float arrays, the rest averaged here."""

    _reference: ArrayRecord | None

    def __init__(self, flower: FlowerDP, clip_on_server: bool) -> None:
        self.strategy = flower  # named as Flower's wrappers name theirs
        self.clip_on_server = clip_on_server

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config = ConfigRecord(dict(config.items()))  # Flower writes its clipping norm into it
        floats = _only(arrays, float_names(arrays))
        return [self._with_whole_model(msg, arrays)
                for msg in self.strategy.configure_train(server_round, floats, config, grid)]

    def _with_whole_model(self, msg: Message, arrays: ArrayRecord) -> Message:
        """The instruction as built by the strategies, carrying the whole model (and, in the server modes,
        no clipping norm: the clients must not clip)."""
        content = RecordDict()
        for key, record in msg.content.items():
            if isinstance(record, ArrayRecord):
                record = arrays
            elif isinstance(record, ConfigRecord) and self.clip_on_server and KEY_CLIPPING_NORM in record:
                record = ConfigRecord({k: v for k, v in record.items() if k != KEY_CLIPPING_NORM})
            content[key] = record
        return Message(content=content, dst_node_id=msg.metadata.dst_node_id,
                       message_type=msg.metadata.message_type)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)  # the filter's copies: one ArrayRecord and one MetricRecord each
        reference = self._reference if self._reference is not None else \
            next(iter(replies[0].content.array_records.values()))
        floats = float_names(reference)
        float_reference = _only(reference, floats)
        clipping_norm = float(self.strategy.clipping_norm)
        float_replies = []
        for reply in replies:
            (array_key, record), = reply.content.array_records.items()
            (metric_key, metrics), = reply.content.metric_records.items()
            part = _only(record, floats)
            if self.clip_on_server:
                part, clipped = clip_update(part, float_reference, clipping_norm)
                metrics = MetricRecord({**dict(metrics.items()), KEY_NORM_BIT: int(clipped)})
            duplicate = copy.copy(reply)
            duplicate.content = RecordDict({array_key: part, metric_key: metrics})
            float_replies.append(duplicate)
        aggregate, aggregated_metrics = self.strategy.aggregate_train(server_round, float_replies)
        if aggregate is None:
            return None, aggregated_metrics
        records = [next(iter(r.content.array_records.values())) for r in replies]
        whole = ArrayRecord()
        for name in reference.keys():
            whole[name] = aggregate[name] if name in aggregate else _mean_of([record[name] for record in records])
        return whole, aggregated_metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


class DPAdapter(ReplyFilter, _FloatsThroughFlower):
    """One DP mode: the reply filter (equal weights), then Flower's wrapper on the float arrays."""

    uniform_weights = True

    def __init__(self, flower: FlowerDP, mode: str) -> None:
        super().__init__(flower, clip_on_server=mode in SERVER_CLIPPING)
        self.mode = mode
        if mode == "client-adaptive":
            self.required_metrics = (KEY_NORM_BIT,)

    def __repr__(self) -> str:
        return f"DPAdapter({self.mode}: {self.strategy!r})"

    @property
    def inner(self) -> RuleStrategy:
        """The strategy Flower's wrapper wraps (``wrap_dp`` gives it a RuleStrategy)."""
        inner = self.strategy.strategy
        if not isinstance(inner, RuleStrategy):
            raise TypeError(f"DPAdapter wraps {type(inner).__name__}, not a RuleStrategy")
        return inner

    @property
    def adapts_norm(self) -> bool:
        return isinstance(self.strategy, DifferentialPrivacyClientSideAdaptiveClipping)

    def state_dict(self) -> dict:
        """The wrapped strategy's state and, in the adaptive modes, Flower's current clipping norm."""
        state: dict = {INNER_STATE: self.inner.state_dict()}
        if self.adapts_norm:
            state[NORM_STATE] = float(self.strategy.clipping_norm)
        return state

    def load_state_dict(self, state: Mapping) -> None:
        known = (INNER_STATE, NORM_STATE) if self.adapts_norm else (INNER_STATE,)
        refuse_unknown(state, known, f"dp {self.mode}")
        if NORM_STATE in state:
            norm = state[NORM_STATE]
            if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not 0 < norm < math.inf:
                raise ValueError(f"{NORM_STATE} must be a finite number > 0, got {norm!r}")
            self.strategy.clipping_norm = float(norm)
        inner = state.get(INNER_STATE, {})
        if not isinstance(inner, Mapping):
            raise ValueError(f"dp {self.mode}: the wrapped strategy's state is not a mapping")
        self.inner.load_state_dict(inner)


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


def wrap_dp(strategy: RuleStrategy, settings: DPSettings, min_train_nodes: int = 2) -> RuleStrategy | DPAdapter:
    """``strategy`` wrapped by the DP mode of ``settings`` (itself when the mode is ``none``)."""
    settings.check()
    if settings.mode == NONE:
        return strategy
    sampled = settings.sampled_clients or int(min_train_nodes)
    strategy.trusted_replies = True  # the adapter's filter checks the replies first
    flower: FlowerDP
    if WRAPPERS[settings.mode] is DifferentialPrivacyClientSideFixedClipping:
        flower = DifferentialPrivacyClientSideFixedClipping(strategy, settings.noise_multiplier,
                                                            settings.clipping_norm, sampled)
        return DPAdapter(flower, settings.mode)
    count_stddev = settings.clipped_count_stddev or None  # None: Flower's default, sampled / 20
    if settings.noise_multiplier > 0 and settings.noise_multiplier >= 2 * (count_stddev or sampled / 20):
        raise ValueError(f"dp-clipped-count-stddev: {settings.mode} with dp-noise-multiplier "
                         f"{settings.noise_multiplier} needs it above {settings.noise_multiplier / 2:g} "
                         f"(0 means sampled clients / 20 = {sampled / 20:g})")
    flower = DifferentialPrivacyClientSideAdaptiveClipping(
        strategy, settings.noise_multiplier, sampled, initial_clipping_norm=settings.clipping_norm,
        target_clipped_quantile=settings.target_quantile, clip_norm_lr=settings.clip_norm_lr,
        clipped_count_stddev=count_stddev)
    return DPAdapter(flower, settings.mode)
