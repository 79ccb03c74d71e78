"""Centralized SSL baseline: the federated run's data pooled on one machine.

Same encoder, same SimCLR views, same per-modality batch size and the same
local trainer (``ssl_method.local_training.train_locally``) as the clients, and the
same **sample budget**: as many images and as many audio clips pass through
the network per round as all clients of the federated run processed in that
round. The budget is read from a finished federated run's ``metrics.jsonl``
(``--match-run``: every client's steps and data sizes) or computed from the
federation plan (``--num-partitions``, assuming every client trains every
round). Each "round" trains on the pooled data until that round's budget is
spent: steps holding both modalities first, then the larger modality alone,
then smaller batches for any remainder (exact to the sample).
The optimizer restarts each round, as a client's does.

The output is a run folder in the ServerApp's format: ``config.json``,
``metrics.jsonl`` (per round: losses, samples, central kNN/probe on the
ServerApp's schedule), ``round-NNNN.pt`` every ``save-every`` rounds,
``final_model.pt`` and ``summary.json`` (with ``method: centralized`` and the
budget).

    python -m experiments.centralized --match-run runs/<federated run>
    python -m experiments.centralized --num-partitions 6 --run-config "num-server-rounds=3 max-local-steps=4"
    python -m experiments.centralized --match-run runs/<federated run> --method supervised   # the ceiling
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app_config.log_setup import setup_logging
from experiments.centralized_training import (
    METHODS,
    budget_from_metrics,
    config_from,
    planned_budget,
    pooled_data,
    recorded_partitions,
    train_centralized,
)
from experiments.common import parse_overrides


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description="Centralized SSL baseline with a federated run's sample budget")
    parser.add_argument("--match-run", type=Path, help="federated run folder: its config (unless overridden), "
                                                       "clients and the samples they processed set the budget")
    parser.add_argument("--num-partitions", type=int, help="clients of the federation (with --match-run: default "
                                                           "the highest partition-id it recorded + 1)")
    parser.add_argument("--run-config", default="",
                        help="overrides, e.g. \"num-server-rounds=3 encoder='vit_tiny_cifar'\"")
    parser.add_argument("--run-dir", type=Path, default=None, help="where the run folder goes (default: run-dir key)")
    parser.add_argument("--method", choices=METHODS, default="centralized",
                        help="'centralized': the clients' contrastive trainer; 'supervised': the same with labels "
                             "(cross-entropy), the ceiling of a comparison table")
    args = parser.parse_args(argv)
    if not args.match_run and not args.num_partitions:
        parser.error("give --match-run or --num-partitions")
    try:
        overrides = parse_overrides(args.run_config)
        if args.match_run:
            base = json.loads((args.match_run / "config.json").read_text())
            config = config_from(overrides, base)
            budget = budget_from_metrics(args.match_run / "metrics.jsonl", config.batch_size)
            source_text = f"clients of {args.match_run.name}"
            if len(budget) != config.num_server_rounds:
                raise ValueError(f"{args.match_run} recorded {len(budget)} training rounds, "
                                 f"expected num-server-rounds={config.num_server_rounds}")
            num_partitions = args.num_partitions or recorded_partitions(args.match_run / "metrics.jsonl")
        else:
            config = config_from(overrides)
            num_partitions = args.num_partitions
            budget = planned_budget(config, num_partitions)
            source_text = f"plan of {num_partitions} clients"
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pooled = pooled_data(config, num_partitions)
    folder = train_centralized(config, budget, pooled, args.run_dir or Path(config.run_dir), source_text,
                               method=args.method)
    print(f"[fssuavl] {args.method} run written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
