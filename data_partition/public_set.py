"""CreamFL's public set: image-audio pairs of the training splits, held apart from every client's part.

CreamFL (Yu et al., ICLR 2023) needs a public set of *paired* samples that the server and every client
can read. Adaptation: the embedded and supported datasets hold no co-recorded pairs in their caches (the
VGGSound reader keeps no clip ids beside the frames), so a pair is an image and a clip **of the same
class**, the rule ModalityMirror's phase 2 and the fusion evaluation use. :func:`public_pairs` draws them
seeded, one class after the other (class-balanced as far as the classes allow), and the federation plan
leaves them out of every client's part (``data_partition.partition``), so no client trains on a public
sample as its own data. Labels only form the pairs; no loss reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app_config.modalities import AUDIO, IMAGE

PUBLIC_STREAM = 0xC4EA  # the public set's own random stream beside the plan's


class PublicSetError(ValueError):
    """The public set cannot be drawn from the data (one line naming the key to change)."""


def public_pairs(image_labels: np.ndarray, audio_labels: np.ndarray, size: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``size`` class-paired (image index, clip index) pairs, every index used once; seeded.

    Classes present in both modalities are visited in a seeded order, one pair per class per turn,
    until ``size`` pairs are drawn; a :class:`PublicSetError` when fewer pairs exist.
    """
    image_labels, audio_labels = np.asarray(image_labels), np.asarray(audio_labels)
    rng = np.random.default_rng([seed, PUBLIC_STREAM])
    classes = np.intersect1d(np.unique(image_labels), np.unique(audio_labels))
    pools = {int(c): (rng.permutation(np.flatnonzero(image_labels == c)),
                      rng.permutation(np.flatnonzero(audio_labels == c))) for c in classes}
    depth_of = {c: min(len(i), len(a)) for c, (i, a) in pools.items()}
    if size > sum(depth_of.values()):
        raise PublicSetError(f"creamfl-public-size: {size} class-paired samples asked, the training splits give "
                             f"at most {sum(depth_of.values())}; lower creamfl-public-size")
    order = [int(c) for c in rng.permutation(classes)]
    image_idx: list[int] = []
    audio_idx: list[int] = []
    depth = 0
    while len(image_idx) < size:
        for c in order:
            if depth < depth_of[c] and len(image_idx) < size:
                image_idx.append(int(pools[c][0][depth]))
                audio_idx.append(int(pools[c][1][depth]))
        depth += 1
    return np.asarray(image_idx, dtype=np.int64), np.asarray(audio_idx, dtype=np.int64)


@dataclass(frozen=True)
class PublicSet:
    """The public pairs: each modality's training-split indices and samples (uint8 images, int16 clips)."""

    indices: dict[str, np.ndarray]
    samples: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.indices[IMAGE])


def public_samples(train_x: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """The samples of ``indices`` of one modality's training split, as a tensor (one copy)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(train_x)[indices]))


def draw_public_set(image_train, audio_train, size: int, seed: int) -> PublicSet:
    """The public set of two training splits (``ModalityData``): :func:`public_pairs` and their samples."""
    image_idx, audio_idx = public_pairs(image_train.y, audio_train.y, size, seed)
    indices = {IMAGE: image_idx, AUDIO: audio_idx}
    return PublicSet(indices, {IMAGE: public_samples(image_train.x, image_idx),
                               AUDIO: public_samples(audio_train.x, audio_idx)})
