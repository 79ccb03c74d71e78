"""Frozen-encoder evaluation: kNN and linear-probe accuracy per modality."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn as nn
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from data_partition.modality_data import ModalityData


class FeatureModel(Protocol):
    """What evaluation needs of a model: eval mode and backbone features (an SSLModel, the raw input)."""

    def eval(self) -> nn.Module: ...

    def features(self, x: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def extract_features(model: FeatureModel, preprocess: nn.Module, data: ModalityData,
                     device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Backbone features (before the projection head), as SimCLR evaluates."""
    model.eval()
    out = []
    for start in tqdm(range(0, len(data), batch_size), desc=f"features {data.modality}", unit="batch", leave=False,
                      disable=None):
        batch = torch.from_numpy(np.array(data.x[start: start + batch_size])).to(device)
        out.append(model.features(preprocess(batch)).float().cpu())
    return torch.cat(out).numpy()


class RawInput(nn.Module):
    """The evaluation transform's output flattened, as "features": the floor a trained encoder has to beat."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()))  # gives the module a device

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int) -> float:
    """Cosine kNN with distance weighting on L2-normalised features."""
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine", weights="distance")
    knn.fit(unit(train_x), train_y)
    return float((knn.predict(unit(test_x)) == test_y).mean())


def linear_probe(seed: int = 0):
    """The evaluation's linear probe: standardised features, then logistic regression (unfitted)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0, random_state=seed))


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          seed: int = 0) -> float:
    probe = linear_probe(seed)
    probe.fit(train_x, train_y)
    return float((probe.predict(test_x) == test_y).mean())
