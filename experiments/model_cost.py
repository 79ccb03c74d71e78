"""Print an encoder's parameter count and per-sample FLOPs (``experiments.encoder_cost``).

    python -m experiments.model_cost --encoder resnet18_cifar --image-size 32
"""

from __future__ import annotations

import argparse

from app_config.log_setup import setup_logging
from app_config.modalities import MODALITIES
from app_config.run_config import RunConfig
from experiments.encoder_cost import encoder_cost

_DEFAULTS = RunConfig()


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description="Parameter count and per-sample FLOPs of an encoder")
    parser.add_argument("--encoder", default="resnet18_cifar")
    parser.add_argument("--image-size", type=int, default=_DEFAULTS.image_size)
    parser.add_argument("--audio-n-mels", type=int, default=_DEFAULTS.audio_n_mels)
    args = parser.parse_args(argv)
    config = RunConfig(encoder=args.encoder, image_size=args.image_size, audio_n_mels=args.audio_n_mels)
    cost = encoder_cost(config)
    print(f"{args.encoder}: {cost['params']:,} encoder parameters ({cost['params-with-head']:,} with projection head)")
    for modality in MODALITIES:
        print(f"  {modality} {cost[f'input-{modality}']}: {cost[f'flops-{modality}'] / 1e9:.3f} GFLOPs per sample")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
