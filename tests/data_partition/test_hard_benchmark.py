"""The embedded benchmark where the raw input fails: cluttered digits and noisy spoken digits."""

import numpy as np
import pytest
import torch

from app_config.run_config import RunConfig
from data_partition import cluttered_digits, noisy_spoken_digits, spoken_digits
from data_partition.datasets import load_splits
from models.factory import build_model, eval_transforms
from server_app.central_eval import CentralEvaluator


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:60], digits.target[:60]


def test_cluttered_renders_are_seeded_rgb_and_differ_from_the_clean_digit():
    images, labels = _digits()
    a = cluttered_digits.render(images, labels, seed=3)
    assert a.shape == (60, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, cluttered_digits.render(images, labels, seed=3))
    assert not np.array_equal(a, cluttered_digits.render(images, labels, seed=4))
    # colourful backgrounds: the three channels differ, unlike the grey clean digits
    assert np.abs(a[..., 0].astype(int) - a[..., 2].astype(int)).mean() > 10


def test_distractors_are_of_another_class():
    labels = np.array([0, 0, 0, 1, 2, 2])
    other = cluttered_digits.other_class_indices(labels, np.random.default_rng(0))
    assert (labels[other] != labels).all()


def test_coloured_noise_has_unit_rms_and_its_colour():
    rng = np.random.default_rng(0)
    white = noisy_spoken_digits.coloured_noise(16000, 0.0, rng)
    brown = noisy_spoken_digits.coloured_noise(16000, 2.0, rng)
    assert abs(np.sqrt(np.mean(white ** 2)) - 1) < 1e-3
    low = lambda x: np.abs(np.fft.rfft(x)[:400]).mean() / np.abs(np.fft.rfft(x)[4000:]).mean()  # noqa: E731
    assert low(brown) > 10 * low(white)


def test_corrupted_words_start_at_random_onsets_under_noise():
    rng = np.random.default_rng(1)
    t = np.arange(4000) / 16000
    words = [np.sin(2 * np.pi * (300 + 100 * k) * t).astype(np.float32) * 0.5 for k in range(6)]
    labels = np.arange(6) % 3
    clips = noisy_spoken_digits.corrupt(words, labels, seed=0)
    assert clips.shape == (6, 16000) and clips.dtype == np.int16
    assert np.array_equal(clips, noisy_spoken_digits.corrupt(words, labels, seed=0))
    onsets = [int(np.argmax(np.convolve(np.abs(c.astype(float)), np.ones(4000), "valid"))) for c in clips]
    assert len(set(onsets)) > 3  # not all centred
    assert (np.abs(clips[:, :200]).max(axis=1) > 0).all()  # noise everywhere, no digital silence
    assert rng is not None


def test_voices_of_the_held_out_split_are_a_family_never_heard_in_training():
    assert not set(noisy_spoken_digits.TRAIN_VOICES) & set(noisy_spoken_digits.HELDOUT_VOICES)
    assert all("klatt" in v for v in noisy_spoken_digits.HELDOUT_VOICES)
    assert not any("klatt" in v for v in noisy_spoken_digits.TRAIN_VOICES)
    assert min(noisy_spoken_digits.TEST_PITCHES) < min(noisy_spoken_digits.TRAIN_PITCHES)
    assert max(noisy_spoken_digits.TEST_RATES) > max(noisy_spoken_digits.TRAIN_RATES)
    per_voice = len(spoken_digits.DIGIT_WORDS) * 9
    assert np.bincount(noisy_spoken_digits.voice_of_each("test")).tolist() == [per_voice] * 4


@pytest.mark.integration  # builds both sets (about 20 s)
def test_the_raw_input_fails_on_both_sets_where_it_passed_the_clean_ones(data_root):
    """The benchmark's point: raw-input kNN at most 0.50 on both held-out splits (clean sets: 0.97 / 0.94)."""
    config = RunConfig(image_dataset="cluttered-digits", audio_dataset="noisy-spoken-digits")
    datasets = {"image": load_splits(config.image_dataset, data_root),
                "audio": load_splits(config.audio_dataset, data_root)}
    assert len(datasets["image"].train) == 1437 and len(datasets["image"].test) == 720
    assert len(datasets["audio"].train) == 1440 and len(datasets["audio"].test) == 360
    model = build_model(config)
    evaluator = CentralEvaluator(model, eval_transforms(config, torch.device("cpu")), datasets, torch.device("cpu"),
                                 config.knn_k, config.seed, config.eval_train_samples)
    floor = evaluator.raw_input_floor()
    assert floor["floor-knn-image"] <= 0.5 and floor["floor-knn-audio"] <= 0.5
    assert floor["floor-knn-image"] > 0.05 and floor["floor-knn-audio"] > 0.15  # hard, not noise


def test_voice_and_word_probes_tell_which_one_the_features_carry():
    from experiments.voice_vs_word import cv_probe, held_out_voices

    assert held_out_voices("spoken-digits").tolist() == [0] * 90 + [1] * 90
    assert len(held_out_voices("noisy-spoken-digits")) == 360
    rng = np.random.default_rng(0)
    words, voices = np.tile(np.arange(10), 36), np.repeat(np.arange(4), 90)
    features = np.eye(10)[words] * 5 + rng.normal(size=(360, 10))  # the word, and nothing of the voice
    assert cv_probe(features, words, 0) > 0.9 and cv_probe(features, voices, 0) < 0.4
