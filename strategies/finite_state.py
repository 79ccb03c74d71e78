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

STATE_ATTRIBUTES = ("m_t", "v_t", "momentum_vector", "current_arrays")


def finite(value) -> bool:
    """Whether every array in a state attribute (dict, list, ArrayRecord or None) is finite."""
    if value is None:
        return True
    if isinstance(value, ArrayRecord):
        value = dict(value.items())
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        array = item.numpy() if isinstance(item, Array) else np.asarray(item)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return False
    return True


class FiniteServerState:
    """Mixin placed before a Flower FedOpt / FedAvgM class: refuse a round that leaves its state non-finite."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        before = {name: getattr(self, name) for name in STATE_ATTRIBUTES if hasattr(self, name)}
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        broken = [name for name in before if not finite(getattr(self, name))]
        if broken or (arrays is not None and not finite(arrays)):
            for name, value in before.items():
                setattr(self, name, value)
            raise FloatingPointError(f"the server optimiser's state ({', '.join(broken) or 'aggregate'}) became "
                                     "non-finite; its state before the round is restored")
        return arrays, metrics
