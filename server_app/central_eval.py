"""Central evaluation of the global encoder on held-out data, every k rounds."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, MetricRecord

from data_partition.modality_data import DatasetSplits
from server_app.evaluation import extract_features, knn_accuracy, linear_probe_accuracy


class CentralEvaluator:
    """kNN and linear probe per modality: fit on the train split, score the held-out split."""

    def __init__(self, model: torch.nn.Module, transforms: dict, datasets: dict[str, DatasetSplits],
                 device: torch.device, knn_k: int, seed: int) -> None:
        self.model, self.transforms, self.datasets = model, transforms, datasets
        self.device, self.knn_k, self.seed = device, knn_k, seed

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        started = time.perf_counter()
        out: dict[str, float] = {}
        for modality, splits in self.datasets.items():
            train = extract_features(self.model, self.transforms[modality], splits.train, self.device)
            test = extract_features(self.model, self.transforms[modality], splits.test, self.device)
            out[f"knn-{modality}"] = knn_accuracy(train, splits.train.y, test, splits.test.y, self.knn_k)
            out[f"probe-{modality}"] = linear_probe_accuracy(train, splits.train.y, test, splits.test.y, self.seed)
        out["eval-seconds"] = time.perf_counter() - started
        return out


def as_metric_record(values: dict[str, float]) -> MetricRecord:
    return MetricRecord({k: float(v) for k, v in values.items()})
