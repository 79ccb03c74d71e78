"""CreamFL's public set: class-paired, seeded, and held apart from every client's part."""

from __future__ import annotations

import numpy as np
import pytest

from data_partition.partition import PartitionError, PlanSettings, build_plan
from data_partition.public_set import PublicSetError, public_pairs

IMAGE_LABELS = np.repeat(np.arange(5), 30)
AUDIO_LABELS = np.tile(np.arange(5), 20)


def test_pairs_are_class_paired_distinct_balanced_and_seeded():
    image, audio = public_pairs(IMAGE_LABELS, AUDIO_LABELS, 23, seed=3)
    assert len(image) == len(audio) == 23
    assert len(set(image.tolist())) == 23 and len(set(audio.tolist())) == 23
    np.testing.assert_array_equal(IMAGE_LABELS[image], AUDIO_LABELS[audio])
    assert np.bincount(IMAGE_LABELS[image]).max() - np.bincount(IMAGE_LABELS[image]).min() <= 1
    again = public_pairs(IMAGE_LABELS, AUDIO_LABELS, 23, seed=3)
    np.testing.assert_array_equal(again[0], image)
    assert not np.array_equal(public_pairs(IMAGE_LABELS, AUDIO_LABELS, 23, seed=4)[0], image)


def test_more_pairs_than_the_data_gives_is_one_line():
    with pytest.raises(PublicSetError, match="creamfl-public-size: 101 class-paired"):
        public_pairs(IMAGE_LABELS, AUDIO_LABELS, 101, seed=0)


def _settings(public_size: int) -> PlanSettings:
    return PlanSettings(num_partitions=3, frac_visual=1 / 3, frac_audio=1 / 3, frac_audiovisual=1 / 3,
                        partitioner="iid", alpha=0.5, min_partition_size=2, visual_share=1.0, audio_share=1.0,
                        seed=0, public_size=public_size)


def test_the_plan_holds_the_public_set_apart():
    image, audio = public_pairs(IMAGE_LABELS, AUDIO_LABELS, 20, seed=0)
    plan = build_plan(_settings(20), IMAGE_LABELS, AUDIO_LABELS)
    given_image = np.concatenate([p.image_indices for p in plan])
    given_audio = np.concatenate([p.audio_indices for p in plan])
    assert not set(given_image.tolist()) & set(image.tolist())
    assert not set(given_audio.tolist()) & set(audio.tolist())
    assert len(given_image) == len(IMAGE_LABELS) - 20 and len(given_audio) == len(AUDIO_LABELS) - 20


def test_plans_without_a_public_set_are_unchanged():
    plain = build_plan(_settings(0), IMAGE_LABELS, AUDIO_LABELS)
    assert sum(len(p.image_indices) for p in plain) == len(IMAGE_LABELS)
    with pytest.raises(PartitionError, match="creamfl-public-size"):
        build_plan(_settings(20), IMAGE_LABELS, None)
