"""Does an audio encoder describe the word or the voice? Probes for both on held-out voices.

For the embedded spoken-digit sets (clean ``spoken-digits`` and
``noisy-spoken-digits``) the voice of every clip is known from how the set was
made. On the held-out split (voices never heard in training) this reports,
for each run folder given, for its initial weights and for the raw log-mel
input:

* ``knn``: held-out clips queried against the training clips (the central
  evaluation's audio kNN): can the features find the same word said by
  another voice?
* ``word probe`` and ``voice probe``: 5-fold cross-validated logistic
  regression *within* the held-out split, predicting the digit and the
  speaker. A feature space that encodes the word and not the voice has a
  high word probe and a voice probe near chance (1 / number of voices).

    python -m experiments.voice_vs_word runs/<run> [runs/<run> ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from app_config.log_setup import setup_logging


def held_out_voices(dataset: str) -> np.ndarray:
    """The voice index of every held-out clip (clips are laid out voice by voice)."""
    from data_partition import noisy_spoken_digits, spoken_digits

    if dataset == "noisy-spoken-digits":
        return noisy_spoken_digits.voice_of_each("test")
    if dataset == "spoken-digits":
        per_voice = len(spoken_digits.utterances(spoken_digits.HELDOUT_VOICES[:1]))
        return np.repeat(np.arange(len(spoken_digits.HELDOUT_VOICES)), per_voice)
    raise ValueError(f"audio-dataset {dataset!r}: voices are known only for spoken-digits and noisy-spoken-digits")


def cv_probe(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Mean 5-fold stratified cross-validated accuracy of the evaluation's probe (scaler + logistic regression)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from ssl_method.feature_eval import linear_probe

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(linear_probe(seed), x, y, cv=folds).mean())


def voice_and_word(encoder, seed: int = 0) -> dict[str, float]:
    """kNN against the training clips, word and voice probes within the held-out split."""
    from data_partition.datasets import load_splits, resolve_data_root
    from experiments.frozen_eval import encode
    from ssl_method.feature_eval import knn_accuracy

    name = encoder.config.audio_dataset
    splits = load_splits(name, resolve_data_root(encoder.config.data_root))
    voices = held_out_voices(name)
    feats = encode(encoder, splits, "audio")
    return {"knn": knn_accuracy(feats.train_x, feats.train_y, feats.test_x, feats.test_y, encoder.config.knn_k),
            "word probe": cv_probe(feats.test_x, feats.test_y, seed),
            "voice probe": cv_probe(feats.test_x, voices, seed),
            "voice chance": 1.0 / len(np.unique(voices))}


def encoders_of(run: Path):
    """(label, encoder) for the raw input, the run's initial weights and its final model."""
    import torch

    from experiments.frozen_eval import Encoder, load_encoder
    from models.factory import build_model
    from ssl_method.feature_eval import RawInput

    final = load_encoder(run)
    torch.manual_seed(final.config.seed)  # the ServerApp's initial global model
    initial = Encoder(final.config, build_model(final.config).eval(), key="initial")
    return [("raw log-mel", Encoder(final.config, RawInput(), key="raw")), ("initial weights", initial),
            (f"{run.name}", final)]


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description="Word vs voice probes of audio features on held-out voices")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (config.json + final_model.pt)")
    args = parser.parse_args(argv)
    print("| features | kNN vs training clips | word probe (CV) | voice probe (CV) | voice chance |")
    print("|---|---|---|---|---|")
    shown: set[tuple] = set()
    for run in args.runs:
        try:
            pairs = encoders_of(run)
        except (OSError, ValueError) as err:
            print(f"error: {run}: {err}", file=sys.stderr)
            return 2
        for label, encoder in pairs:
            key = (label, encoder.config.audio_dataset, encoder.config.seed)
            if key in shown:
                continue
            shown.add(key)
            s = voice_and_word(encoder)
            print(f"| {label} ({encoder.config.audio_dataset}) | {s['knn']:.3f} | {s['word probe']:.3f} | "
                  f"{s['voice probe']:.3f} | {s['voice chance']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
