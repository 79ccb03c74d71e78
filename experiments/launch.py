"""Run the app with ``flwr run`` on a project-local SuperLink, then clean up.

Why a launcher: ``flwr run`` starts a detached local SuperLink that outlives it,
exits 0 even when the ServerApp failed, and by default installs the app's
dependencies anew for every run. This wrapper keeps Flower's state in the
project (``.flwr/``), disables the dependency install, validates the run config
before anything starts, streams the logs, reports the run's real outcome as the
exit code, and always stops the SuperLink it started.

    python -m experiments.launch --num-supernodes 12 --run-config "strategy='ldawa'"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def flower_env(flwr_home: Path, http_port: int | None = None, control_port: int | None = None) -> dict[str, str]:
    """The environment for Flower processes: own FLWR_HOME, no dependency install, telemetry or update
    check, and (for the local simulation SuperLink) its ports."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    if http_port is not None:
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(http_port)
    if control_port is not None:
        env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def parse_overrides(text: str) -> dict:
    """``"a=1 b='x'"`` (TOML literals, as ``flwr run --run-config``) -> dict."""
    if not text:
        return {}
    return tomllib.loads("\n".join(shlex.split(text, posix=False)))


def check_config(overrides: dict) -> None:
    from app_config.run_config import RunConfig

    defaults = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    RunConfig.from_mapping({**defaults, **overrides})


def superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of SuperLinks logging into this FLWR_HOME (Linux /proc)."""
    marker = str(flwr_home / "local-superlink" / "superlink.log")
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"flower-superlink" in part for part in cmd) and marker.encode() in cmd:
            pids.append(int(proc.name))
    return pids


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(proc.name))
    return tree


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and all their descendants (simulation process, Ray's GCS, raylet, workers)."""
    tree, seen, todo = _children(), [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo.extend(tree.get(pid, []))
    return seen


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL whatever is still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)


def stop_superlink(flwr_home: Path, grace: float = 10.0) -> None:
    """Stop this FLWR_HOME's SuperLink and everything it started (Ray included)."""
    stop_pids(process_tree(superlink_pids(flwr_home)), grace)


def port_taken(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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
    try:
        check_config(parse_overrides(run_config))
    except ValueError as err:  # ConfigError and TOML errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = flower_env(flwr_home, http_port, control_port)
    federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus} client-resources-num-gpus={client_gpus}"
    cmd = ["flwr", "run", str(PROJECT), "--stream", "--federation-config", federation]
    if run_config:
        cmd += ["--run-config", run_config]
    run_id = None
    stop_superlink(flwr_home)  # a stale SuperLink would not see this environment
    if port_taken(http_port):
        print(f"error: port {http_port} is held by another SuperLink (not of {flwr_home}); stop it "
              "or pass --superlink-port/--control-port", file=sys.stderr)
        return 2
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.monotonic()
        for line in proc.stdout:
            sys.stdout.write(line)
            found = re.search(r"run (\d+)", line)
            if run_id is None and found and "started" in line.lower():
                run_id = found.group(1)
            if time.monotonic() - started > timeout:
                proc.kill()
                print(f"error: run exceeded --timeout {timeout:.0f}s", file=sys.stderr)
                return 3
        proc.wait()
        if run_id is None:
            print("error: flwr run did not start a run (see output above)", file=sys.stderr)
            return proc.returncode or 1
        status = run_status(run_id, env)
    finally:
        stop_superlink(flwr_home)
    if "completed" not in status:
        print(f"error: run {run_id} ended as {status!r}; see the log above and "
              f"{flwr_home}/local-superlink/superlink.log", file=sys.stderr)
        return 1
    print(f"run {run_id}: {status}")
    return 0


def _exit_on_sigterm(signum, _frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through launch()'s cleanup


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-supernodes", type=int, default=12)
    parser.add_argument("--run-config", default="", help="overrides, e.g. \"strategy='ldawa' num-server-rounds=3\"")
    parser.add_argument("--client-cpus", type=int, default=2)
    parser.add_argument("--client-gpus", type=float, default=0.0)
    parser.add_argument("--flwr-home", type=Path, default=PROJECT / ".flwr")
    parser.add_argument("--superlink-port", type=int, default=39091)
    parser.add_argument("--control-port", type=int, default=39093)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is abandoned")
    parser.add_argument("--ray-address", default="",
                        help="join this running Ray cluster (head's GCS address, e.g. 10.0.0.1:6379) instead of "
                             "starting a local Ray; sets RAY_ADDRESS for the SuperLink and its simulation "
                             "(see experiments/RAY_CLUSTER.md)")
    args = parser.parse_args(argv)
    if args.ray_address:  # ray.init() in Flower's simulation process connects to RAY_ADDRESS when set
        os.environ["RAY_ADDRESS"] = args.ray_address
    return launch(args.num_supernodes, args.run_config, args.client_cpus, args.client_gpus,
                  args.flwr_home.resolve(), args.superlink_port, args.control_port, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
