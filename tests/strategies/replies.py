"""The global model and honest client weights the reply-filter and hostile-reply tests share."""

from __future__ import annotations

import numpy as np


def global_weights() -> dict[str, np.ndarray]:
    return {"w": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), "b": np.array([0.1, 0.2, 0.3], np.float32),
            "n": np.array(2, np.int64)}


def honest(node: int) -> dict[str, np.ndarray]:
    """What honest client ``node`` sends: the global weights moved by an amount fixed by the node."""
    g = global_weights()
    return {"w": g["w"] + 0.1 * node, "b": g["b"] - 0.05 * node, "n": np.asarray(g["n"] + 1)}
