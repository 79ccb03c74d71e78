"""Evaluate a saved global encoder: kNN and linear probe per modality, out-of-domain sets, fusion.

Input is a run folder as the ServerApp (or ``experiments.centralized``) writes
it: ``config.json`` rebuilds the network, ``final_model.pt`` (or a
``round-NNNN.pt``) holds its weights. The encoder is frozen; its backbone
features (before the projection head) are fitted and scored with scikit-learn,
exactly as the server's central evaluation does (``server_app.evaluation``):

- **in-domain**: each modality's dataset, probe/kNN fitted on its training
  split and scored on its held-out split (for the embedded spoken digits the
  held-out split is two voices never heard in training);
- **out-of-domain**: extra sets named ``<dataset>`` or ``<dataset>:<shift>``,
  each a registered dataset (``cifar10``, ``esc50``, ... once its files are
  under the data root) optionally passed through a fixed domain shift
  (:data:`SHIFTS`: ``invert``/``rot90`` for images, ``noise<N>db``/``reverse``
  for audio). The probe is fitted on the set's own training split, so this
  measures how well the frozen features transfer;
- **fusion**: image and audio datasets whose classes correspond (the embedded
  digits "0".."9" and spoken "zero".."nine") give *class-paired* samples: each
  image is paired with a randomly drawn (seeded) clip of the same class from
  the same split. The two L2-normalised feature vectors are concatenated and
  probed, and reported beside each modality alone on the same pairs. The pairs
  are not recorded together; this only measures whether the two modalities'
  features carry complementary information. Other sets can be named for fusion
  (``--fusion-image-dataset vggsound-frames --fusion-audio-dataset vggsound-audio``:
  frames and sound of the same VGGSound classes) when the in-domain classes do
  not correspond.

Two runs can be evaluated together (``--audio-run``): images through the first
encoder, audio through the second (the "separate models" baseline).

    python -m experiments.evaluate_encoder runs/<run> --ood digits:invert --ood spoken-digits:noise0db
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_partition.modality_data import AUDIO, IMAGE, DatasetSplits, ModalityData


# --------------------------------------------------------------------------- evaluation sets
def _invert(x: np.ndarray, _rng) -> np.ndarray:
    return 255 - x


def _rot90(x: np.ndarray, _rng) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(x, k=1, axes=(1, 2)))


def _reverse(x: np.ndarray, _rng) -> np.ndarray:
    return np.ascontiguousarray(x[:, ::-1])


def _noise(snr_db: float):
    def add(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        wave = x.astype(np.float32)
        power = np.maximum((wave ** 2).mean(axis=1, keepdims=True), 1.0)
        noise = rng.standard_normal(wave.shape).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
        return np.clip(np.round(wave + noise), -32768, 32767).astype(np.int16)
    return add


SHIFTS: dict[str, tuple[str, str]] = {
    "invert": (IMAGE, "pixel values inverted (dark digits on a light background)"),
    "rot90": (IMAGE, "rotated by 90 degrees"),
    "reverse": (AUDIO, "clips played backwards"),
    "noise<N>db": (AUDIO, "white noise mixed in at N dB SNR"),
}


def _shift_function(shift: str):
    if shift == "invert":
        return _invert
    if shift == "rot90":
        return _rot90
    if shift == "reverse":
        return _reverse
    found = re.fullmatch(r"noise(-?\d+(?:\.\d+)?)db", shift)
    if found:
        return _noise(float(found.group(1)))
    return None


def shift_modality(shift: str) -> str | None:
    if shift.startswith("noise"):
        return AUDIO if _shift_function(shift) is not None else None
    return SHIFTS[shift][0] if shift in SHIFTS else None


@dataclass(frozen=True)
class EvalSet:
    """A dataset, optionally with a domain shift applied to both of its splits."""

    dataset: str
    shift: str = ""

    @property
    def name(self) -> str:
        return f"{self.dataset}:{self.shift}" if self.shift else self.dataset

    @property
    def modality(self) -> str:
        from data_partition.datasets import DATASETS

        return DATASETS[self.dataset].modality


def parse_eval_set(text: str) -> EvalSet:
    """``'digits:invert'`` -> EvalSet; ValueError (one line) for unknown datasets or shifts."""
    from data_partition.datasets import DATASETS

    dataset, _, shift = text.partition(":")
    if dataset not in DATASETS:
        raise ValueError(f"out-of-domain set {text!r}: unknown dataset {dataset!r}; "
                         f"valid: {', '.join(sorted(DATASETS))}")
    if shift:
        modality = shift_modality(shift)
        if modality is None:
            raise ValueError(f"out-of-domain set {text!r}: unknown shift {shift!r}; valid: {', '.join(SHIFTS)}")
        if modality != DATASETS[dataset].modality:
            raise ValueError(f"out-of-domain set {text!r}: shift {shift!r} applies to {modality}, "
                             f"but {dataset!r} is {DATASETS[dataset].modality}")
    return EvalSet(dataset, shift)


def check_dataset(name: str, modality: str) -> str:
    """``name`` if it is a registered dataset of ``modality``; ValueError (one line) otherwise."""
    from data_partition.datasets import dataset_names

    if name not in dataset_names(modality):
        raise ValueError(f"unknown {modality} dataset {name!r}; valid: {', '.join(dataset_names(modality))}")
    return name


def describe(eval_set: EvalSet) -> str:
    if not eval_set.shift:
        return f"{eval_set.dataset} (held-out split)"
    key = "noise<N>db" if eval_set.shift.startswith("noise") else eval_set.shift
    return f"{eval_set.dataset}, {SHIFTS[key][1].replace('N dB', eval_set.shift[5:-2] + ' dB')}"


def _capped(data: ModalityData, cap: int, seed: int) -> ModalityData:
    if not cap or len(data) <= cap:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data), size=cap, replace=False))
    return data.subset(keep)


def load_eval_splits(eval_set: EvalSet, data_root: Path, max_train: int = 0, max_test: int = 0,
                     seed: int = 0) -> DatasetSplits:
    """The set's train/test splits (capped, seeded), with its shift applied."""
    from data_partition.datasets import load_splits

    splits = load_splits(eval_set.dataset, data_root)
    train, test = _capped(splits.train, max_train, seed), _capped(splits.test, max_test, seed + 1)
    if eval_set.shift:
        fn = _shift_function(eval_set.shift)
        rng = np.random.default_rng(seed + 2)
        train = ModalityData(train.modality, fn(np.asarray(train.x), rng), train.y, train.classes)
        test = ModalityData(test.modality, fn(np.asarray(test.x), rng), test.y, test.classes)
    return DatasetSplits(eval_set.name, train, test)


