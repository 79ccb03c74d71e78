"""Central and frozen-encoder evaluation of the per-modality layout take each modality's features from its
own network."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from flwr.app import ArrayRecord

from app_config.run_config import RunConfig
from data_partition.modality_data import DatasetSplits, ModalityData
from models.per_modality import PerModalityModel
from models.ssl_model import SSLModel
from server_app.central_eval import CentralEvaluator


def _splits(modality: str) -> DatasetSplits:
    rng = np.random.default_rng(0)

    def data(n: int) -> ModalityData:
        y = np.arange(n) % 2
        return ModalityData(modality, rng.normal(size=(n, 4)).astype(np.float32), y, ("a", "b"))
    return DatasetSplits("toy", data(20), data(10))


def _recording(seen: list):
    def extract(model, preprocess, data, device, batch_size=256):
        seen.append((data.modality, model))
        return np.random.default_rng(len(seen)).normal(size=(len(data), 3)).astype(np.float32)
    return extract


def test_central_evaluation_uses_each_modality_s_own_encoder(monkeypatch):
    import server_app.central_eval as central

    model = PerModalityModel("test_resnet", 16, 8)
    seen: list = []
    monkeypatch.setattr(central, "extract_features", _recording(seen))
    evaluator = CentralEvaluator(model, {"image": torch.nn.Identity(), "audio": torch.nn.Identity()},
                                 {"image": _splits("image"), "audio": _splits("audio")}, torch.device("cpu"),
                                 knn_k=3, seed=0)
    scores = evaluator.evaluate(ArrayRecord(model.state_dict()))
    assert {"knn-image", "probe-image", "knn-audio", "probe-audio"} <= set(scores)
    encoders = [(m, net) for m, net in seen if isinstance(net, SSLModel)]  # the rest: the raw-input floor
    assert encoders == [("image", model.image)] * 2 + [("audio", model.audio)] * 2


def test_the_frozen_encoder_evaluation_uses_each_modality_s_own_encoder(monkeypatch):
    import ssl_method.feature_eval as feature_eval
    from experiments.frozen_eval import Encoder, encode

    config = dataclasses.replace(RunConfig(), encoder="test_resnet", encoder_layout="per-modality",
                                 projection_hidden_dim=16, projection_dim=8, device="cpu")
    model = PerModalityModel("test_resnet", 16, 8)
    seen: list = []
    monkeypatch.setattr(feature_eval, "extract_features", _recording(seen))
    encode(Encoder(config, model), _splits("audio"), "audio")
    assert [net for _, net in seen] == [model.audio, model.audio]
