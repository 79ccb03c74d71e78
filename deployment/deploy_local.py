"""Deploy the app for real on this machine: a SuperLink and N SuperNodes with TLS and SuperNode auth.

What a deployment on devices does, on loopback (127.0.0.1), end to end:

1. makes a CA, a SuperLink certificate for ``127.0.0.1`` / ``localhost`` signed
   by it, and one ECDSA (P-384, OpenSSH format) key pair per SuperNode;
2. starts ``flower-superlink`` with TLS (``--ssl-certfile/--ssl-keyfile/
   --ssl-ca-certfile``) and ``--enable-supernode-auth``;
3. writes the ``[superlink.NAME]`` connection (address + ``root-certificates``)
   into ``$FLWR_HOME/config.toml`` of the Flower CLI and registers each
   SuperNode's public key with ``flwr supernode register KEY NAME``;
4. gives every SuperNode its own data folder (by default disjoint slices of the
   embedded data: visual-only, audio-only and audio-visual nodes in turn) and
   starts ``flower-supernode --root-certificates CA --auth-supernode-private-key
   KEY --node-config "data-dir='...' ..."``;
5. runs ``flwr run . NAME --stream --run-config ...``, then reads the run's real
   status with ``flwr ls NAME --run-id ID --format json`` (``flwr run`` exits 0
   even when the ServerApp failed);
6. stops every process it started (also on errors and SIGTERM).

Every process gets its own ``FLWR_HOME`` under the work folder (a temp dir by
default) and ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``,
``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1``. Ports: SuperLink
39691, SuperNodes 39701.. (distinct from the simulation launcher's 39091/39093).

    python -m deployment.deploy_local --num-supernodes 2 \\
        --run-config "num-server-rounds=2 max-local-steps=1 batch-size=8 eval-every=0"

Exit code: 0 when the run finished as ``completed``, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomli_w

from app_config.log_setup import setup_logging
from app_config.modalities import AUDIO_ONLY, CLIENT_KINDS, VISUAL
from deployment.tls_material import make_supernode_keys, make_tls_certificates
from experiments.common import (
    check_config,
    exit_on_sigterm,
    flower_env,
    flower_home_pids,
    parse_overrides,
    port_taken,
    process_tree,
    start_times,
    stop_pids,
    stream_output,
)
from file_io.atomic import write_text

PROJECT = Path(__file__).resolve().parents[1]
CONNECTION = "fssuavl-deploy"
SUPERLINK_PORT = 39691
SUPERNODE_PORT = 39701
log = logging.getLogger("fssuavl.deploy")


# --------------------------------------------------------------------------- node data
def split_embedded_data(data_root: Path, folder: Path, num_nodes: int) -> list[tuple[Path, str]]:
    """Per-node data folders from the embedded datasets: node i gets samples i::num_nodes of each
    modality it holds; kinds cycle visual, audio, audiovisual. Single-modality nodes get one array
    cache as their data-dir, audio-visual nodes a data root with ``cache/digits`` and ``cache/spoken-digits``.
    """
    from client_app.device_data import write_array_cache
    from data_partition.datasets import cache_folder, load_splits

    image = load_splits("digits", data_root).train
    audio = load_splits("spoken-digits", data_root).train
    nodes = []
    for i in range(num_nodes):
        kind = CLIENT_KINDS[i % len(CLIENT_KINDS)]
        node_dir = folder / f"node-{i}"
        images = image.subset(np.arange(i, len(image), num_nodes))
        sounds = audio.subset(np.arange(i, len(audio), num_nodes))
        if kind == VISUAL:
            data_dir = write_array_cache(node_dir / "images", "digits", images)
        elif kind == AUDIO_ONLY:
            data_dir = write_array_cache(node_dir / "audio", "spoken-digits", sounds)
        else:
            data_dir = node_dir / "root"
            write_array_cache(cache_folder("digits", data_dir), "digits", images)
            write_array_cache(cache_folder("spoken-digits", data_dir), "spoken-digits", sounds)
        nodes.append((data_dir, kind))
    return nodes


# --------------------------------------------------------------------------- processes
def processes_of(workdir: Path) -> list[int]:
    """PIDs whose ``FLWR_HOME`` is ``workdir`` or lies under it (compared by path component: a
    deployment in ``.../dep`` never claims the processes of ``.../dep2``): every process a deployment
    started, including the SuperExecs, ServerApp and ClientApp processes Flower spawns (they inherit the
    environment), even if their parent already died."""
    return flower_home_pids(workdir, within=True)


@dataclass
class Deployment:
    """A SuperLink plus SuperNodes on loopback; use as a context manager (``stop`` always runs)."""

    workdir: Path
    superlink_port: int = SUPERLINK_PORT
    supernode_port: int = SUPERNODE_PORT
    log: callable = logging.getLogger("fssuavl.deploy").info
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)
    # None: the SuperLink keeps its state in memory (runs, registered SuperNode keys, messages); a path: in that
    # SQLite file, which survives a SuperLink restart but adds a write per request.
    database: Path | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls_certificates(self.workdir / "tls")
        self.cli_home = self.workdir / "cli-home"
        self._logs: dict[str, Path] = {}

    # -- environment -------------------------------------------------------
    def env(self, flwr_home: Path) -> dict[str, str]:
        env = flower_env(flwr_home)
        env.pop("RAY_ADDRESS", None)
        return env

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.superlink_port}"

    def _start(self, name: str, cmd: list[str], home: Path) -> subprocess.Popen:
        home.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        self._logs[name] = log_path
        with open(log_path, "ab") as fh:
            proc = subprocess.Popen(cmd, env=self.env(home), cwd=home, stdout=fh, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log_text(self, name: str) -> str:
        path = self._logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["flwr", *args], env=self.env(self.cli_home), cwd=PROJECT, capture_output=True,
                              text=True, timeout=timeout)

    # -- SuperLink ---------------------------------------------------------
    def start_superlink(self, timeout: float = 60) -> None:
        _check_free(self.superlink_port)
        self._start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(self.tls["ca"]), "--ssl-certfile", str(self.tls["cert"]),
            "--ssl-keyfile", str(self.tls["key"]), "--enable-supernode-auth", "--isolation", "subprocess",
            "--host", "127.0.0.1", "--port", str(self.superlink_port),
            *(("--database", str(self.database)) if self.database is not None else ()),
            "--disable-runtime-dependency-installation",
        ], self.workdir / "superlink-home")
        self.write_connection()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"flower-superlink exited ({self.procs['superlink'].returncode}): "
                                   + self.log_text("superlink")[-2000:])
            if self._answers():
                self.log(f"[deploy] SuperLink up on {self.address} (TLS, SuperNode auth)")
                return
            time.sleep(1.0)
        raise RuntimeError(f"flower-superlink did not answer within {timeout:.0f}s: "
                           + self.log_text("superlink")[-2000:])

    def _answers(self) -> bool:
        """Whether the SuperLink's Control API answers over TLS (``flwr`` exits 0 even when it does not)."""
        done = self.cli("supernode", "list", CONNECTION, "--format", "json", timeout=30)
        try:
            return done.returncode == 0 and _json_of(done.stdout).get("success") is True
        except (ValueError, json.JSONDecodeError):
            return False

    def write_connection(self) -> Path:
        """The Flower CLI's ``[superlink.NAME]`` entry (TLS with our CA)."""
        connection = {"address": self.address, "root-certificates": str(self.tls["ca"])}
        return write_text(self.cli_home / "config.toml",
                          tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))

    def register(self, public_key: Path) -> int:
        done = self.cli("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        try:
            node_id = int(_json_of(done.stdout)["node-id"])
        except (ValueError, KeyError, IndexError, json.JSONDecodeError) as err:
            raise RuntimeError(f"flwr supernode register failed: {(done.stdout + done.stderr)[-1000:]}") from err
        self.node_ids[str(public_key)] = node_id
        self.log(f"[deploy] registered SuperNode key {public_key.name} as node {node_id}")
        return node_id

    # -- SuperNodes --------------------------------------------------------
    def start_supernode(self, index: int, private_key: Path, node_config: dict,
                        extra: tuple[str, ...] = ()) -> subprocess.Popen:
        port = self.supernode_port + index
        _check_free(port)
        config = write_text(self.workdir / f"supernode-{index}-node-config.toml", tomli_w.dumps(node_config))
        return self._start(f"supernode-{index}", [
            "flower-supernode", "--superlink", self.address, "--root-certificates", str(self.tls["ca"]),
            "--auth-supernode-private-key", str(private_key), "--isolation", "subprocess",
            "--host", "127.0.0.1", "--port", str(port), "--node-config", str(config), *extra,
        ], self.workdir / f"supernode-{index}-home")

    def connected_nodes(self) -> list[dict]:
        done = self.cli("supernode", "list", CONNECTION, "--format", "json", timeout=30)
        try:
            return _json_of(done.stdout).get("nodes", [])
        except (ValueError, json.JSONDecodeError):
            return []

    def wait_online(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        online: list[dict] = []
        while time.monotonic() < deadline:
            online = [n for n in self.connected_nodes() if str(n.get("status", "")).lower() in ("online", "active")]
            if len(online) >= count:
                return online
            time.sleep(1.0)
        raise RuntimeError(f"only {len(online)} of {count} SuperNodes came online: {self.connected_nodes()}")

    # -- runs --------------------------------------------------------------
    def run(self, run_config: str = "", timeout: float = 1800) -> tuple[str | None, str, str]:
        """``flwr run . NAME --stream``; returns (run id, final status, streamed output)."""
        cmd = ["flwr", "run", str(PROJECT), CONNECTION, "--stream"]
        if run_config:
            cmd += ["--run-config", run_config]
        proc = subprocess.Popen(cmd, env=self.env(self.cli_home), cwd=PROJECT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.procs["flwr-run"] = proc
        run_id, lines = None, []

        def on_line(line: str) -> None:
            nonlocal run_id
            lines.append(line)
            self.log(line.rstrip("\n"))
            found = re.search(r"run (\d+)", line)
            if run_id is None and found and "started" in line.lower():
                run_id = found.group(1)

        try:  # the deadline holds even while the run prints nothing
            if not stream_output(proc, time.monotonic() + timeout, on_line):
                raise TimeoutError(f"run exceeded {timeout:.0f}s")
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        status = self.status(run_id) if run_id else "not started"
        return run_id, status, "".join(lines)

    def status(self, run_id: str, wait: float = 60) -> str:
        """The run's status from ``flwr ls``, waiting briefly for it to reach ``finished:*``."""
        deadline, status = time.monotonic() + wait, "unknown"
        while time.monotonic() < deadline:
            done = self.cli("ls", CONNECTION, "--run-id", str(run_id), "--format", "json", timeout=30)
            try:
                runs = _json_of(done.stdout).get("runs", [])
                status = runs[0].get("status", "unknown") if runs else "unknown"
            except (ValueError, json.JSONDecodeError):
                status = f"unknown ({(done.stdout + done.stderr).strip()[-300:]})"
            if status.startswith("finished"):
                return status
            time.sleep(1.0)
        return status

    # -- teardown ----------------------------------------------------------
    def stop(self) -> None:
        """Stop every process this deployment started, and everything those started."""
        roots = [p.pid for p in self.procs.values() if p.poll() is None]
        pids = sorted(set(process_tree(roots)) | set(processes_of(self.workdir)))
        stop_pids(pids, identities=start_times(pids))
        for proc in self.procs.values():
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        left = processes_of(self.workdir)
        if left:
            stop_pids(left, grace=5)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _json_of(text: str) -> dict:
    """The JSON object a ``flwr ... --format json`` command printed (possibly after other lines)."""
    return json.loads(text[text.index("{"):])


def _check_free(port: int) -> None:
    if port_taken(port):
        raise RuntimeError(f"port {port} on 127.0.0.1 is in use; pass other ports (--superlink-port, "
                           "--supernode-port)")


# --------------------------------------------------------------------------- command line
def deploy(num_supernodes: int, run_config: str, workdir: Path, data_root: Path, node_data: list[str],
           superlink_port: int, supernode_port: int, timeout: float, database: Path | None = None) -> int:
    try:
        check_config(parse_overrides(run_config))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with Deployment(workdir, superlink_port, supernode_port, database=database) as dep:
        if node_data:
            nodes = [(Path(p.split(":")[0]).resolve(), p.split(":")[1] if ":" in p else "") for p in node_data]
        else:
            nodes = split_embedded_data(data_root, workdir / "node-data", num_supernodes)
        dep.start_superlink()
        for i, (data_dir, kind) in enumerate(nodes):
            private, public = make_supernode_keys(workdir / "keys", f"supernode-{i}")
            dep.register(public)
            config = {"data-dir": str(data_dir), "partition-id": i}
            if kind:
                config["modality"] = kind
            dep.start_supernode(i, private, config)
            log.info("SuperNode %d: %s data in %s", i, kind or "all found", data_dir)
        dep.wait_online(len(nodes))
        if "plan-check" not in parse_overrides(run_config):  # the nodes read their own data-dir, not a plan
            run_config = (run_config + " plan-check=false").strip()
        run_id, status, _ = dep.run(run_config, timeout=timeout)
    if "completed" not in status:
        print(f"error: run {run_id} ended as {status!r}; logs in {workdir}", file=sys.stderr)
        return 1
    print(f"run {run_id}: {status}")
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # unwinds through Deployment.__exit__ (stops every process)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-supernodes", type=int, default=2)
    parser.add_argument("--run-config", default="", help="overrides, e.g. \"num-server-rounds=2 strategy='ldawa'\"")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where the embedded datasets are cached (server evaluation data and the source of "
                             "the per-node slices); default: the run config's data root")
    parser.add_argument("--node-data", action="append", default=[], metavar="DIR[:MODALITY]",
                        help="a SuperNode's data-dir (repeat once per SuperNode) instead of embedded-data slices")
    parser.add_argument("--workdir", type=Path, default=None, help="certificates, keys, FLWR_HOMEs, logs "
                        "(default: a new temp dir)")
    parser.add_argument("--superlink-port", type=int, default=SUPERLINK_PORT)
    parser.add_argument("--supernode-port", type=int, default=SUPERNODE_PORT, help="first SuperNode's port")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--database", type=Path, default=None,
                        help="keep the SuperLink's state in this SQLite file (default: in memory; a restarted "
                             "SuperLink then forgets runs, registered SuperNode keys and messages in flight)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fssuavl-deploy-"))
    run_config = args.run_config
    if args.data_root is None:
        from data_partition.datasets import resolve_data_root

        try:
            config = check_config(parse_overrides(run_config))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        data_root = resolve_data_root(config.data_root)
    else:
        data_root = args.data_root.resolve()
        if "data-root" not in parse_overrides_safe(run_config):
            run_config = (run_config + f" data-root='{data_root}'").strip()
    log.info("work folder %s", workdir)
    return deploy(args.num_supernodes, run_config, workdir, data_root, args.node_data,
                  args.superlink_port, args.supernode_port, args.timeout, args.database)


def parse_overrides_safe(text: str) -> dict:
    try:
        return parse_overrides(text)
    except ValueError:
        return {}


if __name__ == "__main__":
    sys.exit(main())
