"""Scripts in experiments/ under hostile conditions: silent runs, look-alike paths, exited and reused
PIDs, key file modes, torn metrics files."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from experiments import common, launch, simulation
from tests.conftest import PROJECT
from tests.process_helpers import gone, reaped, wait_for

PYTHON = sys.executable


def sleeper(env: dict | None = None, ignore_term: bool = False, argv0: str | None = None) -> subprocess.Popen:
    """A Python process that sleeps (optionally ignoring SIGTERM); returns once it runs."""
    code = ("import signal, sys, time\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "print('ready', flush=True)\ntime.sleep(120)\n")
    cmd = [PYTHON, "-c", code] if argv0 is None else [PYTHON, argv0]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- launcher deadline
def test_launcher_timeout_holds_when_the_run_prints_nothing(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "flwr"
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'flwr.pid'}\nexec sleep 120\n")
    fake.chmod(0o755)
    real_env = simulation.flower_env
    monkeypatch.setattr(simulation, "flower_env", lambda *a, **k: {**real_env(*a, **k), "PATH": f"{bin_dir}:/usr/bin:/bin"})
    result = {}

    def run() -> None:
        result["code"] = simulation.launch(2, "", 1, 0.0, tmp_path / "home", free_port(), free_port(), timeout=3)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=40)
    pid = int((tmp_path / "flwr.pid").read_text())
    try:
        assert not thread.is_alive(), "the launcher waited for output past its --timeout"
        assert result["code"] == 3 and time.monotonic() - started < 30
        assert gone(pid)  # the silent run was stopped, not left behind
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- exact paths
def test_processes_are_matched_by_exact_path(tmp_path):
    from deployment.deploy_local import processes_of

    dep, dep2 = tmp_path / "dep", tmp_path / "dep2"
    inside = sleeper({**os.environ, "FLWR_HOME": str(dep / "supernode-0-home")})
    lookalike = sleeper({**os.environ, "FLWR_HOME": str(dep2 / "supernode-0-home")})
    script = tmp_path / "flower-superlink"
    script.write_text("import time\nprint('ready', flush=True)\ntime.sleep(120)\n")
    links = {}
    for home in (dep, dep2):
        log = home / "local-superlink" / "superlink.log"
        links[home] = subprocess.Popen([PYTHON, str(script), "--log-file", str(log)], stdout=subprocess.PIPE, text=True)
        assert links[home].stdout.readline().strip() == "ready"
    try:
        found = processes_of(dep)
        assert inside.pid in found and lookalike.pid not in found
        assert common.superlink_pids(dep) == [links[dep].pid]
        assert common.superlink_pids(Path(str(dep) + "/")) == [links[dep].pid]
        launch.main(["--stop", "--flwr-home", str(dep)])  # by exact path, the replacement of a pkill -f pattern
        wait_for(lambda: gone(links[dep].pid), 20, "the SuperLink of dep to stop")
        assert not gone(links[dep2].pid)
    finally:
        for proc in (inside, lookalike, *links.values()):
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- stop_pids
def test_stop_pids_signals_only_live_processes_it_was_given(monkeypatch):
    polite, stubborn = sleeper(), sleeper(ignore_term=True)
    reaper = threading.Thread(target=polite.wait, daemon=True)  # its parent reaps it at once: the PID is free
    reaper.start()
    sent: list[tuple[int, int]] = []
    real_kill, real_pidfd_signal = os.kill, signal.pidfd_send_signal

    def kill(pid, sig):
        if sig:
            sent.append((pid, sig))
        return real_kill(pid, sig)

    def pidfd_signal(fd, sig, *args):
        if sig:
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
            sent.append((int(info.split("Pid:")[1].split()[0]), sig))
        return real_pidfd_signal(fd, sig, *args)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(signal, "pidfd_send_signal", pidfd_signal)
    try:
        common.stop_pids([polite.pid, stubborn.pid], grace=1.0)
        reaper.join(timeout=5)
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
        # the exited (and reaped) process got its SIGTERM and nothing after: its PID may belong to another
        assert [s for pid, s in sent if pid == polite.pid] == [signal.SIGTERM]
        assert [s for pid, s in sent if pid == stubborn.pid] == [signal.SIGTERM, signal.SIGKILL]
    finally:
        for proc in (polite, stubborn):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_stop_pids_skips_reused_pids_and_never_signals_itself_or_init():
    other = sleeper()
    try:
        started = common.start_time(other.pid)
        common.stop_pids([other.pid], grace=0.5, identities={other.pid: started + 1})  # PID reused since the scan
        common.stop_pids([0, 1, os.getpid()], grace=0.5)
        assert other.poll() is None
        common.stop_pids([other.pid], grace=0.5, identities={other.pid: started})
        assert other.wait(timeout=5) == -signal.SIGTERM
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


# --------------------------------------------------------------------------- key files
def test_private_keys_are_0600_from_creation_in_a_0700_folder(tmp_path, monkeypatch):
    from deployment.tls_material import make_supernode_keys, make_tls_certificates

    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)  # a later chmod must not be what protects them
    old = os.umask(0)  # files created without an explicit mode would be world-readable
    try:
        (tmp_path / "keys").mkdir(mode=0o700)
        (tmp_path / "keys" / "node-0").write_text("old key")
        tls = make_tls_certificates(tmp_path / "tls")
        private, public = make_supernode_keys(tmp_path / "keys", "node-0")
    finally:
        os.umask(old)
    for path in (tls["key"], private):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
    assert b"OPENSSH PRIVATE KEY" in private.read_bytes() and public.read_text().startswith("ecdsa-sha2-nistp384")


# --------------------------------------------------------------------------- metrics.jsonl
def test_metrics_readers_skip_a_torn_last_line_and_warn_once(tmp_path, caplog):
    from experiments.centralized_training import budget_from_metrics, recorded_partitions
    from experiments.plots import eval_series

    records = [{"round": 0, "eval": {"probe-image": 0.5}},
               {"round": 1, "eval": {"probe-image": 0.6},
                "clients": [{"partition-id": 2, "steps": 3, "num-image-examples": 10, "num-audio-examples": 0}]}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"round": 2, "eval": {"probe-im')
    with caplog.at_level(logging.WARNING):
        assert eval_series(path) == {"probe-image": [(0, 0.5), (1, 0.6)]}
        assert budget_from_metrics(path, batch_size=4) == [{"image": 12, "audio": 0}]
        assert recorded_partitions(path) == 3
    assert len([r for r in caplog.records if "torn last line" in r.getMessage()]) == 1
    path.write_text(json.dumps(records[0]) + "\nnot json\n" + json.dumps(records[1]) + "\n")
    with pytest.raises(ValueError, match="line 2 is not a JSON record"):
        eval_series(path)


def test_no_pattern_kill_in_experiments():
    offenders = [str(p) for p in (PROJECT / "experiments").rglob("*") if p.is_file() and p.suffix in
                 (".py", ".md", ".yaml", ".sh", ".txt") and "pkill -f" in p.read_text(errors="replace")]
    assert offenders == []


def test_an_impossible_federation_plan_stops_the_launcher_before_flower_starts(tmp_path, data_root, capsys):
    flwr_home = tmp_path / "flwr"
    code = simulation.launch(1000, f"partitioner='iid' data-root='{data_root}'", 2, 0.0, flwr_home, 39591, 39593, 60)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("error: audio split: 900 samples cannot give 600 clients min-partition-size=2 each")
    assert not flwr_home.exists()  # nothing was started


def test_the_serverapp_checks_the_plan_for_its_connected_nodes_before_round_1(tmp_path, data_root):
    """`flwr run .` without the launcher: the ServerApp refuses an impossible plan before any round."""
    from flwr.app import Context, RecordDict

    from app_config.run_config import ConfigError, RunConfig
    from server_app.app import main
    from tests.fake_grid import FakeGrid

    def never(message):
        raise AssertionError("no message may be sent for an impossible plan")

    values = {**RunConfig().as_mapping(), "partitioner": "iid", "data-root": str(data_root),
              "run-dir": str(tmp_path / "runs")}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=values)
    with pytest.raises(ConfigError) as err:
        main(FakeGrid(range(1, 1001), never), context)
    assert str(err.value).startswith("federation plan for 1000 clients: audio split: 900 samples cannot give 600 "
                                     "clients min-partition-size=2 each") and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()  # nothing was started or written


def test_stopping_a_superlink_also_stops_processes_that_left_its_tree(tmp_path):
    """Ray daemonises its GCS and raylet: they are found by the FLWR_HOME in their environment."""
    from experiments.common import flower_home_pids, stop_superlink

    home, other = tmp_path / "home", tmp_path / "home2"
    orphan = sleeper({**os.environ, "FLWR_HOME": str(home)})
    lookalike = sleeper({**os.environ, "FLWR_HOME": str(other)})
    with reaped(orphan, lookalike):
        assert orphan.pid in flower_home_pids(home) and lookalike.pid not in flower_home_pids(home)
        stop_superlink(home, grace=5)
        assert orphan.wait(timeout=10) is not None and lookalike.poll() is None
