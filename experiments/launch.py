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
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from experiments.common import (  # noqa: F401  (re-exported: older callers import these from here)
    PROJECT,
    check_config,
    exit_on_sigterm,
    flower_env,
    load_overrides,
    parse_overrides,
    port_taken,
    process_tree,
    setup_logging,
    start_times,
    stop_pids,
    stop_superlink,
    stream_output,
    superlink_pids,
)

log = logging.getLogger("fssuavl.launch")


def run_status(run_id: str, env: dict) -> str:
    out = subprocess.run(["flwr", "ls", "--run-id", run_id, "--format", "json"],
                         env=env, capture_output=True, text=True, cwd=PROJECT)
    try:
        runs = json.loads(out.stdout).get("runs", [])
        return runs[0].get("status", "unknown") if runs else "unknown"
    except json.JSONDecodeError:
        return f"unknown ({(out.stdout + out.stderr).strip()[-300:]})"


def launch(num_supernodes: int, run_config: str, client_cpus: int, client_gpus: float,
           flwr_home: Path, http_port: int, control_port: int, timeout: float) -> int:
    """Run one simulation; ``run_config`` is ``key=value`` text or the path of a TOML file of overrides.
    Returns 0 when the run completed, 1 when it failed, 2 on a bad config or busy port, 3 on timeout."""
    deadline = time.monotonic() + timeout
    try:
        check_config(load_overrides(run_config))
    except (ValueError, OSError) as err:  # ConfigError, TOML errors, unreadable file
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = flower_env(flwr_home, http_port, control_port)
    federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus} client-resources-num-gpus={client_gpus}"
    cmd = ["flwr", "run", str(PROJECT), "--stream", "--federation-config", federation]
    if run_config:
        cmd += ["--run-config", run_config.strip()]
    run_id = None
    stop_superlink(flwr_home)  # a stale SuperLink would not see this environment
    if port_taken(http_port):
        print(f"error: port {http_port} is held by another SuperLink (not of {flwr_home}); stop it "
              "or pass --superlink-port/--control-port", file=sys.stderr)
        return 2
    proc = None
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def on_line(line: str) -> None:
            nonlocal run_id
            sys.stdout.write(line)
            found = re.search(r"run (\d+)", line)
            if run_id is None and found and "started" in line.lower():
                run_id = found.group(1)

        if not stream_output(proc, deadline, on_line):
            print(f"error: run exceeded --timeout {timeout:.0f}s", file=sys.stderr)
            return 3
        proc.wait()
        if run_id is None:
            print("error: flwr run did not start a run (see output above)", file=sys.stderr)
            return proc.returncode or 1
        status = run_status(run_id, env)
    finally:
        if proc is not None and proc.poll() is None:
            tree = process_tree([proc.pid])
            stop_pids(tree, grace=5, identities=start_times(tree))
        stop_superlink(flwr_home)
    if "completed" not in status:
        print(f"error: run {run_id} ended as {status!r}; see the log above and "
              f"{flwr_home}/local-superlink/superlink.log", file=sys.stderr)
        return 1
    print(f"run {run_id}: {status}")
    return 0


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
                             "(see experiments/RAY_CLUSTER.md)")
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
