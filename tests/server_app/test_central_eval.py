"""Central evaluation: a bounded, fixed fit sample, the raw-input floor, one BLAS thread, a bounded time."""

import numpy as np
import pytest
import torch

from data_partition.modality_data import IMAGE, DatasetSplits, ModalityData
from server_app.central_eval import CentralEvaluator, fit_sample
from server_app.run_output import format_round
from ssl_method.feature_eval import knn_accuracy


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


def test_central_evaluation_runs_blas_on_one_thread(monkeypatch):
    """Regression: numpy's threaded OpenBLAS hung for 15 minutes in the ServerApp's evaluation (exec_blas
    spinning under cosine_distances); with one BLAS thread it computes in the calling thread."""
    from flwr.app import ArrayRecord
    from threadpoolctl import threadpool_info

    import server_app.central_eval as central_eval

    seen: list[int] = []

    def knn_recording_threads(*args, **kwargs):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return knn_accuracy(*args, **kwargs)

    monkeypatch.setattr(central_eval, "knn_accuracy", knn_recording_threads)
    model = _CountingEncoder(6)
    evaluator = CentralEvaluator(model, {IMAGE: torch.nn.Identity()}, {IMAGE: _splits(200, 40)},
                                 torch.device("cpu"), knn_k=5, seed=0, timeout=60.0)
    evaluator(ArrayRecord(model.state_dict()))
    assert seen and set(seen) == {1}


def test_the_first_evaluation_scores_the_raw_input_floor_on_the_same_samples():
    from flwr.app import ArrayRecord

    model = _CountingEncoder(6)
    evaluator = CentralEvaluator(model, {IMAGE: torch.nn.Identity()}, {IMAGE: _splits(400, 100)},
                                 torch.device("cpu"), knn_k=5, seed=0, max_train_samples=80)
    first = evaluator(ArrayRecord(model.state_dict()))
    # the toy inputs are one-hot class codes plus noise: the raw input separates them perfectly
    assert first["floor-knn-image"] == 1.0 and first["floor-probe-image"] == 1.0
    assert model.seen == 80 + 100  # the floor costs no encoder pass
    with torch.no_grad():
        model.proj.weight.mul_(-1.0)
    later = evaluator(ArrayRecord(model.state_dict()))
    assert not any(key.startswith("floor-") for key in later)  # computed once, reported at round 0
    line = format_round({"round": 0, "eval": first})
    assert "| raw input knn image 1.000 probe image 1.000 |" in line


def test_an_evaluation_past_its_time_is_skipped_with_the_reason_and_so_are_later_ones(monkeypatch):
    import threading

    from flwr.app import ArrayRecord

    import server_app.central_eval as central_eval

    release = threading.Event()

    def stuck(*args, **kwargs):
        release.wait(30)
        return 0.0

    monkeypatch.setattr(central_eval, "knn_accuracy", stuck)
    model = _CountingEncoder(6)
    evaluator = CentralEvaluator(model, {IMAGE: torch.nn.Identity()}, {IMAGE: _splits(40, 20)},
                                 torch.device("cpu"), knn_k=5, seed=0, timeout=0.5)
    try:
        with pytest.raises(central_eval.EvaluationSkipped, match="within eval-timeout=0.5s"):
            evaluator(ArrayRecord(model.state_dict()))
        with pytest.raises(central_eval.EvaluationSkipped, match="later evaluations are skipped"):
            evaluator(ArrayRecord(model.state_dict()))
    finally:
        release.set()


def test_an_error_inside_a_bounded_evaluation_reaches_the_caller(monkeypatch):
    from flwr.app import ArrayRecord

    import server_app.central_eval as central_eval

    def broken(*args, **kwargs):
        raise ValueError("probe failed")

    monkeypatch.setattr(central_eval, "linear_probe_accuracy", broken)
    model = _CountingEncoder(6)
    evaluator = CentralEvaluator(model, {IMAGE: torch.nn.Identity()}, {IMAGE: _splits(40, 20)},
                                 torch.device("cpu"), knn_k=5, seed=0, timeout=30.0)
    with pytest.raises(ValueError, match="probe failed"):
        evaluator(ArrayRecord(model.state_dict()))
