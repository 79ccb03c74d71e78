"""Federation plans for 10 to 1,000 clients: IID, Dirichlet, pathological, modality kinds, data shares, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from data_partition import partition
from data_partition.partition import (
    AUDIO_ONLY,
    AUDIOVISUAL,
    VISUAL,
    PartitionError,
    PlanSettings,
    build_plan,
    kind_counts,
    split_labels,
)
from data_partition.show import label_counts, total_variation


def settings(**overrides) -> PlanSettings:
    base = dict(num_partitions=20, frac_visual=0.4, frac_audio=0.3, frac_audiovisual=0.3, partitioner="dirichlet",
                alpha=0.5, min_partition_size=2, visual_share=1.0, audio_share=1.0, seed=7, classes_per_client=2)
    return PlanSettings(**{**base, **overrides})


def sorted_labels(num_classes: int, per_class: int) -> np.ndarray:
    """Stored sorted by class, as real datasets are."""
    return np.repeat(np.arange(num_classes), per_class).astype(np.int64)


IMAGE = sorted_labels(10, 300)
AUDIO = sorted_labels(35, 60)


def mean_skew(plan, modality: str, labels: np.ndarray) -> float:
    counts = label_counts(plan, modality, labels, labels.max() + 1)
    held = counts.sum(axis=1) > 0
    return float(total_variation(counts[held], np.bincount(labels)).mean())


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_every_sample_at_most_once_and_min_size(kind):
    plan = build_plan(settings(partitioner=kind, num_partitions=40), IMAGE, AUDIO)
    for attr, labels in (("image_indices", IMAGE), ("audio_indices", AUDIO)):
        parts = [getattr(p, attr) for p in plan if len(getattr(p, attr))]
        joined = np.concatenate(parts)
        assert len(joined) == len(np.unique(joined)) and joined.max() < len(labels)
        assert min(len(p) for p in parts) >= 2
        if kind != "pathological":  # (pathological may leave classes unused when clients < classes)
            assert len(joined) == len(labels)


def test_modality_kinds_follow_the_fractions():
    for n in (10, 37, 500, 1000):
        s = settings(num_partitions=n, frac_visual=0.5, frac_audio=0.2, frac_audiovisual=0.3)
        kinds = partition.assign_kinds(s)
        expected = kind_counts(n, (0.5, 0.2, 0.3))
        assert [kinds.count(k) for k in (VISUAL, AUDIO_ONLY, AUDIOVISUAL)] == expected
        assert abs(expected[0] - 0.5 * n) < 1 and sum(expected) == n
    plan = build_plan(settings(num_partitions=30), IMAGE, AUDIO)
    for p in plan:
        assert (len(p.image_indices) > 0) == (p.kind in (VISUAL, AUDIOVISUAL))
        assert (len(p.audio_indices) > 0) == (p.kind in (AUDIO_ONLY, AUDIOVISUAL))


def test_label_skew_grows_as_alpha_falls():
    skew = {a: mean_skew(build_plan(settings(alpha=a, num_partitions=30, min_partition_size=1), IMAGE, AUDIO),
                         "image", IMAGE) for a in (100.0, 1.0, 0.1)}
    assert skew[100.0] < skew[1.0] < skew[0.1]
    iid = mean_skew(build_plan(settings(partitioner="iid", num_partitions=30), IMAGE, AUDIO), "image", IMAGE)
    assert iid < 0.15  # the samples are shuffled first: IID over class-sorted data is really IID


@pytest.mark.parametrize("k", [1, 2, 5])
def test_pathological_gives_exactly_k_classes(k):
    plan = build_plan(settings(partitioner="pathological", classes_per_client=k, num_partitions=60), IMAGE, AUDIO)
    for attr, labels in (("image_indices", IMAGE), ("audio_indices", AUDIO)):
        for p in plan:
            idx = getattr(p, attr)
            if len(idx):
                assert len(np.unique(labels[idx])) == k


def test_reproducible_from_the_seed():
    a = build_plan(settings(num_partitions=50, min_partition_size=1), IMAGE, AUDIO)
    b = build_plan(settings(num_partitions=50, min_partition_size=1), IMAGE, AUDIO)
    c = build_plan(settings(num_partitions=50, min_partition_size=1, seed=8), IMAGE, AUDIO)
    assert all(p.kind == q.kind and np.array_equal(p.image_indices, q.image_indices)
               and np.array_equal(p.audio_indices, q.audio_indices) for p, q in zip(a, b))
    assert any(not np.array_equal(p.image_indices, q.image_indices) for p, q in zip(a, c))


def test_data_share_keeps_a_fraction_but_not_below_min_size():
    full = build_plan(settings(partitioner="iid"), IMAGE, AUDIO)
    half = build_plan(settings(partitioner="iid", visual_share=0.5, audio_share=0.01), IMAGE, AUDIO)
    for f, h in zip(full, half):
        assert len(h.image_indices) == round(0.5 * len(f.image_indices))
        assert set(h.image_indices) <= set(f.image_indices)
        if len(f.audio_indices):
            assert len(h.audio_indices) == 2  # 1 % of ~150 is 2 after rounding up to min-partition-size


@pytest.mark.parametrize("overrides, message", [
    (dict(partitioner="iid", num_partitions=1000), "3000 samples cannot give 700 clients min-partition-size=5"),
    (dict(partitioner="pathological", classes_per_client=11), "classes-per-client=11 must be between 1 and the 10"),
    (dict(partitioner="dirichlet", alpha=0.01, num_partitions=200, min_partition_size=12),
     "no Dirichlet split with dirichlet-alpha=0.01 gives every one of 140 clients min-partition-size=12"),
])
def test_impossible_partitions_are_one_clear_line(overrides, message):
    s = settings(**{"min_partition_size": 5, **overrides})
    with pytest.raises(PartitionError) as err:
        build_plan(s, IMAGE, AUDIO)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("image split: ")


def test_pathological_split_of_a_rare_class_is_one_clear_line():
    labels = np.array([0, 0] + [1] * 100)  # clients 0 and 2 share class 0's two samples
    s = settings(partitioner="pathological", classes_per_client=1, min_partition_size=2)
    with pytest.raises(PartitionError) as err:
        split_labels(labels, 4, s, "audio split")
    assert str(err.value).startswith("audio split: sharing each class among the clients given it leaves some of "
                                     "the 4 clients below min-partition-size=2") and "\n" not in str(err.value)
    assert [len(p) for p in split_labels(labels, 4, settings(partitioner="pathological", classes_per_client=1,
                                                              min_partition_size=1), "audio split")] == [1, 50, 1, 50]


def test_missing_modality_dataset_is_an_error():
    with pytest.raises(PartitionError, match="clients hold audio data but no audio dataset is set"):
        build_plan(settings(), IMAGE, None)
    only_images = build_plan(settings(frac_visual=1.0, frac_audio=0.0, frac_audiovisual=0.0), IMAGE, None)
    assert all(p.kind == VISUAL for p in only_images)


def test_dirichlet_scales_to_1000_clients():
    labels = np.random.default_rng(0).integers(0, 10, 50_000)
    started = time.perf_counter()
    parts = split_labels(labels, 1000, settings(alpha=0.5, num_partitions=1000), "image split")
    elapsed = time.perf_counter() - started
    assert len(parts) == 1000 and sum(map(len, parts)) == 50_000 and min(map(len, parts)) >= 2
    assert elapsed < 60, elapsed  # ~3-5 s on 2 CPU cores


def test_resample_fits_1000_clients_on_a_small_pool_with_overlapping_draws():
    image, audio = sorted_labels(10, 90), sorted_labels(10, 90)  # 900 each, as the embedded sets
    plan = build_plan(settings(partitioner="resample", num_partitions=1000), image, audio)
    audio_parts = [p.audio_indices for p in plan if p.kind in (AUDIO_ONLY, AUDIOVISUAL)]
    assert len(plan) == 1000 and len(audio_parts) == 600
    assert {len(p) for p in audio_parts} == {2}  # max(min-partition-size, 900 // 600)
    assert all(len(np.unique(p)) == len(p) and p.max() < 900 for p in audio_parts)  # no repeat within a client
    joined = np.concatenate(audio_parts)
    assert len(np.unique(joined)) < len(joined)  # clients overlap: not a disjoint split
    few = build_plan(settings(partitioner="resample", num_partitions=10), image, audio)
    assert {len(p.image_indices) for p in few if p.kind != AUDIO_ONLY} == {900 // 7}
    again = build_plan(settings(partitioner="resample", num_partitions=1000), image, audio)
    assert all(np.array_equal(p.audio_indices, q.audio_indices) for p, q in zip(plan, again))
    with pytest.raises(PartitionError, match="lower min-partition-size"):
        build_plan(settings(partitioner="resample", min_partition_size=901), image, audio)


def test_plan_is_stored_and_reused(tmp_path):
    s = settings(partitioner="pathological", num_partitions=15)
    first = partition.load_or_build_plan(s, IMAGE, AUDIO, tmp_path)
    (stored,) = tmp_path.glob("plan-*.npz")
    again = partition.load_or_build_plan(s, IMAGE, AUDIO, tmp_path)
    assert all(np.array_equal(p.image_indices, q.image_indices) for p, q in zip(first, again))
    other = partition.load_or_build_plan(settings(partitioner="pathological", num_partitions=15, classes_per_client=3),
                                         IMAGE, AUDIO, tmp_path)
    assert len(list(tmp_path.glob("plan-*.npz"))) == 2 and stored.exists()
    assert any(not np.array_equal(p.image_indices, q.image_indices) for p, q in zip(first, other))


def test_settings_from_run_config():
    from app_config.run_config import RunConfig

    config = RunConfig.from_mapping({"partitioner": "pathological", "classes-per-client": 3})
    s = PlanSettings.from_config(config, 120)
    assert (s.num_partitions, s.partitioner, s.classes_per_client, s.seed) == (120, "pathological", 3, config.seed)
    with pytest.raises(ValueError, match="partitioner: unknown value 'shards'; valid: iid, dirichlet, pathological"):
        RunConfig.from_mapping({"partitioner": "shards"})
    assert RunConfig.keys()["classes-per-client"] == 2
