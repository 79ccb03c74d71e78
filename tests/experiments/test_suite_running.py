"""Running a suite: the run config reaches Flower intact, signals reach the job, nothing is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from experiments import common, suite_jobs
from experiments.suite_plan import all_jobs, parse_suite
from tests.conftest import PROJECT
from tests.process_helpers import gone, wait_for

pytestmark = pytest.mark.integration  # starts processes: Flower's runtime, Ray, deployments

PYTHON = sys.executable


# --------------------------------------------------------------------------- run config injection
def test_a_quote_in_a_suite_value_cannot_add_run_config_keys(tmp_path, monkeypatch):
    from flwr.common.config import parse_config_args

    root = tmp_path / "it's x' num-server-rounds=99 fault-mode='hang"
    root.mkdir()
    suite = parse_suite(f"defaults: {{data-root: {json.dumps(str(root))}, strategy: fedavg}}\n"
                        "entries:\n  - {method: fssuavl}\n", "s.yaml")
    (job,) = all_jobs(suite)
    seen = {}
    monkeypatch.setattr(suite_jobs, "run_child", lambda cmd, *a, **k: seen.setdefault("cmd", cmd) and 0)
    suite_jobs._launch(suite, job, {**dict(job.overrides), "run-dir": str(tmp_path / "runs")}, tmp_path / "job")
    value = seen["cmd"][seen["cmd"].index("--run-config") + 1]
    as_flower_reads_it = parse_config_args([value])
    assert as_flower_reads_it["data-root"] == str(root)
    assert as_flower_reads_it["strategy"] == "fedavg"
    assert "num-server-rounds" not in as_flower_reads_it and "fault-mode" not in as_flower_reads_it
    assert common.load_overrides(value) == as_flower_reads_it  # the launcher checks what Flower will use


# --------------------------------------------------------------------------- suite signals
FAKE_LAUNCH = """
import os, signal, subprocess, sys, time
out = sys.argv[1]
grandchild = subprocess.Popen(["sleep", "300"])
open(os.path.join(out, "pids"), "w").write(f"{os.getpid()} {grandchild.pid}")
def cleanup(signum, frame):
    grandchild.terminate(); grandchild.wait()
    open(os.path.join(out, "cleaned"), "w").write(str(signum))
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, cleanup if sys.argv[2] == "polite" else signal.SIG_IGN)
print("[fssuavl] round 1 of a pretend run", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("child", ["polite", "stubborn"])
def test_suite_passes_sigterm_to_its_job_and_leaves_no_process(tmp_path, child):
    (tmp_path / "fake_launch.py").write_text(FAKE_LAUNCH)
    (tmp_path / "s.yaml").write_text(f"name: sig\nrunner: {{flwr-home: {json.dumps(str(tmp_path / 'flwr'))}}}\n"
                                     "evaluation: {untrained-reference: false}\nentries:\n  - {method: fssuavl}\n")
    driver = (f"import sys\nfrom experiments import suite_jobs, suite\n"
              f"suite_jobs.LAUNCHER = [sys.executable, {str(tmp_path / 'fake_launch.py')!r}, {str(tmp_path)!r}, "
              f"{child!r}, '--']\nsuite_jobs.CHILD_GRACE = 3\n"
              f"sys.exit(suite.main([{str(tmp_path / 's.yaml')!r}, '--work-dir', {str(tmp_path / 'work')!r}, "
              f"'--results', {str(tmp_path / 'results')!r}]))\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    suite = subprocess.Popen([PYTHON, "-c", driver], cwd=PROJECT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    pids_file = tmp_path / "pids"
    try:
        wait_for(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 2 or suite.poll() is not None,
                 120, "the job process to start")
        assert suite.poll() is None, suite.stderr.read()[-3000:]
        job, grandchild = map(int, pids_file.read_text().split())
        suite.send_signal(signal.SIGTERM)
        assert suite.wait(timeout=60) == 128 + signal.SIGTERM
        assert gone(job) and gone(grandchild)  # no orphans
        assert (tmp_path / "cleaned").exists() == (child == "polite")  # the job got the signal and cleaned up
        assert not (tmp_path / "results" / "sig" / "table.md").exists()  # interrupted: no report
    finally:
        if suite.poll() is None:
            suite.kill()
            suite.wait()
        if pids_file.exists():
            for pid in map(int, pids_file.read_text().split()):
                if not gone(pid):
                    os.kill(pid, signal.SIGKILL)
