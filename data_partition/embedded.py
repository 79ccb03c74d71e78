"""Embedded default data: handwritten digits (images) and spoken digits (audio).

Both ship with, or are generated from, installed packages, so the default
experiment runs with no download. They are built once into the array cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_partition import spoken_digits
from data_partition.modality_data import AUDIO, IMAGE, DatasetSplits, ModalityData

DIGIT_CLASSES = tuple(str(d) for d in range(10))
IMAGE_SIDE = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def build_digit_images(_scratch: Path) -> DatasetSplits:
    """scikit-learn's 1,797 8x8 digits, upscaled to 32x32 RGB uint8, stratified 80/20 split."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(small, size=(IMAGE_SIDE, IMAGE_SIDE), mode="bilinear", align_corners=False)
    x = (big.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    y = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return DatasetSplits(
        "digits",
        ModalityData(IMAGE, np.ascontiguousarray(x[train_idx]), y[train_idx], DIGIT_CLASSES),
        ModalityData(IMAGE, np.ascontiguousarray(x[test_idx]), y[test_idx], DIGIT_CLASSES),
    )


def build_spoken_digits(scratch: Path) -> DatasetSplits:
    """Spoken "zero".."nine"; evaluation speakers (voices) never appear in training."""
    parts = {}
    for split, voices in (("train", spoken_digits.TRAIN_VOICES), ("test", spoken_digits.HELDOUT_VOICES)):
        out = scratch / f"{split}.npz"
        spoken_digits.synthesise_isolated(voices, str(out))
        with np.load(out) as arrays:
            parts[split] = ModalityData(AUDIO, arrays["x"], arrays["y"], spoken_digits.DIGIT_WORDS)
    return DatasetSplits("spoken-digits", parts["train"], parts["test"])
