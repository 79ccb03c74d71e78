"""Clipping and noise for differential privacy, on a model's float arrays only.

Flower's DP helpers (``flwr.supercore.differential_privacy``) clip and noise
*every* array of a model. Two things go wrong with this project's encoders:

* BatchNorm's ``num_batches_tracked`` (an int64 step counter) is part of the
  update, so the update's norm counts local steps (one epoch of 50 steps in 20
  BatchNorm layers adds ~220 to the norm) and every float update is scaled
  down by that instead of by its own size; noise added to it is rounded;
* an update of norm exactly 0 (a client that did not move) makes Flower's
  ``clipping_norm / input_norm`` divide by zero and raise.

Here only float arrays are clipped and noised; integer buffers pass through
as the clients sent them (they are averaged like any other array). The
clipping is Flower's FlatClip (``min(1, C / ||update||)`` over all float arrays
together, McMahan et al. 2018); the norm is accumulated in float64
(:func:`update_norm`: Flower's ``get_norm`` squares float32 values in float32,
so a finite update of 3e38 has norm inf there and would be clipped to zero
rather than to C); the noise is Flower's ``add_gaussian_noise_inplace`` with
Flower's ``compute_stdv``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace


def float_names(record: ArrayRecord) -> list[str]:
    """Names of the floating-point arrays (by metadata; nothing is decoded)."""
    return [name for name, array in record.items() if np.dtype(array.dtype).kind == "f"]


def update_norm(record: ArrayRecord, reference: ArrayRecord) -> float:
    """L2 norm of ``record - reference`` over the float arrays, accumulated in float64."""
    total = 0.0
    for name in float_names(record):
        delta = np.subtract(record[name].numpy(), reference[name].numpy(), dtype=np.float64)
        total += float(np.dot(delta.ravel(), delta.ravel()))
    return float(np.sqrt(total))


def clip_update(record: ArrayRecord, reference: ArrayRecord, clipping_norm: float,
                norm: float | None = None) -> tuple[ArrayRecord, bool]:
    """``record`` with its float arrays moved to ``reference + clip(record - reference)``, and whether it was clipped.

    Arrays that are not floats are kept as they are; names keep their order. ``norm``: the update's
    norm when the caller has it already.
    """
    names = float_names(record)
    norm = update_norm(record, reference) if norm is None else norm
    if not norm > clipping_norm:  # within the bound (a zero update included): unchanged
        return record, False
    factor = clipping_norm / norm
    out = ArrayRecord()
    floats = set(names)
    for name, array in record.items():
        if name in floats:
            reference_values = reference[name].numpy()
            delta = np.subtract(array.numpy(), reference_values, dtype=np.float64) * factor
            array = Array(np.asarray((reference_values + delta).astype(reference_values.dtype)))
        out[name] = array
    return out, True


def noise_floats(record: ArrayRecord, stdv: float) -> ArrayRecord:
    """``record`` with Gaussian noise of standard deviation ``stdv`` added to its float arrays."""
    out = ArrayRecord()
    for name, array in record.items():
        if np.dtype(array.dtype).kind == "f":
            values = np.array(array.numpy())  # writable
            add_gaussian_noise_inplace([values], stdv)
            array = Array(values)
        out[name] = array
    return out
