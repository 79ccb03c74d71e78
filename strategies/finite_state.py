"""Server-side optimiser state that stays finite: FedOpt's moments (``m_t``, ``v_t``) and FedAvgM's momentum.

Flower's FedAdam / FedYogi / FedAdagrad / FedAvgM compute their state in the model's dtype (float32): one
finite but extreme reply (3e38) squares to Inf in ``v_t`` and freezes FedAdam for the rest of the run, and a
momentum carries a hostile delta into later rounds. The update bound (``update-norm-cap-factor``, on by
default) keeps such a reply from reaching the strategy; this mixin is the second line, for runs that turn the
bound off: after each aggregation it checks the state, and a state that is no longer finite is replaced by the
one before the round, the round's aggregate is dropped (the reply filter keeps the previous global model and
counts ``aggregation-nonfinite``), and the next round starts from finite numbers. Flower rebinds these
attributes to new containers each round, so keeping the previous references costs no copy (a test checks it).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord


def state_is_finite(value) -> bool:
    """Every float value of an arrays-like strategy state is finite: an Array, an ndarray, an ArrayRecord, a
    dict or list of them (FedOpt's moments, FedAvgM's momentum); None and other values count as finite. The
    checkpoint applies the same test to the state it writes and restores."""
    if isinstance(value, Array):
        value = value.numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
    if isinstance(value, (ArrayRecord, dict)):
        return all(state_is_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(state_is_finite(v) for v in value)
    return True


class FiniteServerState:
    """Mixin placed before a Flower FedOpt / FedAvgM class: refuse a round that leaves its state non-finite.

    The state is what the class declares in ``state_attributes`` (``strategies.robust``), the same attributes
    the checkpoint saves."""

    state_attributes: tuple[str, ...] = ()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        before = {name: getattr(self, name) for name in self.state_attributes if hasattr(self, name)}
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        broken = [name for name in before if not state_is_finite(getattr(self, name))]
        if broken or not state_is_finite(arrays):
            for name, value in before.items():
                setattr(self, name, value)
            raise FloatingPointError(f"the server optimiser's state ({', '.join(broken) or 'aggregate'}) became "
                                     "non-finite; its state before the round is restored")
        return arrays, metrics
