import numpy as np
import torch

from data_partition.modality_data import IMAGE, DatasetSplits, ModalityData
from server_app.central_eval import CentralEvaluator, fit_sample
from server_app.evaluation import knn_accuracy, linear_probe_accuracy
from server_app.run_output import format_round


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


class _CountingEncoder(torch.nn.Module):
    """A linear encoder over flattened inputs that counts the samples it embeds."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, 8)
        self.seen = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.proj(x.flatten(1).float())


def _splits(n_train: int, n_test: int) -> DatasetSplits:
    rng = np.random.default_rng(0)

    def data(n):
        y = np.arange(n) % 4
        return ModalityData(IMAGE, (0.3 * rng.normal(size=(n, 6)) + 5 * np.eye(6)[y]).astype(np.float32), y,
                            ("a", "b", "c", "d"))
    return DatasetSplits("toy", data(n_train), data(n_test))


def test_fit_sample_is_bounded_stratified_and_fixed_by_the_seed():
    train = _splits(1000, 10).train
    sample = fit_sample(train, 100, seed=3)
    assert len(sample) == 100 and np.bincount(sample.y).tolist() == [25, 25, 25, 25]
    assert np.array_equal(sample.x, fit_sample(train, 100, seed=3).x)
    assert not np.array_equal(sample.x, fit_sample(train, 100, seed=4).x)
    assert fit_sample(train, 0, seed=3) is train and fit_sample(train, 5000, seed=3) is train


def test_central_evaluation_fits_on_the_sample_scores_all_and_skips_unchanged_weights():
    from flwr.app import ArrayRecord

    model = _CountingEncoder(6)
    evaluator = CentralEvaluator(model, {IMAGE: torch.nn.Identity()}, {IMAGE: _splits(1000, 200)},
                                 torch.device("cpu"), knn_k=5, seed=0, max_train_samples=100)
    arrays = ArrayRecord(model.state_dict())
    first = evaluator(arrays)
    assert model.seen == 100 + 200  # the fit sample and the whole held-out split
    assert first["eval-train-samples-image"] == 100 and first["eval-train-total-image"] == 1000
    assert first["eval-test-samples-image"] == 200 and first["knn-image"] > 0.9
    again = evaluator(ArrayRecord(model.state_dict()))
    assert model.seen == 300 and again["eval-reused"] == 1.0 and again["knn-image"] == first["knn-image"]
    with torch.no_grad():
        model.proj.weight.mul_(-1.0)
    evaluator(ArrayRecord(model.state_dict()))
    assert model.seen == 600  # changed weights are evaluated again
    line = format_round({"round": 0, "eval": first})
    assert line.endswith("| fit on 100 of 1000 image train samples")
