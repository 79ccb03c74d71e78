"""Run one simulation with ``flwr run`` on a project-local SuperLink and report its real outcome.

``flwr run`` starts a detached local SuperLink that outlives it, exits 0 even
when the ServerApp failed, and by default installs the app's dependencies anew
for every run. :func:`launch` keeps Flower's state in the given
``FLWR_HOME``, disables the dependency install, preflights the run config and
checks that its federation plan can be made for ``num_supernodes`` clients
before anything starts, streams the logs, returns the run's real outcome, gives
up after ``timeout`` seconds (also when the run prints nothing), and always
stops the SuperLink it started. Used by the launcher command and the benchmarks.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from data_partition.federation import Federation
from experiments.common import (
    PROJECT,
    check_config,
    flower_env,
    load_overrides,
    port_taken,
    process_tree,
    start_times,
    stop_pids,
    stop_superlink,
    stream_output,
)


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
        config = check_config(load_overrides(run_config))
        Federation(config, num_supernodes).plan()  # an impossible plan fails here, not in every client
    except (ValueError, OSError) as err:  # ConfigError, PartitionError, TOML errors, unreadable file
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = flower_env(flwr_home, http_port, control_port)
    federation = (f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus} "
                  f"client-resources-num-gpus={client_gpus}")
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
