"""A deployed client's own data, named by its SuperNode's node config.

In simulation a client's data is its partition of the federation plan
(``partition-id`` / ``num-partitions``). On a real device the SuperNode is
started with ``--node-config "data-dir='/path' ..."`` instead, and the client
trains on everything it finds there (the training split), ignoring the plan:

================= ==============================================================
node-config key   meaning
================= ==============================================================
``data-dir``      A folder holding this device's data, either (a) a data root in
                  a layout the dataset registry reads (``cache/<name>/`` array
                  caches, or a real dataset's standard layout such as
                  ``cifar-10-batches-py/`` or ``speech_commands_v0.02/``), or
                  (b) one array cache itself (``meta.json``, ``train_x.npy``,
                  ``train_y.npy``, ...; see :func:`write_array_cache`).
``modality``      ``visual``, ``audio`` or ``audiovisual``: which data to use.
                  Default: every modality found in ``data-dir``.
``image-dataset`` Dataset names to look for in a data root (default: the run
``audio-dataset`` config's ``image-dataset`` / ``audio-dataset``).
``partition-id``  Optional: a stable number for this device, used to seed its
                  local training (default: the SuperNode's node id).
================= ==============================================================

Embedded datasets (``digits``, ``spoken-digits``) count as present only when
their array cache exists in ``data-dir``: a device never generates data.

A deployed node's run config still names the *server's* datasets and data root;
parsing the run config (``RunConfig``) checks no files, so the device needs
none of them (the server's files are checked once, by ``server_app.preflight``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app_config.modalities import KIND_MODALITIES, MODALITIES
from app_config.run_config import RunConfig
from data_partition.array_cache import cache_ready, cached_splits
from data_partition.client_data import LocalData
from data_partition.datasets import DATASETS, cache_folder, layout_problem, load_splits
from data_partition.modality_data import AUDIO, IMAGE, DatasetSplits, ModalityData

DATA_DIR = "data-dir"
KINDS = {mods: kind for kind, mods in KIND_MODALITIES.items()}


class NodeConfigError(ValueError):
    """A node-config value that cannot work; one line naming the key."""


@dataclass(frozen=True)
class LocalSource:
    """Where a deployed client's data lives (hashable: used as a cache key)."""

    data_dir: str
    modality: str  # '' = whatever is found
    image_dataset: str
    audio_dataset: str


def is_deployed(node_config) -> bool:
    return DATA_DIR in node_config


def local_source(node_config, config: RunConfig) -> LocalSource | None:
    """The node's data source, or None in simulation (no ``data-dir``)."""
    if not is_deployed(node_config):
        return None
    data_dir = str(node_config[DATA_DIR])
    modality = str(node_config.get("modality", ""))
    if modality and modality not in KIND_MODALITIES:
        raise NodeConfigError(f"node config modality: unknown value {modality!r}; valid: {', '.join(KIND_MODALITIES)}")
    image = str(node_config.get("image-dataset", config.image_dataset))
    audio = str(node_config.get("audio-dataset", config.audio_dataset))
    for key, name, kind in (("image-dataset", image, IMAGE), ("audio-dataset", audio, AUDIO)):
        if name and (name not in DATASETS or DATASETS[name].modality != kind):
            raise NodeConfigError(f"node config {key}: unknown {kind} dataset {name!r}")
    return LocalSource(data_dir, modality, image, audio)


def _found(source: LocalSource, folder: Path) -> dict[str, ModalityData]:
    """Training splits present in ``folder``, per modality."""
    if cache_ready(folder):  # the folder is one array cache
        splits = cached_splits(folder, _no_build(folder))
        return {splits.train.modality: splits.train}
    found = {}
    for modality, name in ((IMAGE, source.image_dataset), (AUDIO, source.audio_dataset)):
        if not name:
            continue
        spec = DATASETS[name]
        present = cache_ready(cache_folder(name, folder)) or (
            spec.needs_source and layout_problem(name, folder) is None)
        if present:
            found[modality] = load_splits(name, folder).train
    return found


def _no_build(folder: Path):
    def build(_scratch):
        raise NodeConfigError(f"node config data-dir: {str(folder)!r} holds no array cache")
    return build


def load_local_data(source: LocalSource) -> tuple[str, LocalData]:
    """``(kind, data)`` for a deployed client: all training samples of its modalities."""
    folder = Path(source.data_dir).expanduser()
    if not folder.is_dir():
        raise NodeConfigError(f"node config data-dir: folder {source.data_dir!r} does not exist on this node")
    found = _found(source, folder)
    wanted = KIND_MODALITIES[source.modality] if source.modality else tuple(m for m in MODALITIES if m in found)
    missing = [m for m in wanted if m not in found]
    if missing or not wanted:
        names = {IMAGE: source.image_dataset, AUDIO: source.audio_dataset}
        looked = ", ".join(f"{m} ({names[m] or 'no dataset named'})" for m in (missing or MODALITIES))
        raise NodeConfigError(
            f"node config data-dir: no {looked} data in {source.data_dir!r}; expected an array cache "
            "(meta.json, train_x.npy, train_y.npy) or a data root with cache/<dataset>/ or a dataset's layout")
    tensors = {m: torch.from_numpy(np.array(found[m].x)) for m in wanted}  # a writable in-memory copy
    # labels: read only to pair images with clips of the same class in ModalityMirror's phase 2
    labels = {m: torch.from_numpy(np.asarray(found[m].y).astype(np.int64)) for m in wanted}
    data = LocalData(tensors, labels)
    if len(data.modalities) != len(wanted):
        raise NodeConfigError(f"node config data-dir: {source.data_dir!r} holds fewer than 2 samples of a modality")
    return KINDS[tuple(m for m in MODALITIES if m in wanted)], data


def write_array_cache(folder: Path, name: str, train: ModalityData, test: ModalityData | None = None) -> Path:
    """Store samples as an array cache a deployed node can read with ``data-dir=<folder>``.

    ``test`` defaults to an empty split (deployed clients only train).
    """
    if test is None:
        test = train.subset(np.arange(0))
    splits = DatasetSplits(name, train, test)
    cached_splits(Path(folder), lambda _scratch: splits)
    return Path(folder)
