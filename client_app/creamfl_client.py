"""A CreamFL client's round (``strategy='creamfl'``): it keeps its own model, trains its local SSL objective
plus CreamFL's regulariser on the public set, and replies with its representations of the public set.

* **Its own model** lives in the node's ``Context.state`` (``creamfl-own-model``), the only thing besides
  files that Flower keeps between a node's messages on a device (each message gets a fresh ClientApp
  process there). In its first round a client starts from the seeded initial model, the one the server
  builds from the same ``seed``; the server's checkpoint does not hold the clients' models, so a run
  resumed on a restarted SuperLink (new node contexts) starts them again from it (``own-model`` = 0).
* **What arrives**: the message's ``arrays`` hold the global model's representations of the public set
  (``image``, ``audio``: N x d) and the public pairs' positions in the training splits (``image-index``,
  ``audio-index``); the client reads those samples from the run's datasets (``data-root``: CreamFL's
  public set is shared data every participant holds, so a deployed node needs the run's datasets too).
* **What it replies**: ``arrays`` = its own L2-normalised representations (N x d, in ``update-dtype``) of
  the public set for each modality it trains, and its metrics (``creamfl-regulariser``: the mean
  regulariser per step). Anything malformed in the message is a one-line error reply.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from flwr.app import Array, ArrayRecord, RecordDict

from app_config.modalities import MODALITIES
from app_config.run_config import RunConfig
from client_app.worker_cache import ClientState
from models.factory import eval_transforms
from ssl_method.creamfl_training import PublicRegulariser, public_representations
from ssl_method.local_training import TrainSettings, train_locally
from strategies.creamfl_strategy import INDEX_SUFFIX

OWN_MODEL_KEY = "creamfl-own-model"


def read_banks(content: RecordDict) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The global banks (N, d) and public positions (N,) of each modality, checked; a one-line ValueError."""
    if "arrays" not in content.array_records:
        raise ValueError("creamfl: the train message holds no 'arrays' record")
    record = content.array_records["arrays"]
    names = {*MODALITIES, *(m + INDEX_SUFFIX for m in MODALITIES)}
    if set(record.keys()) != names:
        raise ValueError(f"creamfl: the train message's arrays are {sorted(record.keys())[:4]}, expected the "
                         "public-set banks and indices")
    banks = {m: torch.from_numpy(np.array(record[m].numpy(), dtype=np.float32)) for m in MODALITIES}
    indices = {m: np.asarray(record[m + INDEX_SUFFIX].numpy()) for m in MODALITIES}
    n, dim = banks[MODALITIES[0]].shape if banks[MODALITIES[0]].ndim == 2 else (0, 0)
    for m in MODALITIES:
        if tuple(banks[m].shape) != (n, dim) or n == 0 or not bool(torch.isfinite(banks[m]).all()):
            raise ValueError("creamfl: the global banks must be finite (N, d) arrays of one shape")
        if indices[m].shape != (n,) or indices[m].dtype.kind not in "iu":
            raise ValueError(f"creamfl: {m}{INDEX_SUFFIX} must hold {n} integer positions")
    return banks, indices


def load_own_model(model: nn.Module, node_state: RecordDict, initial: dict) -> bool:
    """Load this client's own model from its node state (True), else the seeded initial model (False)."""
    own = node_state.array_records.get(OWN_MODEL_KEY)
    if own is not None:
        weights = own.to_torch_state_dict()
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if {k: tuple(v.shape) for k, v in weights.items()} == expected:
            model.load_state_dict(weights)
            return True
    model.load_state_dict(initial)
    return False


def keep_own_model(model: nn.Module, node_state: RecordDict) -> None:
    node_state[OWN_MODEL_KEY] = ArrayRecord({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})


def creamfl_train(content: RecordDict, node_state: RecordDict, config: RunConfig, state: ClientState,
                  settings: TrainSettings, seed: int, public_of, initial: dict) -> tuple[dict[str, float], ArrayRecord]:
    """One client round (module docstring): metrics and the reply's representations.

    ``public_of(indices)``: the public samples of those positions per modality (the worker's cache);
    ``initial``: the seeded initial model's state dict.
    """
    banks, indices = read_banks(content)
    public = public_of(indices)
    used_own = load_own_model(state.model, node_state, initial)
    modalities = state.data.modalities
    if not modalities:
        raise ValueError("client holds fewer than 2 samples of every modality: nothing to contrast")
    transforms = eval_transforms(config, state.device)
    old = {m: public_representations(state.model, public[m], transforms[m], state.device) for m in modalities}
    regulariser = PublicRegulariser(public, banks, old, transforms, config.creamfl_tau,
                                    config.creamfl_regulariser_weight, settings.batch_size, state.device, seed + 1)
    metrics = train_locally(state.model, state.data, state.views, settings, state.device, seed=seed,
                            extra_loss=regulariser)
    metrics["creamfl-regulariser"] = regulariser.mean()
    metrics["num-examples"] = float(state.data.total())
    metrics["own-model"] = float(used_own)
    keep_own_model(state.model, node_state)
    dtype = np.float16 if config.update_dtype == "float16" else np.float32
    reps = {m: Array(public_representations(state.model, public[m], transforms[m], state.device).numpy().astype(dtype))
            for m in modalities}
    return metrics, ArrayRecord(reps)