# --------------------------------------------------------------------------- encoders and features
@dataclass
class Encoder:
    """A frozen network plus the run config that built it."""

    config: object  # app_config.run_config.RunConfig
    model: torch.nn.Module
    key: str = ""  # identifies the weights, for feature caches

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def run_config_of(folder: Path):
    """The RunConfig stored in a run folder (keys this code does not know are ignored)."""
    from app_config.run_config import RunConfig

    stored = json.loads((Path(folder) / "config.json").read_text())
    known = RunConfig.keys()
    return RunConfig.from_mapping({k: v for k, v in stored.items() if k in known})


def load_encoder(folder: Path, checkpoint: str = "final_model.pt", device: str | None = None) -> Encoder:
    from client_app.task import build_model
    from models.device import resolve_device

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
    from client_app.task import eval_transforms
    from server_app.evaluation import extract_features

    preprocess = eval_transforms(encoder.config, encoder.device)[modality]
    train = extract_features(encoder.model, preprocess, splits.train, encoder.device) if len(splits.train) else \
        np.zeros((0, 1), np.float32)
    test = extract_features(encoder.model, preprocess, splits.test, encoder.device)
    return Features(train, np.asarray(splits.train.y), test, np.asarray(splits.test.y), splits.test.classes)


# --------------------------------------------------------------------------- scores
def score(features: Features, knn_k: int, seed: int) -> dict[str, float]:
    """kNN (cosine, distance-weighted) and linear-probe accuracy, as the server's central evaluation."""
    from server_app.evaluation import knn_accuracy, linear_probe_accuracy

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
            root = Path(settings.data_root) if settings.data_root else encoder.config.resolved_data_root()
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
    for modality, eval_set in in_domain_sets(settings, image_encoder, audio_encoder).items():
        feats[modality] = cache.get(encoders[modality], eval_set, settings)
        s = score(feats[modality], settings.knn_k, settings.seed)
        out[f"probe-{modality}"], out[f"knn-{modality}"] = s["probe"], s["knn"]
    for text in settings.out_of_domain:
        eval_set = parse_eval_set(text)
        encoder = encoders[eval_set.modality]
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

    root = Path(settings.data_root) if settings.data_root else encoder.config.resolved_data_root()
    out = {}
    for modality, eval_set in in_domain_sets(settings, encoder, encoder).items():
        splits = load_splits(eval_set.dataset, root)
        test = _capped(splits.test, max_points, settings.seed)
        empty = ModalityData(modality, test.x[:0], test.y[:0], test.classes)
        out[modality] = encode(encoder, DatasetSplits(eval_set.name, empty, test), modality)
    return out


