"""What a worker process keeps between messages: one run's config, model and client data.

Flower rebuilds the ClientApp call for each message, but a worker (a Ray actor
in simulation, a SuperNode's ClientApp process on a device) lives for the
whole run and serves many virtual clients in turn. :class:`WorkerCache` keeps,
for one run at a time:

* the parsed run config (validated once per run, not per message);
* one model with its training views and device, whose weights each round replaces;
* the data of every partition this worker has served (partitions are
  disjoint, so at most one copy of the dataset), with the federation (datasets
  and plan) they were cut from; a deployed node's own data instead
  (``client_app.device_data``).

A message of another run empties it. The ClientApp owns one instance
(``client_app.app.WORKER``); tests and benchmarks make their own.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from app_config.run_config import RunConfig
from client_app.device_data import LocalSource, load_local_data
from client_app.partial_update import initial_model
from data_partition.client_data import LocalData
from data_partition.datasets import load_splits, resolve_data_root
from data_partition.federation import Federation
from models.device import resolve_device
from models.factory import build_model, training_views
from models.per_modality import Network
from models.ssl_model import head_part


@dataclass
class ClientState:
    kind: str
    model: Network
    data: LocalData
    views: dict[str, nn.Module]
    device: torch.device
    # seconds this call spent building what the worker did not hold yet (0 when it did): the cold start
    setup_seconds: dict[str, float] = field(default_factory=dict)


class WorkerCache:
    """One run's config, model and client data in this worker process (see the module docstring)."""

    def __init__(self) -> None:
        self._run_key: object = None
        self._config: tuple[int, dict, RunConfig] | None = None
        self._model: tuple[Network, dict[str, nn.Module], torch.device] | None = None
        self._federations: dict[int, Federation] = {}
        self._parts: dict[object, tuple[str, LocalData]] = {}
        self._import_seconds: float | None = None
        self._initial: dict | None = None
        self._public: tuple[str, dict[str, torch.Tensor]] | None = None

    def initial_model(self, run_id: int, config: RunConfig) -> dict:
        """The seeded initial model's state dict (the one the server builds from ``seed``), built once per run."""
        self._start((run_id, config))
        if self._initial is None:
            self._initial = initial_model(config)
        return self._initial

    def public_samples(self, run_id: int, config: RunConfig, indices: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """CreamFL's public samples at ``indices`` of each modality's training split, read once per run and set."""
        self._start((run_id, config))
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(indices[m], dtype=np.int64).tobytes()
                                         for m in sorted(indices))).hexdigest()
        if self._public is None or self._public[0] != digest:
            root = resolve_data_root(config.data_root)
            names = {"image": config.image_dataset, "audio": config.audio_dataset}
            samples = {}
            for modality, idx in indices.items():
                train = load_splits(names[modality], root).train
                if len(idx) and (int(np.min(idx)) < 0 or int(np.max(idx)) >= len(train)):
                    raise ValueError(f"creamfl: {modality} public positions outside the training split "
                                     f"(0..{len(train) - 1})")
                samples[modality] = torch.from_numpy(np.ascontiguousarray(train.x[np.asarray(idx, dtype=np.int64)]))
            self._public = (digest, samples)
        return self._public[1]

    def initial_head(self, run_id: int, config: RunConfig) -> dict:
        """The seeded initial projection head: the head of :meth:`initial_model`, built once per run."""
        return head_part(self.initial_model(run_id, config))

    def note_imports(self, seconds: float) -> None:
        """The app's import time in this process (reported with the first message only)."""
        self._import_seconds = seconds

    def take_import_seconds(self) -> float:
        seconds, self._import_seconds = self._import_seconds or 0.0, 0.0
        return seconds

    def config(self, run_id: int, run_config: Mapping) -> RunConfig:
        """The run's RunConfig, parsed on the run's first message and reused after that."""
        values = dict(run_config)
        if self._config is None or self._config[:2] != (run_id, values):
            self._config = (run_id, values, RunConfig.from_mapping(values))
        return self._config[2]

    def _start(self, run_key: object) -> None:
        if self._run_key != run_key:  # a new run: forget the previous one's model and data
            self._model = None
            self._initial = None
            self._public = None
            self._federations.clear()
            self._parts.clear()
            self._run_key = run_key

    def state(self, config: RunConfig, run_id: int, partition_id: int, num_partitions: int,
              local: LocalSource | None = None) -> ClientState:
        """The model (one per worker) and this client's data: its partition, or a device's own data (``local``)."""
        self._start((run_id, config))
        clock = time.perf_counter
        setup = {"model-build-seconds": 0.0, "augment-setup-seconds": 0.0, "data-load-seconds": 0.0}
        if self._model is None:
            started = clock()
            device = resolve_device(config.device)
            model = build_model(config).to(device)
            built = clock()
            self._model = (model, training_views(config, device), device)
            setup["model-build-seconds"], setup["augment-setup-seconds"] = built - started, clock() - built
        key = (partition_id, num_partitions) if local is None else local
        if key not in self._parts:
            started = clock()
            if local is not None:
                self._parts[key] = load_local_data(local)
            else:
                federation = self._federations.setdefault(num_partitions, Federation(config, num_partitions))
                part, data = federation.part(partition_id)
                self._parts[key] = (part.kind, data)
            setup["data-load-seconds"] = clock() - started
        model, views, device = self._model
        kind, data = self._parts[key]
        return ClientState(kind, model, data, views, device, setup)
