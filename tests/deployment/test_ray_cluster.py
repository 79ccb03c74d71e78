"""One simulation on an existing two-node Ray cluster (both nodes on loopback).

A head and a worker are started with ``ray start --block`` (one CPU each, their
own temp dir and ports), the launcher joins them with ``--ray-address`` (which
sets ``RAY_ADDRESS`` for Flower's simulation process), and one CPU per client
means neither node can hold every client actor: the round's per-client records
must name two Ray nodes. Every process the test starts carries a marker in its
environment, so the test can prove that none is left afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from experiments.common import superlink_pids
from server_app.round_record import client_value
from tests.conftest import PROJECT

pytestmark = pytest.mark.integration  # starts processes: Flower's runtime, Ray, deployments

RAY = str(Path(sys.executable).parent / "ray")
PORTS = ["--superlink-port", "39391", "--control-port", "39393"]
MARKER = "FSSUAVL_RAY_CLUSTER_TEST"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def marked_pids(token: str) -> list[int]:
    """Processes whose environment carries this test's marker (Linux /proc)."""
    needle = f"{MARKER}={token}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(proc.name))
        except (OSError, IndexError):
            continue
    return pids


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


class LoopbackRayCluster:
    """A Ray head and one worker node on 127.0.0.1, each with its own CPU budget."""

    def __init__(self, workdir: Path, cpus_per_node: int = 1) -> None:
        self.token = uuid.uuid4().hex
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
        self.workdir = workdir
        self.cpus = cpus_per_node
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, MARKER: self.token, "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[tuple[subprocess.Popen, Path]] = []

    def _start(self, name: str, args: list[str]) -> None:
        log = self.workdir / f"ray-{name}.log"
        common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}", "--num-gpus=0",
                  "--object-store-memory=100000000", "--disable-usage-stats",
                  f"--temp-dir={self.temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
                  f"--metrics-export-port={free_port()}"]
        with open(log, "w") as fh:
            proc = subprocess.Popen([RAY, "start", *args, *common], env=self.env, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append((proc, log))
        wait_for(lambda: proc.poll() is not None or "Ray runtime started" in log.read_text(), 120,
                 f"ray {name} did not start")
        assert proc.poll() is None, log.read_text()[-3000:]

    def start(self) -> None:
        self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                             f"--ray-client-server-port={free_port()}"])
        self._start("worker", [f"--address={self.address}"])

    def describe(self) -> dict:
        """Alive nodes and total CPUs as a driver connected to the cluster sees them."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR');"
                "nodes=[n for n in ray.nodes() if n['Alive']];"
                "print(json.dumps({'nodes': sorted(n['NodeID'] for n in nodes),"
                " 'cpus': ray.cluster_resources().get('CPU', 0)}))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        for proc, _ in reversed(self.nodes):  # worker first; --block makes `ray start` stop its node
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.nodes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        try:  # raylets' workers exit once their raylet is gone; give them a moment
            wait_for(lambda: not marked_pids(self.token), 30, "ray processes left")
        except TimeoutError:
            for pid in marked_pids(self.token):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, data_root):
    tmp_path = tmp_path_factory.mktemp("raycluster")
    flwr_home, runs = tmp_path / "flwr", tmp_path / "runs"
    cluster = LoopbackRayCluster(tmp_path)
    try:
        cluster.start()
        nodes = cluster.describe()
        config = (f"num-server-rounds=1 max-local-steps=1 batch-size=8 eval-every=0 "
                  f"data-root='{data_root}' run-dir='{runs}'")
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "experiments.launch", "--num-supernodes", "4", "--client-cpus", "1",
             "--ray-address", cluster.address, "--flwr-home", str(flwr_home), *PORTS, "--timeout", "600",
             "--run-config", config],
            cwd=PROJECT, env=cluster.env, capture_output=True, text=True, timeout=700,
        )
        seconds = time.monotonic() - started
        superlinks_after_run = superlink_pids(flwr_home)
    finally:
        cluster.stop()
    left = marked_pids(cluster.token)
    folders = list(runs.iterdir()) if runs.exists() else []
    return {"done": done, "nodes": nodes, "folders": folders, "seconds": seconds,
            "superlinks": superlinks_after_run, "left": left}


def test_cluster_has_two_nodes_with_one_cpu_each(cluster_run):
    assert len(cluster_run["nodes"]["nodes"]) == 2
    assert cluster_run["nodes"]["cpus"] == 2


def test_simulation_joins_the_cluster_and_uses_both_nodes(cluster_run):
    done = cluster_run["done"]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    (folder,) = cluster_run["folders"]
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    (round1,) = [r for r in records if r["round"] == 1]
    assert round1["failures"] == 0 and len(round1["clients"]) >= 2
    used = {client_value(c, "ray-node-id") for c in round1["clients"]}
    # the clients ran on the cluster's own nodes (no private local Ray), and on both of them
    assert used == set(cluster_run["nodes"]["nodes"]), (used, cluster_run["nodes"])


def test_run_writes_tensorboard_events(cluster_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = cluster_run["folders"]
    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss-image", "train/loss-audio", "eval/knn-image", "eval/probe-audio",
            "round/failures", "round/ray-nodes"} <= tags, tags
    assert [e.value for e in acc.Scalars("round/ray-nodes")] == [2.0]


def test_no_ray_or_superlink_process_is_left(cluster_run):
    assert cluster_run["superlinks"] == []
    assert cluster_run["left"] == []
