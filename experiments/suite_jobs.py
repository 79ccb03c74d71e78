"""Running a suite's training jobs: launch subprocesses, reuse finished runs, pass signals on.

Each federated job is one ``experiments.launch`` child; its run config goes to it
as a TOML file written by a TOML library (a quote inside a suite value stays
inside that value). The child runs in its own session, so a terminal's Ctrl-C
reaches it once, through :func:`forwarding_signals`: SIGTERM or SIGINT sent to the
suite is passed on to the running child (whose own cleanup stops its SuperLink),
the suite waits for it, kills whatever is left of its process tree after a grace
period, and exits with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from experiments.common import (
    PROJECT,
    process_tree,
    start_times,
    stop_pids,
    stop_superlink,
    write_run_config,
)
from experiments.suite_plan import Job, Suite
from file_io.atomic import write_text

log = logging.getLogger("fssuavl.suite")
LAUNCHER = [sys.executable, "-m", "experiments.launch"]  # the command a federated job runs
CHILD_GRACE = 60.0  # seconds a signalled child gets to stop its SuperLink before it is killed
class JobProcesses:
    """The job processes this suite process runs, and the signals already passed on to them.

    The signal handler of :func:`forwarding_signals` reaches the running children
    through the one instance, :data:`JOBS`, that :func:`run_child` registers them with.
    """

    def __init__(self) -> None:
        self.running: dict[int, subprocess.Popen] = {}  # pid -> child
        self.signalled: set[int] = set()  # children the suite already passed a signal to
        self.stopping = 0  # the signal the suite is stopping on (0: running)

    def signal_once(self, child: subprocess.Popen, signum: int) -> None:
        """Pass ``signum`` to a running child unless it already got one."""
        if child.poll() is None and child.pid not in self.signalled:
            self.signalled.add(child.pid)
            child.send_signal(signum)

    def forward(self, signum, _frame) -> None:
        """Signal handler: pass the signal on to every running child, then end the suite (once)."""
        for child in list(self.running.values()):
            self.signal_once(child, signum)
        if self.stopping:  # a second signal must not cut the wait for the child's cleanup short
            log.warning("already stopping (signal %d); waiting for the job process to clean up", self.stopping)
            return
        self.stopping = signum
        log.warning("signal %d: stopping the running job and exiting", signum)
        raise SystemExit(128 + signum)  # unwinds through run_child: it waits for the child


JOBS = JobProcesses()


@contextlib.contextmanager
def forwarding_signals():
    """SIGTERM/SIGINT go to the running job process, then end the suite (handlers restored after)."""
    previous = {sig: signal.signal(sig, JOBS.forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        JOBS.stopping = 0


def _wind_down(child: subprocess.Popen, flwr_home: Path | None) -> None:
    """After an interruption: let the child finish its own cleanup, then make sure nothing is left."""
    JOBS.signal_once(child, signal.SIGTERM)
    try:
        child.wait(timeout=CHILD_GRACE)
    except subprocess.TimeoutExpired:
        log.warning("job process %d did not stop within %.0fs; killing its process tree", child.pid, CHILD_GRACE)
        tree = process_tree([child.pid])
        stop_pids(tree, grace=5, identities=start_times(tree))
        child.wait()
    if flwr_home is not None:
        stop_superlink(flwr_home)  # in case the child could not stop its SuperLink itself


def run_child(cmd: list[str], log_file: Path, on_line=None, flwr_home: Path | None = None) -> int:
    """Run one job process to its end, its output into ``log_file``; returns its exit code."""
    with open(log_file, "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        child = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        JOBS.running[child.pid] = child
        try:
            for line in child.stdout:
                out.write(line)
                if on_line is not None:
                    on_line(line)
            return child.wait()
        except BaseException:
            _wind_down(child, flwr_home)
            raise
        finally:
            JOBS.running.pop(child.pid, None)
            JOBS.signalled.discard(child.pid)


def finished_run(job_dir: Path) -> Path | None:
    """The run folder of a job finished on an earlier call, or None."""
    marker = job_dir / "job.json"
    if not marker.exists():
        return None
    try:
        folder = Path(json.loads(marker.read_text())["run-folder"])
    except (ValueError, KeyError):
        return None
    return folder if (folder / "final_model.pt").exists() and (folder / "summary.json").exists() else None


def launch_command(suite: Suite, job: Job, config_file: Path) -> list[str]:
    r = suite.runner
    return [*LAUNCHER, "--num-supernodes", str(job.num_supernodes), "--client-cpus", str(r.client_cpus),
            "--client-gpus", str(r.client_gpus), "--flwr-home", str(Path(r.flwr_home).expanduser()),
            "--superlink-port", str(r.superlink_port), "--control-port", str(r.control_port),
            "--timeout", str(r.timeout), "--run-config", str(config_file)]


def run_job(suite: Suite, job: Job, work_dir: Path, runs: dict[str, Path], fresh: bool = False) -> Path:
    """Train one job (or reuse its finished run); return its run folder."""
    job_dir = work_dir / job.id
    if not fresh and (done := finished_run(job_dir)) is not None:
        log.info("%s: reusing %s", job.id, done)
        return done
    runs_dir = job_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    overrides = {**dict(job.overrides), "run-dir": str(runs_dir)}
    started = time.perf_counter()
    before = set(runs_dir.iterdir())
    log.info("%s: training (%s, %s)", job.id, job.kind, job.describe())
    if job.kind == "federated":
        _launch(suite, job, overrides, job_dir)
    else:
        _centralized(job, overrides, runs[job.budget_job.id], runs_dir, method=job.kind)
    new = sorted(set(runs_dir.iterdir()) - before)
    seconds = time.perf_counter() - started
    if len(new) != 1 or not (new[0] / "final_model.pt").exists():
        raise RuntimeError(f"{job.id}: no finished run folder under {runs_dir} (see {job_dir / 'launch.log'})")
    write_text(job_dir / "job.json", json.dumps({"run-folder": str(new[0]), "seconds": seconds, "kind": job.kind,
                                                  "seed": job.seed, "overrides": dict(job.overrides),
                                                  "num-supernodes": job.num_supernodes}, indent=2))
    log.info("%s: done in %.0fs -> %s", job.id, seconds, new[0])
    return new[0]


def _show(line: str) -> None:
    if "[fssuavl] round" in line:
        log.info("  %s", line[line.find("[fssuavl]"):].rstrip())
    elif line.startswith("error"):
        log.error("  %s", line.rstrip())


def _launch(suite: Suite, job: Job, overrides: dict, job_dir: Path) -> None:
    config_file = write_run_config(overrides, job_dir / "run_config.toml")
    log_file = job_dir / "launch.log"
    code = run_child(launch_command(suite, job, config_file), log_file, _show,
                     Path(suite.runner.flwr_home).expanduser())
    if code != 0:
        raise RuntimeError(f"{job.id}: experiments.launch exited {code}; see {log_file}")


def _centralized(job: Job, overrides: dict, budget_run: Path, runs_dir: Path, method: str = "centralized") -> None:
    from experiments.centralized_training import budget_from_metrics, config_from, pooled_data, train_centralized

    config = config_from(overrides)
    budget = budget_from_metrics(budget_run / "metrics.jsonl", config.batch_size)
    pooled = pooled_data(config, job.num_supernodes)
    train_centralized(config, budget, pooled, runs_dir, f"clients of {budget_run.name}", method=method)
