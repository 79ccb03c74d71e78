"""The embedded default data: real, labelled, deterministic, cached once."""

import hashlib
import threading

import numpy as np

from data_partition import spoken_digits
from data_partition.array_cache import cached_splits
from data_partition.datasets import load_splits
from data_partition.modality_data import IMAGE, DatasetSplits, ModalityData


def test_digit_images_are_uint8_rgb_with_balanced_held_out_split(data_root):
    splits = load_splits("digits", data_root)
    assert splits.train.x.shape == (1437, 32, 32, 3) and splits.train.x.dtype == np.uint8
    assert splits.test.x.shape == (360, 32, 32, 3)
    assert sorted(np.unique(splits.test.y).tolist()) == list(range(10))
    assert np.bincount(splits.test.y).min() >= 34  # stratified 20 %


def test_spoken_digits_hold_out_voices_and_cover_every_word(data_root):
    splits = load_splits("spoken-digits", data_root)
    per_voice = len(spoken_digits.RATES_WPM) * len(spoken_digits.PITCHES) * 10
    assert splits.train.x.shape == (len(spoken_digits.TRAIN_VOICES) * per_voice, 16000)
    assert splits.test.x.shape == (len(spoken_digits.HELDOUT_VOICES) * per_voice, 16000)
    assert splits.train.x.dtype == np.int16
    assert np.bincount(splits.train.y).tolist() == [len(splits.train.y) // 10] * 10
    assert splits.train.classes[3] == "three"
    assert not set(spoken_digits.TRAIN_VOICES) & set(spoken_digits.HELDOUT_VOICES)
    loudness = np.abs(np.asarray(splits.test.x)).max(axis=1)
    assert (loudness > 3000).all()  # every clip holds speech, not silence


def test_synthesis_is_identical_across_runs(tmp_path):
    digests = []
    for attempt in range(2):
        out = tmp_path / f"{attempt}.npz"
        spoken_digits.synthesise_isolated(("en+m1",), str(out))
        with np.load(out) as z:
            digests.append(hashlib.sha256(z["x"].tobytes()).hexdigest())
    assert digests[0] == digests[1]


def test_cache_is_built_once_even_when_many_workers_ask_at_once(tmp_path):
    builds = []

    def build(_scratch):
        builds.append(1)
        data = ModalityData(IMAGE, np.zeros((4, 2, 2, 3), np.uint8), np.arange(4), ("a", "b", "c", "d"))
        return DatasetSplits("tiny", data, data)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cached_splits(tmp_path / "tiny", build)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(results) == 6
    assert all(r.train.y.tolist() == [0, 1, 2, 3] for r in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock", "tiny"]  # no staging left over
