"""Resumable checkpoints of a run: written atomically, read back exactly.

A checkpoint (``<run folder>/checkpoint.pt``, one file, always the latest) holds
everything the ServerApp needs to continue a run as if it had never stopped:

* ``round``: the last completed round ``k``; a resumed run starts at ``k + 1``;
* ``arrays``: the global model after round ``k`` (exact bytes, every dtype kept);
* ``strategy``: the aggregation rule's ``state_dict()`` (see
  :func:`capture_strategy_state`): FedOpt's moments, FedAvgM's momentum, and
  under an adaptive DP mode the clipping norm; the rule refuses anything else;
* ``rng``: the seed and the server process's Python, NumPy and torch RNG states;
* ``history``: the ``metrics.jsonl`` records of rounds ``0..k``;
* ``run-config``: the run config the rounds were run with.

**Atomic writes.** :func:`save_checkpoint` writes to a temporary file in the
same folder, flushes and ``fsync``\\ s it, then ``os.replace``\\ s it over the
previous checkpoint (and ``fsync``\\ s the folder). A process killed at any
moment leaves either the previous checkpoint or the new one, never a torn file;
readers only ever open ``checkpoint.pt``, and stale temporary files
(``.checkpoint-*.tmp``) are removed by the next write.

**Format.** A ``torch.save`` file loadable with ``torch.load(weights_only=True)``
(no pickled code): arrays are stored as tensors (NumPy dtypes torch lacks as
lists), structure as tagged dicts, the history and config as JSON text.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from app_config.run_config import MAX_ROUNDS
from file_io.atomic import TMP_SUFFIX, atomic_write
from strategies.aggregation_rule import state_is_finite
from strategies.reply_check import array_spec

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 2: the strategy state is the aggregation rule's state_dict()
TMP_PREFIX = ".checkpoint-"

# Run-config keys that may differ between the run that wrote a checkpoint and the
# run resuming it: they change where/how long/how often, never what is computed.
RESUMABLE_CHANGES = frozenset({
    "resume-from", "checkpoint-every", "num-server-rounds", "round-timeout", "run-dir", "data-root",
    "device", "tensorboard", "save-every", "eval-every",
})


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line."""


@dataclass
class Checkpoint:
    round: int
    arrays: ArrayRecord
    strategy_name: str
    strategy_state: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    run_config: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- encoding
def _tensor_of(x: np.ndarray):
    try:
        return torch.from_numpy(np.array(x, order="C", copy=True))  # (np.ascontiguousarray makes 0-d arrays 1-d)
    except TypeError:  # a dtype torch lacks (e.g. uint32 on older torch): keep it as a list
        return {"__nplist__": x.tolist(), "dtype": str(x.dtype), "shape": list(x.shape)}


