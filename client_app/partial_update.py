"""FedVSSL's partial weight updating: a client takes only the encoder from the global model and keeps its own
projection head from round to round (Rehman et al. 2022; in the authors' client, ``set_parameters`` loads the
``backbone`` weights and keeps the rest).

The head lives in the node's ``Context.state``, which Flower keeps per node for the whole run (in the
simulation and on a SuperNode); it is not in the server's checkpoint, so a resumed run starts each client's
head again from the global model's. The reply still carries the whole model, as the authors' clients send it.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, RecordDict

HEAD_PREFIX = "projector."
STATE_KEY = "fedvssl-own-head"


def keeps_own_head(config) -> bool:
    """Whether this run's clients update only their encoder from the global model."""
    return config.strategy == "fedvssl" and config.fedvssl_partial_update


def load_global(model: torch.nn.Module, global_arrays: ArrayRecord, state: RecordDict | None) -> bool:
    """Load the global model into ``model``, with this client's own head instead of the global one when
    ``state`` holds a head of the same names and shapes; True when the own head was used."""
    weights = global_arrays.to_torch_state_dict()
    own = state.array_records.get(STATE_KEY) if state is not None else None
    used = False
    if own is not None:
        head = own.to_torch_state_dict()
        expected = {k: v.shape for k, v in weights.items() if k.startswith(HEAD_PREFIX)}
        if {k: v.shape for k, v in head.items()} == expected:  # another architecture: start from the global head
            weights.update(head)
            used = True
    model.load_state_dict(weights)
    return used


def keep_head(model: torch.nn.Module, state: RecordDict) -> None:
    """Store this client's trained head in its node state for the next round."""
    head = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIX)}
    state[STATE_KEY] = ArrayRecord(head)
