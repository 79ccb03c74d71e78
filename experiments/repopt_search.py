"""RepOpt's hyper-search: train the hyper-search RepOpt-VGG centrally and save its scales for ``repopt-scales``.

Why: RepOptimizer's gradient multipliers come from the trained per-channel
scales of a network whose blocks are CSLA blocks with *trainable* scales
(``repopt_vgg_tiny_cifar_hs``). As in RepOpt-VGG and FedRepOpt, the search
trains that network once on pooled data (here: the federation's pooled
training data, with the clients' SSL objective, views and recipe), then the
federated run trains the plain target network with ``optimizer='repopt-sgd'``
and the saved scales.

Command::

    python -m experiments.repopt_search scales.pt --steps 300 \
        --run-config "image-dataset='cluttered-digits' audio-dataset='noisy-spoken-digits'"
    python -m experiments.launch --run-config \
        "encoder='repopt_vgg_tiny_cifar' optimizer='repopt-sgd' repopt-scales='scales.pt'"
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from app_config.log_setup import setup_logging
from app_config.overrides import parse_overrides

log = logging.getLogger("fssuavl.repopt_search")


def search_scales(config, num_partitions: int, steps: int, output: Path, seed: int = 0) -> Path:
    """Train the hyper-search network ``steps`` steps on the pooled data; write its scales to ``output``."""
    import torch

    from experiments.centralized_training import pooled_data
    from models.factory import build_model, training_views
    from models.repopt import NETWORKS, extract_scales, save_scales
    from ssl_method.local_training import train_locally, train_settings

    torch.manual_seed(seed)
    model = build_model(config)
    encoder = model.encoder
    if not isinstance(encoder, NETWORKS) or encoder.mode != "hs":
        raise ValueError(f"encoder: the hyper-search trains a '..._hs' RepOpt-VGG or RepOpt-GhostNet, "
                         f"not {config.encoder!r}")
    device = torch.device("cpu")
    settings = dataclasses.replace(train_settings(config, model), local_epochs=10**6, max_local_steps=steps)
    metrics = train_locally(model, pooled_data(config, num_partitions), training_views(config, device), settings,
                            device, seed)
    scales = extract_scales(encoder)
    save_scales(scales, output)
    log.info("hyper-search: %d steps, loss %.3f; scales of %d blocks written to %s", steps, metrics["loss"],
             len(scales), output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="scales file to write (read by repopt-scales)")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps of the hyper-search network")
    parser.add_argument("--num-partitions", type=int, default=12, help="clients whose data are pooled")
    parser.add_argument("--encoder", default="repopt_vgg_tiny_cifar_hs", help="the hyper-search network")
    parser.add_argument("--run-config", default="", help="overrides, e.g. \"image-dataset='cluttered-digits'\"")
    args = parser.parse_args(argv)
    setup_logging()
    from experiments.centralized_training import config_from

    overrides = {**parse_overrides(args.run_config), "encoder": args.encoder}
    if args.steps < 1:
        parser.error("--steps: must be at least 1")
    try:
        search_scales(config_from(overrides), args.num_partitions, args.steps, args.output)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
