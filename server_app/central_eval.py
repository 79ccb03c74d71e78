"""Central evaluation of the global encoder on held-out data, every k rounds.

Fitting kNN and the linear probe needs features of the training split; on a
real dataset (50k CIFAR images, 85k Speech Commands clips) extracting them
every evaluated round would cost more than the round itself. So the fit uses a
seeded, class-stratified sample of at most ``eval-train-samples`` training
samples per modality, drawn once and kept for the whole run (every round is
scored on the same sample), and the held-out split is always scored whole.
Weights equal to the last evaluated ones (a round that aggregated nothing)
are not evaluated again. The sample size is reported with the accuracies.

The first evaluation also scores the **raw input** (the evaluation
transform's output flattened) with the same kNN and probe on the same
samples: the floor every trained encoder is reported beside
(``floor-knn-<modality>``, ``floor-probe-<modality>``).

Why BLAS runs on one thread here: the evaluation runs in the ServerApp's
thread of ``flwr-simulation``, beside Ray's and torch's threads. There
numpy's bundled OpenBLAS was seen deadlocked: the calling thread spinning in
``exec_blas`` under scikit-learn's ``cosine_distances`` while OpenBLAS's own
worker threads slept (py-spy ``dump --native``), for 15 minutes, on
360 x 256 by 100 x 256 matrices. With one BLAS thread OpenBLAS computes in the
calling thread and never hands work to its thread server, so that hang
cannot happen; the matrices are small enough that nothing is lost
(``threadpoolctl`` sets the limit for the evaluation only). As a last guard
every evaluation runs in a worker thread with a bounded time
(``eval-timeout``): past it the round is recorded with ``eval-skipped`` and
why, the run goes on, and later evaluations are skipped too (the stalled
thread still holds the evaluation model).
"""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord
from threadpoolctl import threadpool_limits

from data_partition.modality_data import DatasetSplits, ModalityData
from models.per_modality import Network, modality_network
from ssl_method.feature_eval import RawInput, extract_features, knn_accuracy, linear_probe_accuracy


class EvaluationSkipped(RuntimeError):
    """A central evaluation that did not run or finish; the message says why (one line)."""


def fit_sample(data: ModalityData, max_samples: int, seed: int) -> ModalityData:
    """At most ``max_samples`` of ``data``, stratified by class when every class can be (0 = all)."""
    if max_samples <= 0 or len(data) <= max_samples:
        return data
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(data))
    counts = np.bincount(data.y)
    stratify = data.y if counts[counts > 0].min() >= 2 and max_samples >= len(counts) else None
    chosen, _ = train_test_split(indices, train_size=max_samples, random_state=seed, stratify=stratify)
    return data.subset(np.sort(chosen))


def weights_digest(arrays: ArrayRecord) -> str:
    h = hashlib.sha256()
    for name, array in arrays.items():
        h.update(name.encode())
        h.update(array.data)
    return h.hexdigest()


class CentralEvaluator:
    """kNN and linear probe per modality: fit on (a sample of) the train split, score the held-out split."""

    def __init__(self, model: Network, transforms: dict, datasets: dict[str, DatasetSplits],
                 device: torch.device, knn_k: int, seed: int, max_train_samples: int = 0,
                 timeout: float = 0.0) -> None:
        self.model, self.transforms, self.datasets = model, transforms, datasets
        self.device, self.knn_k, self.seed = device, knn_k, seed
        self.timeout = timeout  # seconds an evaluation may take (0 = unbounded)
        self.fit_data = {m: fit_sample(s.train, max_train_samples, seed) for m, s in datasets.items()}
        self._last: tuple[str, dict[str, float]] | None = None
        self._floor: dict[str, float] | None = None
        self._stalled: str | None = None

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        """Scores of ``arrays``; raises :class:`EvaluationSkipped` when it cannot finish in time."""
        if self._stalled is not None:
            raise EvaluationSkipped(self._stalled)
        digest = weights_digest(arrays)
        if self._last is not None and self._last[0] == digest:  # unchanged weights: same features, same scores
            scores = {k: v for k, v in self._last[1].items() if not k.startswith("floor-")}
            return {**scores, "eval-seconds": 0.0, "eval-reused": 1.0}
        out = self._bounded(arrays)
        self._last = (digest, out)
        return out

    def _bounded(self, arrays: ArrayRecord) -> dict[str, float]:
        """:meth:`evaluate` in a worker thread that may take at most ``timeout`` seconds."""
        if not self.timeout:
            return self.evaluate(arrays)
        box: dict = {}

        def work() -> None:
            try:
                box["scores"] = self.evaluate(arrays)
            except BaseException as error:  # re-raised in the caller's thread
                box["error"] = error

        worker = threading.Thread(target=work, name="central-evaluation", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            self._stalled = (f"an earlier central evaluation did not finish within eval-timeout={self.timeout:g}s; "
                             "later evaluations are skipped")
            raise EvaluationSkipped(f"did not finish within eval-timeout={self.timeout:g}s; the run goes on "
                                    "without central evaluation")
        if "error" in box:
            raise box["error"]
        return box["scores"]

    def evaluate(self, arrays: ArrayRecord) -> dict[str, float]:
        """Load ``arrays`` and score every modality (BLAS on one thread: see the module docstring)."""
        with threadpool_limits(limits=1, user_api="blas"):
            self.model.load_state_dict(arrays.to_torch_state_dict())
            started = time.perf_counter()
            out: dict[str, float] = {}
            if self._floor is None:
                self._floor = self.raw_input_floor()
                out.update(self._floor)
            for modality, splits in self.datasets.items():
                fit = self.fit_data[modality]
                network = modality_network(self.model, modality)  # the shared encoder, or the modality's own
                train = extract_features(network, self.transforms[modality], fit, self.device)
                test = extract_features(network, self.transforms[modality], splits.test, self.device)
                out.update(self._scores(modality, train, fit.y, test, splits.test.y))
                out[f"eval-train-samples-{modality}"] = float(len(fit))
                out[f"eval-train-total-{modality}"] = float(len(splits.train))
                out[f"eval-test-samples-{modality}"] = float(len(splits.test))
            out["eval-seconds"] = time.perf_counter() - started
        return out

    def raw_input_floor(self) -> dict[str, float]:
        """kNN and probe on the evaluation transform's output flattened, the same samples as the encoder's."""
        out: dict[str, float] = {}
        raw = RawInput().to(self.device)
        for modality, splits in self.datasets.items():
            fit, preprocess = self.fit_data[modality], self.transforms[modality]
            train = extract_features(raw, preprocess, fit, self.device)
            test = extract_features(raw, preprocess, splits.test, self.device)
            scores = self._scores(modality, train, fit.y, test, splits.test.y)
            out.update({f"floor-{key}": value for key, value in scores.items()})
        return out

    def _scores(self, modality: str, train: np.ndarray, train_y: np.ndarray, test: np.ndarray,
                test_y: np.ndarray) -> dict[str, float]:
        return {f"knn-{modality}": knn_accuracy(train, train_y, test, test_y, self.knn_k),
                f"probe-{modality}": linear_probe_accuracy(train, train_y, test, test_y, self.seed)}


def as_metric_record(values: dict[str, float]) -> MetricRecord:
    return MetricRecord({k: float(v) for k, v in values.items()})
