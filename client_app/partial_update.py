"""Clients that keep their own projection head: FedVSSL's partial weight updating and FASSL's backbone-only
transmission.

* FedVSSL (Rehman et al. 2022; in the authors' client ``set_parameters`` loads the ``backbone`` weights and
  keeps the rest): the server sends the whole model, the client loads only its encoder
  (``fedvssl-partial-update``); the reply carries the whole model, as the authors' clients send it.
* FASSL (``send-encoder-only``): the server sends only the encoder and the client replies with only its
  encoder, so the head never travels. In round 1 a client starts from the seeded initial head, the one the
  server builds from the same ``seed`` (``initial_head``).

The own head lives in the node's ``Context.state``, which Flower keeps per node for the whole run (in the
simulation and on a SuperNode); it is not in the server's checkpoint, so a resumed run starts each client's
head again from the global (or seeded initial) one.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, RecordDict

from models.factory import build_model
from models.ssl_model import encoder_part, head_part

STATE_KEY = "fedvssl-own-head"


def keeps_own_head(config) -> bool:
    """Whether this run's clients keep their own head between rounds."""
    return (config.strategy == "fedvssl" and config.fedvssl_partial_update) or config.send_encoder_only


def initial_model(config) -> dict[str, torch.Tensor]:
    """The seeded initial model's state dict (the server builds it after ``torch.manual_seed(seed)`` too)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_model(config).state_dict()


def initial_head(config) -> dict[str, torch.Tensor]:
    """The head of the seeded initial model."""
    return head_part(initial_model(config))


def load_global(model: torch.nn.Module, global_arrays: ArrayRecord, state: RecordDict | None,
                fallback_head: dict | None = None) -> bool:
    """Load the global model into ``model`` with this client's own head from ``state`` when it holds one of the
    model's names and shapes (True then); a global model without a head (encoder only) takes ``fallback_head``
    until the client has its own."""
    weights = global_arrays.to_torch_state_dict()
    expected = {k: v.shape for k, v in head_part(model.state_dict()).items()}
    own = state.array_records.get(STATE_KEY) if state is not None else None
    used = False
    if own is not None:
        head = own.to_torch_state_dict()
        if {k: v.shape for k, v in head.items()} == expected:  # another architecture: not this head
            weights.update(head)
            used = True
    if not used and expected and not head_part(weights):  # the model has a head the global lacks
        if fallback_head is None:
            raise ValueError("the global model holds no projection head and this client has none of its own")
        weights.update(fallback_head)
    model.load_state_dict(weights)
    return used


def keep_head(model: torch.nn.Module, state: RecordDict) -> None:
    """Store this client's trained head in its node state for the next round."""
    state[STATE_KEY] = ArrayRecord({k: v.detach().cpu().clone() for k, v in head_part(model.state_dict()).items()})


def without_head(arrays: ArrayRecord) -> ArrayRecord:
    """The encoder's arrays of a reply (backbone-only transmission)."""
    return ArrayRecord(encoder_part(arrays))
