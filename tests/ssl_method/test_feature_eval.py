"""kNN and linear-probe accuracy on features: perfect on separable clusters, chance without label information."""

import numpy as np

from ssl_method.feature_eval import knn_accuracy, linear_probe_accuracy


def _clusters(seed, n_per_class=30, classes=4, spread=0.1):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16)) * 3
    y = np.repeat(np.arange(classes), n_per_class)
    return centres[y] + rng.normal(scale=spread, size=(len(y), 16)), y


def test_separable_features_score_perfectly():
    x, y = _clusters(0)
    assert knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=5) == 1.0
    assert linear_probe_accuracy(x[::2], y[::2], x[1::2], y[1::2]) == 1.0


def test_features_without_label_information_score_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16))
    y = rng.integers(0, 4, 400)
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=5) < 0.4
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) < 0.4
