"""Resident memory of a simulation's whole process tree, sampled while it runs, per round.

Rounds are told apart by the lines already in the run's ``metrics.jsonl``
(round ``k`` runs while ``k`` lines are written), so a benchmark can show
whether memory grows with the rounds. :func:`watched_simulation` runs one
benchmark simulation under that watch and returns its round records.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from experiments.common import tree_rss_by_role
from experiments.metrics_file import read_records
from experiments.simulation import launch


class RoundMemory:
    """Peak tree memory per round: rounds are told apart by the lines already in metrics.jsonl.

    ``peaks[k]`` is the largest sum over the tree seen in round ``k``; ``roles[k]``
    is that sample split by process role (SuperLink, simulation with the ServerApp,
    Ray workers, raylet, ...), which tells where a growth comes from.
    """

    def __init__(self, flwr_home: Path, runs: Path, interval: float = 0.5) -> None:
        self.flwr_home, self.runs, self.interval = flwr_home, runs, interval
        self.peaks: dict[int, float] = {}
        self.roles: dict[int, dict[str, float]] = {}
        self.first_line_at: dict[int, float] = {}
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _lines(self) -> int:
        files = list(self.runs.glob("*/metrics.jsonl"))
        return files[0].read_bytes().count(b"\n") if files else 0

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            done = self._lines()  # rounds 0..done-1 are written: round `done` is running
            self.first_line_at.setdefault(done, time.monotonic() - self.started)
            roles = tree_rss_by_role(self.flwr_home)
            total = sum(roles.values())
            if total >= self.peaks.get(done, 0.0):
                self.peaks[done], self.roles[done] = total, roles

    def __enter__(self) -> RoundMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> float:
        """The peak over the whole run (MiB)."""
        return max(self.peaks.values(), default=0.0)


def watched_simulation(workdir: Path, supernodes: int, run_config: str, cpus: int, gpus: float,
                       ports: tuple[int, int]) -> tuple[list[dict], RoundMemory]:
    """One ``flwr run`` in ``workdir`` (its run folder under ``workdir/runs``) with its memory watched.

    Returns the run's ``metrics.jsonl`` records and the watch; a failed run ends the benchmark.
    """
    flwr_home, runs = workdir / "flwr", workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    with RoundMemory(flwr_home, runs) as memory:
        code = launch(supernodes, f"{run_config} run-dir='{runs}'".strip(), cpus, gpus, flwr_home, *ports,
                      timeout=7200)
    if code != 0:
        raise SystemExit(f"error: the {supernodes}-supernode simulation failed (exit {code})")
    (folder,) = runs.iterdir()
    return read_records(folder / "metrics.jsonl"), memory
