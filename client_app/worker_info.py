"""Where a client ran: returned beside its metrics so runs can show placement."""

from __future__ import annotations

import os
import socket

from flwr.app import ConfigRecord
from flwr.common import ConfigRecordValues


def worker_info(partition_id: int, kind: str, device: str = "cpu") -> ConfigRecord:
    info: dict[str, ConfigRecordValues]
    info = {"partition-id": partition_id, "kind": kind, "host": socket.gethostname(), "pid": os.getpid(),
            "device": device}
    try:  # inside a Ray worker (simulation): the Ray node that executed this client
        import ray

        if ray.is_initialized():
            info["ray-node-id"] = str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - placement info is best effort, never fails a round
        pass
    return ConfigRecord(info)
