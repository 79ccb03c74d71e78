"""Central evaluation of the global encoder on held-out data, every k rounds.

Fitting kNN and the linear probe needs features of the training split; on a
real dataset (50k CIFAR images, 85k Speech Commands clips) extracting them
every evaluated round would cost more than the round itself. So the fit uses a
seeded, class-stratified sample of at most ``eval-train-samples`` training
samples per modality, drawn once and kept for the whole run (every round is
scored on the same sample), and the held-out split is always scored whole.
Weights equal to the last evaluated ones (a round that aggregated nothing)
are not evaluated again. The sample size is reported with the accuracies.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord

from data_partition.modality_data import DatasetSplits, ModalityData
from server_app.evaluation import extract_features, knn_accuracy, linear_probe_accuracy


def fit_sample(data: ModalityData, max_samples: int, seed: int) -> ModalityData:
    """At most ``max_samples`` of ``data``, stratified by class when every class can be (0 = all)."""
    if max_samples <= 0 or len(data) <= max_samples:
        return data
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(data))
    counts = np.bincount(data.y)
    stratify = data.y if counts[counts > 0].min() >= 2 and max_samples >= len(counts) else None
    chosen, _ = train_test_split(indices, train_size=max_samples, random_state=seed, stratify=stratify)
    return data.subset(np.sort(chosen))


def weights_digest(arrays: ArrayRecord) -> str:
    h = hashlib.sha256()
    for name, array in arrays.items():
        h.update(name.encode())
        h.update(array.data)
    return h.hexdigest()


class CentralEvaluator:
    """kNN and linear probe per modality: fit on (a sample of) the train split, score the held-out split."""

    def __init__(self, model: torch.nn.Module, transforms: dict, datasets: dict[str, DatasetSplits],
                 device: torch.device, knn_k: int, seed: int, max_train_samples: int = 0) -> None:
        self.model, self.transforms, self.datasets = model, transforms, datasets
        self.device, self.knn_k, self.seed = device, knn_k, seed
        self.fit_data = {m: fit_sample(s.train, max_train_samples, seed) for m, s in datasets.items()}
        self._last: tuple[str, dict[str, float]] | None = None

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        digest = weights_digest(arrays)
        if self._last is not None and self._last[0] == digest:  # unchanged weights: same features, same scores
            return {**self._last[1], "eval-seconds": 0.0, "eval-reused": 1.0}
        self.model.load_state_dict(arrays.to_torch_state_dict())
        started = time.perf_counter()
        out: dict[str, float] = {}
        for modality, splits in self.datasets.items():
            fit = self.fit_data[modality]
            train = extract_features(self.model, self.transforms[modality], fit, self.device)
            test = extract_features(self.model, self.transforms[modality], splits.test, self.device)
            out[f"knn-{modality}"] = knn_accuracy(train, fit.y, test, splits.test.y, self.knn_k)
            out[f"probe-{modality}"] = linear_probe_accuracy(train, fit.y, test, splits.test.y, self.seed)
            out[f"eval-train-samples-{modality}"] = float(len(fit))
            out[f"eval-train-total-{modality}"] = float(len(splits.train))
            out[f"eval-test-samples-{modality}"] = float(len(splits.test))
        out["eval-seconds"] = time.perf_counter() - started
        self._last = (digest, out)
        return out


def as_metric_record(values: dict[str, float]) -> MetricRecord:
    return MetricRecord({k: float(v) for k, v in values.items()})
