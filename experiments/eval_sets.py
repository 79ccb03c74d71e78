"""Evaluation sets: a registered dataset, optionally under a fixed domain shift, capped and seeded.

``<dataset>`` or ``<dataset>:<shift>`` names a set (:func:`parse_eval_set`);
:data:`SHIFTS` are ``invert``/``rot90`` for images and ``noise<N>db``/``reverse``
for audio. Used by the encoder evaluation (``experiments.frozen_eval``) and
checked by the suite before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_partition.modality_data import AUDIO, IMAGE, DatasetSplits, ModalityData


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


def capped(data: ModalityData, cap: int, seed: int) -> ModalityData:
    if not cap or len(data) <= cap:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data), size=cap, replace=False))
    return data.subset(keep)


def load_eval_splits(eval_set: EvalSet, data_root: Path, max_train: int = 0, max_test: int = 0,
                     seed: int = 0) -> DatasetSplits:
    """The set's train/test splits (capped, seeded), with its shift applied."""
    from data_partition.datasets import load_splits

    splits = load_splits(eval_set.dataset, data_root)
    train, test = capped(splits.train, max_train, seed), capped(splits.test, max_test, seed + 1)
    if eval_set.shift:
        fn = _shift_function(eval_set.shift)
        rng = np.random.default_rng(seed + 2)
        train = ModalityData(train.modality, fn(np.asarray(train.x), rng), train.y, train.classes)
        test = ModalityData(test.modality, fn(np.asarray(test.x), rng), test.y, test.classes)
    return DatasetSplits(eval_set.name, train, test)
