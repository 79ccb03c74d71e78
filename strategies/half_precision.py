"""The float16 wire rule, for both directions' senders: a float32 array travels as float16 where it fits.

An array with a finite value beyond float16's range (65504) stays float32: the
receiver admits either, and an overflow to inf would get the whole message
dropped by the reply checks. An array that is not finite to begin with is
narrowed as it is (the checks refuse it either way).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def narrow_arrays(arrays: ArrayRecord) -> ArrayRecord:
    """``arrays`` with each float32 array as float16 where its values fit (others as they are)."""
    narrowed = {}
    for name, array in arrays.items():
        if array.dtype == "float32":
            values = array.numpy()
            with np.errstate(over="ignore"):  # an overflow is what the next line looks for
                half = values.astype(np.float16)
            if np.isfinite(half).all() or not np.isfinite(values).all():
                array = Array(half)
        narrowed[name] = array
    return ArrayRecord(narrowed)
