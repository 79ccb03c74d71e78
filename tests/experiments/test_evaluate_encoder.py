"""Evaluation of a saved encoder: scores vs scikit-learn, fusion, out-of-domain sets, run folders."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from app_config.run_config import RunConfig
from experiments import eval_sets, evaluate_encoder
from experiments import frozen_eval as ev


def features(rng, informative, dim=16, spread=3.0, noise=1.0):
    """Train/test features whose class means differ only for the classes in ``informative``."""
    means = rng.standard_normal((10, dim)) * spread
    shared = min(set(range(10)) - set(informative), default=0)
    for c in range(10):
        if c not in informative:
            means[c] = means[shared]  # uninformative classes share one mean

    def draw(n):
        y = np.arange(n) % 10
        return means[y] + rng.standard_normal((n, dim)) * noise, y

    (train_x, train_y), (test_x, test_y) = draw(400), draw(200)
    return ev.Features(train_x, train_y, test_x, test_y, tuple(str(c) for c in range(10)))


def test_scores_equal_a_direct_sklearn_computation():
    rng = np.random.default_rng(0)
    f = features(rng, informative=range(10))
    got = ev.score(f, knn_k=7, seed=3)

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    knn = KNeighborsClassifier(n_neighbors=7, metric="cosine", weights="distance").fit(unit(f.train_x), f.train_y)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=3)).fit(f.train_x, f.train_y)
    assert got["knn"] == pytest.approx(float((knn.predict(unit(f.test_x)) == f.test_y).mean()))
    assert got["probe"] == pytest.approx(float((probe.predict(f.test_x) == f.test_y).mean()))


def test_fusion_of_complementary_modalities_beats_each_alone():
    rng = np.random.default_rng(1)
    image = features(rng, informative=range(0, 5))  # images tell apart classes 0-4 only
    audio = features(rng, informative=range(5, 10))  # audio tells apart classes 5-9 only
    out = ev.fusion_scores(image, audio, knn_k=10, seed=0)
    weaker = min(out["paired-probe-image"], out["paired-probe-audio"])
    stronger = max(out["paired-probe-image"], out["paired-probe-audio"])
    assert out["fusion-probe"] >= weaker
    assert out["fusion-probe"] > stronger + 0.2  # each alone is at most ~60 %, together near 100 %
    assert out["fusion-knn"] > max(out["paired-knn-image"], out["paired-knn-audio"])
    assert out["fusion-pairs"] == 200


def test_class_pairing_is_seeded_and_same_class():
    image_y = np.array([0, 1, 2, 1, 3])
    audio_y = np.array([1, 1, 0, 2, 2, 1, 0])
    i1, a1 = ev.pair_by_class(image_y, audio_y, seed=5)
    i2, a2 = ev.pair_by_class(image_y, audio_y, seed=5)
    assert i1.tolist() == [0, 1, 2, 3]  # class 3 has no clip: left out
    assert (image_y[i1] == audio_y[a1]).all()
    assert a1.tolist() == a2.tolist()
    draws = {tuple(ev.pair_by_class(image_y, audio_y, seed=s)[1]) for s in range(20)}
    assert len(draws) > 1


def test_eval_set_names_and_shifts():
    assert eval_sets.parse_eval_set("digits:invert") == eval_sets.EvalSet("digits", "invert")
    assert eval_sets.parse_eval_set("spoken-digits:noise5db").modality == "audio"
    for bad, words in (("mnist", "unknown dataset"), ("digits:blur", "unknown shift"),
                       ("digits:noise5db", "applies to audio")):
        with pytest.raises(ValueError, match=words) as err:
            eval_sets.parse_eval_set(bad)
        assert "\n" not in str(err.value)
    x = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    assert (eval_sets._shift_function("invert")(x, None) == 255 - x).all()
    wave = (np.sin(np.linspace(0, 200, 16000)) * 10000).astype(np.int16)[None]
    noisy = eval_sets._shift_function("noise10db")(wave, np.random.default_rng(0))
    noise = noisy.astype(np.float64) - wave
    snr = 10 * np.log10((wave.astype(np.float64) ** 2).mean() / (noise ** 2).mean())
    assert snr == pytest.approx(10.0, abs=0.3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_root):
    """A run folder holding a small randomly initialised encoder, as the ServerApp writes it."""
    from models.factory import build_model

    folder = tmp_path_factory.mktemp("run")
    config = RunConfig(encoder="test_resnet", projection_hidden_dim=16, projection_dim=8, data_root=str(data_root))
    (folder / "config.json").write_text(json.dumps({k.replace("_", "-"): v for k, v in asdict(config).items()}))
    torch.manual_seed(0)
    torch.save(build_model(config).state_dict(), folder / "final_model.pt")
    return folder


def test_saved_encoder_in_domain_ood_and_fusion(tiny_run, data_root):
    from data_partition.datasets import load_splits
    from models.factory import eval_transforms
    from ssl_method.feature_eval import extract_features

    encoder = ev.load_encoder(tiny_run)
    settings = ev.EvalSettings(knn_k=5, out_of_domain=("digits:invert", "spoken-digits:noise0db"),
                               max_train_samples=150, max_test_samples=60, seed=0)
    out = ev.evaluate(encoder, encoder, settings)
    for key in ("probe-image", "knn-image", "probe-audio", "knn-audio", "fusion-probe", "fusion-knn",
                "paired-probe-image", "paired-probe-audio", "ood-probe-digits:invert",
                "ood-knn-spoken-digits:noise0db"):
        assert 0.0 <= out[key] <= 1.0, key
    assert out["fusion-pairs"] == 60
    # in-domain image probe = the same computation done directly on the same capped subsets
    splits = load_splits("digits", data_root)
    train = eval_sets.capped(splits.train, 150, 0)
    test = eval_sets.capped(splits.test, 60, 1)
    transform = eval_transforms(encoder.config, torch.device("cpu"))["image"]
    tx = extract_features(encoder.model, transform, train, torch.device("cpu"))
    sx = extract_features(encoder.model, transform, test, torch.device("cpu"))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0)).fit(tx, train.y)
    assert out["probe-image"] == pytest.approx(float((probe.predict(sx) == test.y).mean()))


def test_separate_encoders_route_each_modality(tiny_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((tiny_run / "config.json").read_text())
    torch.manual_seed(1)
    from models.factory import build_model
    torch.save(build_model(ev.run_config_of(tiny_run)).state_dict(), other / "final_model.pt")
    a, b = ev.load_encoder(tiny_run), ev.load_encoder(other)
    settings = ev.EvalSettings(knn_k=5, max_train_samples=100, max_test_samples=40, fusion=False)
    cache = ev.FeatureCache()
    mixed = ev.evaluate(a, b, settings, cache)
    only_a, only_b = ev.evaluate(a, a, settings, cache), ev.evaluate(b, b, settings, cache)
    assert mixed["probe-image"] == only_a["probe-image"] and mixed["probe-audio"] == only_b["probe-audio"]
    assert len(cache.store) == 4  # two encoders x two modalities, each encoded once


def test_cli_writes_json(tiny_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    code = evaluate_encoder.main([str(tiny_run), "--max-train", "80", "--max-test", "40", "--ood", "digits:rot90",
                    "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert "ood-probe-digits:rot90" in results and "fusion-probe" in results
    assert "probe-audio" in capsys.readouterr().out
    assert evaluate_encoder.main([str(tiny_run), "--ood", "digits:blur"]) == 2
