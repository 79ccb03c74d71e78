"""What one message cost the device (cold start, memory, threads, bytes) and the weights it sends back.

On a deployed SuperNode, Flower starts a new ClientApp process for every
message, so each reply's cold start is what a device pays per round: the app's
imports (first message of a process only), model build, data load and
augmentation set-up (0 when this worker already holds them), and the time from
the message reaching the app to its first training step.
"""

from __future__ import annotations

import resource

import torch
from flwr.app import ArrayRecord

from strategies.half_precision import narrow_arrays


def record_bytes(arrays: ArrayRecord) -> int:
    """Bytes of an ArrayRecord's arrays as they travel (serialised numpy buffers)."""
    return sum(len(array.data) for array in arrays.values())


def resource_report() -> dict[str, float]:
    """Peak resident memory of this process (MiB) and the torch threads it trains with."""
    return {
        "peak-rss-mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "threads": float(torch.get_num_threads()),
    }


def reply_arrays(model: torch.nn.Module, update_dtype: str = "float32") -> ArrayRecord:
    """The model's weights for the reply; float32 tensors as float16 when the run asks (half the bytes,
    by the wire rule of :mod:`strategies.half_precision`)."""
    arrays = ArrayRecord(model.state_dict())
    return narrow_arrays(arrays) if update_dtype == "float16" else arrays
