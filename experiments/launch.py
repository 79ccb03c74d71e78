"""Run the app with ``flwr run`` on a project-local SuperLink, then clean up.

Why a launcher: ``flwr run`` starts a detached local SuperLink that outlives it,
exits 0 even when the ServerApp failed, and by default installs the app's
dependencies anew for every run. This wrapper keeps Flower's state in the
project (``.flwr/``), disables the dependency install, validates the run config
before anything starts, streams the logs, reports the run's real outcome as the
exit code, gives up after ``--timeout`` seconds (also when the run prints
nothing), and always stops the SuperLink it started.

    python -m experiments.launch --num-supernodes 12 --run-config "strategy='ldawa'"
    python -m experiments.launch --run-config job.toml        # a TOML file of overrides
    python -m experiments.launch --stop --flwr-home .flwr     # stop a SuperLink left running
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from app_config.log_setup import setup_logging
from experiments.common import PROJECT, exit_on_sigterm, stop_superlink, superlink_pids
from experiments.simulation import launch

log = logging.getLogger("fssuavl.launch")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # unwinds through launch()'s cleanup
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-supernodes", type=int, default=12)
    parser.add_argument("--run-config", default="", help="overrides, e.g. \"strategy='ldawa' num-server-rounds=3\", "
                                                        "or the path of a TOML file of them")
    parser.add_argument("--client-cpus", type=int, default=2)
    parser.add_argument("--client-gpus", type=float, default=0.0)
    parser.add_argument("--flwr-home", type=Path, default=PROJECT / ".flwr")
    parser.add_argument("--superlink-port", type=int, default=39091)
    parser.add_argument("--control-port", type=int, default=39093)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is abandoned")
    parser.add_argument("--stop", action="store_true",
                        help="only stop the local SuperLink of --flwr-home (and everything it started), then exit")
    parser.add_argument("--ray-address", default="",
                        help="join this running Ray cluster (head's GCS address, e.g. 10.0.0.1:6379) instead of "
                             "starting a local Ray; sets RAY_ADDRESS for the SuperLink and its simulation "
                             "(see deployment/RAY_CLUSTER.md)")
    args = parser.parse_args(argv)
    if args.stop:
        pids = superlink_pids(args.flwr_home.resolve())
        stop_superlink(args.flwr_home.resolve())
        log.info("stopped %d SuperLink process(es) of %s", len(pids), args.flwr_home.resolve())
        return 0
    if args.ray_address:  # ray.init() in Flower's simulation process connects to RAY_ADDRESS when set
        os.environ["RAY_ADDRESS"] = args.ray_address
    return launch(args.num_supernodes, args.run_config, args.client_cpus, args.client_gpus,
                  args.flwr_home.resolve(), args.superlink_port, args.control_port, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
