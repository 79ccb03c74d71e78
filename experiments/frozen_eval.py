"""Evaluating a frozen encoder: features, kNN and linear probe per modality, out-of-domain sets, fusion.

The library behind ``python -m experiments.evaluate_encoder`` (see that
module for what each number means) and the suite's evaluation
(``experiments.suite_eval``). Features are the backbone's (before the
projection head), fitted and scored with scikit-learn exactly as the server's
central evaluation does (``ssl_method.feature_eval``).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data_partition.datasets import resolve_data_root
from data_partition.modality_data import AUDIO, IMAGE, DatasetSplits, ModalityData
from experiments.eval_sets import EvalSet, capped, load_eval_splits, parse_eval_set


@dataclass
class Encoder:
    """A frozen network plus the run config that built it."""

    config: object  # app_config.run_config.RunConfig
    model: torch.nn.Module
    key: str = ""  # identifies the weights, for feature caches

    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.model.parameters(), self.model.buffers())).device


def run_config_of(folder: Path):
    """The RunConfig stored in a run folder (keys this code does not know are ignored)."""
    from app_config.run_config import RunConfig

    stored = json.loads((Path(folder) / "config.json").read_text())
    known = RunConfig.keys()
    return RunConfig.from_mapping({k: v for k, v in stored.items() if k in known})


def load_encoder(folder: Path, checkpoint: str = "final_model.pt", device: str | None = None) -> Encoder:
    from models.device import resolve_device
    from models.factory import build_model

    folder = Path(folder)
    config = run_config_of(folder)
    model = build_model(config)
    model.load_state_dict(torch.load(folder / checkpoint, map_location="cpu", weights_only=True))
    model.to(resolve_device(device or config.device)).eval()
    return Encoder(config, model, key=f"{folder.resolve()}/{checkpoint}")


@dataclass
class Features:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...] = ()


def encode(encoder: Encoder, splits: DatasetSplits, modality: str) -> Features:
    """Backbone features of both splits through the run's deterministic evaluation preprocessing."""
    from models.factory import eval_transforms
    from models.per_modality import modality_network
    from ssl_method.feature_eval import extract_features

    preprocess = eval_transforms(encoder.config, encoder.device)[modality]
    network = modality_network(encoder.model, modality)  # a per-modality run: that modality's own encoder
    train = extract_features(network, preprocess, splits.train, encoder.device) if len(splits.train) else \
        np.zeros((0, 1), np.float32)
    test = extract_features(network, preprocess, splits.test, encoder.device)
    return Features(train, np.asarray(splits.train.y), test, np.asarray(splits.test.y), splits.test.classes)


# --------------------------------------------------------------------------- scores
def score(features: Features, knn_k: int, seed: int) -> dict[str, float]:
    """kNN (cosine, distance-weighted) and linear-probe accuracy, as the server's central evaluation."""
    from ssl_method.feature_eval import knn_accuracy, linear_probe_accuracy

    f = features
    return {
        "knn": knn_accuracy(f.train_x, f.train_y, f.test_x, f.test_y, knn_k),
        "probe": linear_probe_accuracy(f.train_x, f.train_y, f.test_x, f.test_y, seed),
    }