# --------------------------------------------------------------------------- CLI
def format_results(results: dict[str, object]) -> str:
    lines = []
    for key in sorted(results):
        value = results[key]
        lines.append(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from experiments.common import setup_logging

    setup_logging()
    parser = argparse.ArgumentParser(description="kNN / linear probe per modality, out-of-domain sets and fusion "
                                                 "for a saved encoder")
    parser.add_argument("run", type=Path, help="run folder (config.json + final_model.pt)")
    parser.add_argument("--audio-run", type=Path, default=None,
                        help="evaluate audio with this run's encoder instead (separate-models baseline)")
    parser.add_argument("--checkpoint", default="final_model.pt", help="weights file in the run folder(s)")
    parser.add_argument("--ood", action="append", default=[],
                        help="out-of-domain set <dataset>[:<shift>], repeatable; shifts: " + ", ".join(SHIFTS))
    parser.add_argument("--no-fusion", action="store_true")
    parser.add_argument("--fusion-image-dataset", default=None, help="fuse this image set (default: in-domain)")
    parser.add_argument("--fusion-audio-dataset", default=None, help="fuse this audio set (default: in-domain)")
    parser.add_argument("--knn-k", type=int, default=None, help="default: the run's knn-k")
    parser.add_argument("--max-train", type=int, default=0, help="cap on training samples per set (0 = all)")
    parser.add_argument("--max-test", type=int, default=0, help="cap on held-out samples per set (0 = all)")
    parser.add_argument("--image-dataset", default=None, help="default: the run's image-dataset")
    parser.add_argument("--audio-dataset", default=None, help="default: the run's audio-dataset")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    from experiments.cpu_lock import run_lock

    try:
        for text in args.ood:
            parse_eval_set(text)
        for name, modality in ((args.fusion_image_dataset, IMAGE), (args.fusion_audio_dataset, AUDIO)):
            if name:
                check_dataset(name, modality)
        image_encoder = load_encoder(args.run, args.checkpoint)
        audio_encoder = load_encoder(args.audio_run, args.checkpoint) if args.audio_run else image_encoder
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = EvalSettings(
        knn_k=args.knn_k or image_encoder.config.knn_k, out_of_domain=tuple(args.ood), fusion=not args.no_fusion,
        fusion_image_dataset=args.fusion_image_dataset, fusion_audio_dataset=args.fusion_audio_dataset,
        max_train_samples=args.max_train, max_test_samples=args.max_test,
        image_dataset=args.image_dataset, audio_dataset=args.audio_dataset, seed=image_encoder.config.seed,
    )
    with run_lock():
        results = evaluate(image_encoder, audio_encoder, settings)
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
