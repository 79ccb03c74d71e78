"""Evaluate a saved global encoder: kNN and linear probe per modality, out-of-domain sets, fusion.

Input is a run folder as the ServerApp (or ``experiments.centralized``) writes
it: ``config.json`` rebuilds the network, ``final_model.pt`` (or a
``round-NNNN.pt``) holds its weights. The encoder is frozen; its backbone
features (before the projection head) are fitted and scored with scikit-learn,
exactly as the server's central evaluation does (``ssl_method.feature_eval``):

- **in-domain**: each modality's dataset, probe/kNN fitted on its training
  split and scored on its held-out split (for the embedded spoken digits the
  held-out split is two voices never heard in training);
- **out-of-domain**: extra sets named ``<dataset>`` or ``<dataset>:<shift>``,
  each a registered dataset (``cifar10``, ``esc50``, ... once its files are
  under the data root) optionally passed through a fixed domain shift
  (:data:`SHIFTS`: ``invert``/``rot90`` for images, ``noise<N>db``/``reverse``
  for audio). The probe is fitted on the set's own training split, so this
  measures how well the frozen features transfer;
- **fusion**: image and audio datasets whose classes correspond (the embedded
  digits "0".."9" and spoken "zero".."nine") give *class-paired* samples: each
  image is paired with a randomly drawn (seeded) clip of the same class from
  the same split. The two L2-normalised feature vectors are concatenated and
  probed, and reported beside each modality alone on the same pairs. The pairs
  are not recorded together; this only measures whether the two modalities'
  features carry complementary information. Other sets can be named for fusion
  (``--fusion-image-dataset vggsound-frames --fusion-audio-dataset vggsound-audio``:
  frames and sound of the same VGGSound classes) when the in-domain classes do
  not correspond.

Two runs can be evaluated together (``--audio-run``): images through the first
encoder, audio through the second (the "separate models" baseline).

    python -m experiments.evaluate_encoder runs/<run> --ood digits:invert --ood spoken-digits:noise0db
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_partition.modality_data import AUDIO, IMAGE
from experiments.eval_sets import SHIFTS, check_dataset, parse_eval_set
from experiments.frozen_eval import EvalSettings, evaluate, load_encoder


def format_results(results: dict[str, object]) -> str:
    lines = []
    for key in sorted(results):
        value = results[key]
        lines.append(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from app_config.log_setup import setup_logging

    setup_logging()
    parser = argparse.ArgumentParser(description="kNN / linear probe per modality, out-of-domain sets and fusion "
                                                 "for a saved encoder")
    parser.add_argument("run", type=Path, help="run folder (config.json + final_model.pt)")
    parser.add_argument("--audio-run", type=Path, default=None,
                        help="evaluate audio with this run's encoder instead (separate-models baseline)")
    parser.add_argument("--checkpoint", default="final_model.pt", help="weights file in the run folder(s)")
    parser.add_argument("--ood", action="append", default=[],
                        help="out-of-domain set <dataset>[:<shift>], repeatable; shifts: " + ", ".join(SHIFTS))
    parser.add_argument("--no-fusion", action="store_true")
    parser.add_argument("--fusion-image-dataset", default=None, help="fuse this image set (default: in-domain)")
    parser.add_argument("--fusion-audio-dataset", default=None, help="fuse this audio set (default: in-domain)")
    parser.add_argument("--knn-k", type=int, default=None, help="default: the run's knn-k")
    parser.add_argument("--max-train", type=int, default=0, help="cap on training samples per set (0 = all)")
    parser.add_argument("--max-test", type=int, default=0, help="cap on held-out samples per set (0 = all)")
    parser.add_argument("--image-dataset", default=None, help="default: the run's image-dataset")
    parser.add_argument("--audio-dataset", default=None, help="default: the run's audio-dataset")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        for text in args.ood:
            parse_eval_set(text)
        for name, modality in ((args.fusion_image_dataset, IMAGE), (args.fusion_audio_dataset, AUDIO)):
            if name:
                check_dataset(name, modality)
        image_encoder = load_encoder(args.run, args.checkpoint)
        audio_encoder = load_encoder(args.audio_run, args.checkpoint) if args.audio_run else image_encoder
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = EvalSettings(
        knn_k=args.knn_k or image_encoder.config.knn_k, out_of_domain=tuple(args.ood), fusion=not args.no_fusion,
        fusion_image_dataset=args.fusion_image_dataset, fusion_audio_dataset=args.fusion_audio_dataset,
        max_train_samples=args.max_train, max_test_samples=args.max_test,
        image_dataset=args.image_dataset, audio_dataset=args.audio_dataset, seed=image_encoder.config.seed,
    )
    results = evaluate(image_encoder, audio_encoder, settings)
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