def pair_by_class(image_y: np.ndarray, audio_y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair every image with a random clip of the same class (seeded; clips may repeat).

    Returns (image indices, audio indices); images whose class has no clip are left out.
    """
    rng = np.random.default_rng(seed)
    image_idx, audio_idx = [], []
    by_class = {c: np.flatnonzero(audio_y == c) for c in np.unique(audio_y)}
    for i, label in enumerate(image_y):
        pool = by_class.get(label)
        if pool is None or not len(pool):
            continue
        image_idx.append(i)
        audio_idx.append(int(pool[rng.integers(len(pool))]))
    return np.asarray(image_idx, dtype=np.int64), np.asarray(audio_idx, dtype=np.int64)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def fusion_scores(image: Features, audio: Features, knn_k: int, seed: int) -> dict[str, float]:
    """Concatenated (per-modality L2-normalised) features of class-paired samples vs each modality alone."""
    tr_i, tr_a = pair_by_class(image.train_y, audio.train_y, seed)
    te_i, te_a = pair_by_class(image.test_y, audio.test_y, seed + 1)
    y_train, y_test = image.train_y[tr_i], image.test_y[te_i]
    views = {
        "image": (image.train_x[tr_i], image.test_x[te_i]),
        "audio": (audio.train_x[tr_a], audio.test_x[te_a]),
    }
    views["fusion"] = (np.concatenate([_unit(views["image"][0]), _unit(views["audio"][0])], axis=1),
                       np.concatenate([_unit(views["image"][1]), _unit(views["audio"][1])], axis=1))
    out: dict[str, float] = {"fusion-pairs": float(len(te_i))}
    for name, (train_x, test_x) in views.items():
        s = score(Features(train_x, y_train, test_x, y_test), knn_k, seed)
        if name == "fusion":
            out["fusion-probe"], out["fusion-knn"] = s["probe"], s["knn"]
        else:
            out[f"paired-probe-{name}"], out[f"paired-knn-{name}"] = s["probe"], s["knn"]
    return out


def fusion_problem(image: Features, audio: Features) -> str | None:
    """Why the two in-domain datasets cannot be class-paired, or None."""
    if len(image.classes) != len(audio.classes):
        return f"{len(image.classes)} image classes vs {len(audio.classes)} audio classes"
    return None


# --------------------------------------------------------------------------- whole evaluation
@dataclass(frozen=True)
class EvalSettings:
    knn_k: int = 10
    out_of_domain: tuple[str, ...] = ()
    fusion: bool = True
    fusion_image_dataset: str | None = None  # None = the in-domain image set
    fusion_audio_dataset: str | None = None
    max_train_samples: int = 0  # 0 = whole split
    max_test_samples: int = 0
    image_dataset: str | None = None  # None = the run's own image-dataset
    audio_dataset: str | None = None
    data_root: str | None = None  # None = the run's data root
    seed: int = 0


@dataclass
class FeatureCache:
    """(encoder key, set name) -> Features; lets a suite encode each run's data once."""

    store: dict = field(default_factory=dict)

    def get(self, encoder: Encoder, eval_set: EvalSet, settings: EvalSettings) -> Features:
        key = (encoder.key, eval_set.name, settings.max_train_samples, settings.max_test_samples, settings.seed)
        if not encoder.key or key not in self.store:
            root = Path(settings.data_root) if settings.data_root else resolve_data_root(encoder.config.data_root)
            splits = load_eval_splits(eval_set, root, settings.max_train_samples, settings.max_test_samples,
                                      settings.seed)
            feats = encode(encoder, splits, eval_set.modality)
            if not encoder.key:
                return feats
            self.store[key] = feats
        return self.store[key]


def in_domain_sets(settings: EvalSettings, image_encoder: Encoder | None,
                   audio_encoder: Encoder | None) -> dict[str, EvalSet]:
    out = {}
    image = settings.image_dataset if settings.image_dataset is not None else \
        (image_encoder.config.image_dataset if image_encoder else "")
    audio = settings.audio_dataset if settings.audio_dataset is not None else \
        (audio_encoder.config.audio_dataset if audio_encoder else "")
    if image and image_encoder is not None:
        out[IMAGE] = EvalSet(image)
    if audio and audio_encoder is not None:
        out[AUDIO] = EvalSet(audio)
    return out


def evaluate(image_encoder: Encoder | None, audio_encoder: Encoder | None, settings: EvalSettings,
             cache: FeatureCache | None = None) -> dict[str, object]:
    """All numbers for one model (``image_encoder is audio_encoder``) or a pair of modality-specific models.

    Keys: ``probe-image``, ``knn-image``, ``probe-audio``, ``knn-audio``;
    ``ood-probe-<set>``, ``ood-knn-<set>``; ``fusion-probe``, ``fusion-knn``,
    ``paired-probe-image``, ``paired-probe-audio`` (each modality alone on the
    same pairs), ``fusion-pairs``; ``fusion-skipped`` (a reason) when the
    classes do not correspond; ``eval-seconds``.
    """
    cache = cache or FeatureCache()
    started = time.perf_counter()
    encoders = {IMAGE: image_encoder, AUDIO: audio_encoder}
    out: dict[str, object] = {}
    feats: dict[str, Features] = {}
    in_domain = in_domain_sets(settings, image_encoder, audio_encoder)
    with tqdm(total=len(in_domain) + len(settings.out_of_domain), desc="evaluating sets", unit="set",
              leave=False, disable=None) as bar:
        for modality, eval_set in in_domain.items():
            bar.set_postfix_str(eval_set.name)
            feats[modality] = cache.get(encoders[modality], eval_set, settings)
            s = score(feats[modality], settings.knn_k, settings.seed)
            out[f"probe-{modality}"], out[f"knn-{modality}"] = s["probe"], s["knn"]
            bar.update()
        for text in settings.out_of_domain:
            eval_set = parse_eval_set(text)
            encoder = encoders[eval_set.modality]
            bar.set_postfix_str(eval_set.name)
            bar.update()
            if encoder is None:
                continue
            s = score(cache.get(encoder, eval_set, settings), settings.knn_k, settings.seed)
            out[f"ood-probe-{eval_set.name}"], out[f"ood-knn-{eval_set.name}"] = s["probe"], s["knn"]
    pair = fusion_features(settings, encoders, feats, cache) if settings.fusion else None
    if pair is not None:
        problem = fusion_problem(*pair)
        if problem:
            out["fusion-skipped"] = problem
        else:
            out.update(fusion_scores(*pair, settings.knn_k, settings.seed))
    out["eval-seconds"] = time.perf_counter() - started
    return out


def fusion_features(settings: EvalSettings, encoders: dict, feats: dict[str, Features],
                    cache: FeatureCache) -> tuple[Features, Features] | None:
    """(image, audio) features to fuse: the named fusion sets, else the in-domain ones; None if one is missing."""
    pair = []
    for modality, name in ((IMAGE, settings.fusion_image_dataset), (AUDIO, settings.fusion_audio_dataset)):
        if name and encoders[modality] is not None:
            pair.append(cache.get(encoders[modality], EvalSet(name), settings))
        elif not name and modality in feats:
            pair.append(feats[modality])
        else:
            return None
    return pair[0], pair[1]


def heldout_features(encoder: Encoder, settings: EvalSettings, max_points: int = 0) -> dict[str, Features]:
    """Held-out features of each in-domain modality (for t-SNE plots)."""
    from data_partition.datasets import load_splits

    root = Path(settings.data_root) if settings.data_root else resolve_data_root(encoder.config.data_root)
    out = {}
    for modality, eval_set in in_domain_sets(settings, encoder, encoder).items():
        splits = load_splits(eval_set.dataset, root)
        test = capped(splits.test, max_points, settings.seed)
        empty = ModalityData(modality, test.x[:0], test.y[:0], test.classes)
        out[modality] = encode(encoder, DatasetSplits(eval_set.name, empty, test), modality)
    return out