def _array_of(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    return np.asarray(value["__nplist__"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])


def encode(value):
    """A value built from arrays, records, containers and scalars -> ``weights_only``-loadable form."""
    if isinstance(value, ArrayRecord):
        return {"__arrayrecord__": {k: _tensor_of(a.numpy()) for k, a in value.items()}}
    if isinstance(value, Array):
        return {"__array__": _tensor_of(value.numpy())}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _tensor_of(value)}
    if isinstance(value, np.generic):
        return {"__ndarray__": _tensor_of(np.asarray(value)), "scalar": True}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only dicts with string keys can be checkpointed")
        return {"__dict__": {k: encode(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"__list__": [encode(v) for v in value], "tuple": isinstance(value, tuple)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")


def decode(value):
    """Inverse of :func:`encode`."""
    if not isinstance(value, dict):
        return value
    if "__arrayrecord__" in value:
        return ArrayRecord({k: Array(_array_of(v)) for k, v in value["__arrayrecord__"].items()})
    if "__array__" in value:
        return Array(_array_of(value["__array__"]))
    if "__ndarray__" in value:
        x = _array_of(value["__ndarray__"])
        return x[()] if value.get("scalar") else x
    if "__dict__" in value:
        return {k: decode(v) for k, v in value["__dict__"].items()}
    if "__list__" in value:
        items = [decode(v) for v in value["__list__"]]
        return tuple(items) if value.get("tuple") else items
    raise CheckpointError(f"unknown encoded value with keys {sorted(value)[:3]}")


# --------------------------------------------------------------------------- strategy state
# The strategy's state is its aggregation rule's ``state_dict()`` (strategies.aggregation_rule): FedOpt's
# moments, FedAvgM's momentum, and under a DP mode the adaptive clipping norm beside the wrapped rule's state.
# The rule checks what it is given back (unknown names, wrong kinds, NaN/Inf are refused).


def capture_strategy_state(strategy) -> dict:
    """The strategy's ``state_dict()``, encoded; a state holding NaN or Inf is a CheckpointError (not written)."""
    state = strategy.state_dict()
    if not state_is_finite(state):
        raise CheckpointError(f"the state of {strategy!r} holds NaN or Inf")
    return encode(state)


def restore_strategy_state(strategy, state: dict) -> None:
    """Give the strategy the state :func:`capture_strategy_state` captured; what it refuses is a one-line
    CheckpointError (a checkpoint cannot set arbitrary strategy attributes)."""
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint: the strategy state is not a mapping")
    try:
        decoded = decode(state) if state else {}
        if not isinstance(decoded, dict):
            raise CheckpointError("checkpoint: the strategy state is not a mapping")
        strategy.load_state_dict(decoded)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint: strategy state refused: {_first_line(err)[:160]}") from None


# --------------------------------------------------------------------------- RNG states
def capture_rng(seed: int) -> dict:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "seed": int(seed),
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"bit_generator": np_state["bit_generator"], "key": [int(v) for v in np_state["state"]["key"]],
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }


def restore_rng(rng: dict) -> None:
    """Set the RNG states :func:`capture_rng` captured; a malformed state is a one-line CheckpointError."""
    if not rng:
        return
    try:
        _set_rng(rng)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint: the RNG state cannot be restored ({type(err).__name__}: "
                              f"{str(err)[:80]})") from None


def _set_rng(rng: dict) -> None:
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = rng["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(rng["torch"])


# --------------------------------------------------------------------------- files
def checkpoint_path(folder: Path) -> Path:
    return Path(folder) / CHECKPOINT_NAME


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files left by a writer that was killed before ``os.replace``."""
    for tmp in Path(folder).glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        try:
            tmp.unlink()
        except OSError:
            pass


def atomic_torch_save(payload, path: Path) -> Path:
    """``torch.save(payload)`` to ``path`` so that ``path`` is never seen half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    return atomic_write(path, lambda fh: torch.save(payload, fh), prefix=TMP_PREFIX)


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` as ``<folder>/checkpoint.pt``, atomically."""
    payload = {
        "format": FORMAT_VERSION,
        "round": int(checkpoint.round),
        "arrays": encode(checkpoint.arrays),
        "strategy-name": checkpoint.strategy_name,
        "strategy": checkpoint.strategy_state,
        "rng": checkpoint.rng,
        "history-json": json.dumps(checkpoint.history),
        "run-config-json": json.dumps(checkpoint.run_config, sort_keys=True),
        "meta-json": json.dumps(checkpoint.meta, sort_keys=True),
    }
    return atomic_torch_save(payload, checkpoint_path(folder))


def resolve_checkpoint(resume_from: str | Path) -> Path:
    """The checkpoint file named by a ``resume-from`` value (a run folder or the file itself)."""
    path = Path(resume_from).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    return path.resolve()


def resume_problem(resume_from: str) -> str | None:
    """None when ``resume_from`` names an existing checkpoint, else a one-line reason."""
    path = resolve_checkpoint(resume_from)
    if not path.is_file():
        where = Path(resume_from).expanduser()
        if where.is_dir():
            return f"no {CHECKPOINT_NAME} in run folder {str(where)!r} (was checkpoint-every 0?)"
        return f"no checkpoint at {resume_from!r}; give a run folder or its {CHECKPOINT_NAME}"
    return None


def load_checkpoint(resume_from: str | Path) -> Checkpoint:
    path = resolve_checkpoint(resume_from)
    if not path.is_file():
        raise CheckpointError(resume_problem(str(resume_from)) or f"no checkpoint at {str(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one error for the user
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {_first_line(err)}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has an unknown format")
    try:
        checkpoint = Checkpoint(
            round=payload["round"],
            arrays=decode(payload["arrays"]),
            strategy_name=payload["strategy-name"],
            strategy_state=payload["strategy"],
            rng=payload["rng"],
            history=json.loads(payload["history-json"]),
            run_config=json.loads(payload["run-config-json"]),
            meta=json.loads(payload["meta-json"]),
        )
    except KeyError as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: field {err.args[0]!r} is missing") from None
    except (TypeError, ValueError) as err:  # json text that is not text or not JSON, an undecodable value
        raise CheckpointError(f"checkpoint {str(path)!r}: a field cannot be decoded ({_first_line(err)[:120]})") \
            from None
    problem = field_problem(checkpoint)
    if problem is not None:
        raise CheckpointError(f"checkpoint {str(path)!r}: {problem}")
    return checkpoint


def _first_line(err: Exception) -> str:
    """An exception's first message line (its type's name when the message is empty)."""
    return (str(err).splitlines() or [type(err).__name__])[0]


def field_problem(checkpoint: Checkpoint) -> str | None:
    """Why a decoded checkpoint's fields cannot be what this project writes (None when they can)."""
    if isinstance(checkpoint.round, bool) or not isinstance(checkpoint.round, int) \
            or not 0 <= checkpoint.round <= MAX_ROUNDS:
        return f"round must be an int in [0, {MAX_ROUNDS}], got {str(checkpoint.round)[:40]!r}"
    if not isinstance(checkpoint.arrays, ArrayRecord) or not len(checkpoint.arrays):
        return "arrays must be the model's named arrays"
    if not isinstance(checkpoint.strategy_name, str):
        return "strategy-name must be a string"
    for name in ("strategy_state", "rng", "run_config", "meta"):
        if not isinstance(getattr(checkpoint, name), dict):
            return f"{name.replace('_', '-')} must be a mapping"
    if not isinstance(checkpoint.history, list) or not all(
            isinstance(r, dict) and isinstance(r.get("round"), int) and not isinstance(r.get("round"), bool)
            for r in checkpoint.history):
        return "history must be a list of round records, each with an int round"
    return None


def arrays_problem(arrays: ArrayRecord, model: ArrayRecord) -> str | None:
    """Why a checkpoint's global model cannot continue this run's model (None when it can): the same names,
    shapes and dtypes, every value finite."""
    have, want = array_spec(arrays), array_spec(model)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        return f"arrays differ from this run's model (missing {missing[:3]}, extra {extra[:3]})"
    for name, (shape, dtype) in want.items():
        if have[name] != (shape, dtype):
            return f"array {name!r} is {have[name][0]} {have[name][1]}, this run's model has {shape} {dtype}"
        if not state_is_finite(arrays[name]):
            return f"array {name!r} holds NaN or Inf"
    return None


def config_mismatch(saved: dict, current: dict) -> str | None:
    """A one-line reason why a run with ``current`` config cannot resume one with ``saved``, or None."""
    differing = sorted(k for k in set(saved) | set(current)
                       if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if differing:
        key = differing[0]
        more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
        return (f"{key}: the checkpoint was written with {saved.get(key)!r}, this run has {current.get(key)!r}{more}; "
                f"only {', '.join(sorted(RESUMABLE_CHANGES - {'resume-from'}))} may change on resume")
    return None


