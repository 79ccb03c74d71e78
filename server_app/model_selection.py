"""Task-aware global-model selection (FASSL, Rehman et al., ICASSP Workshops 2024): after each evaluated round
the server keeps, per downstream task, the best global model so far.

A task is one central-evaluation score (``knn-image``, ``probe-audio``, ...). The scores come from the labelled
held-out split, so a selected model is **selected with labelled data**: its score is optimistic as a test
figure, and the run's summary says so beside each one. The final model stays the last round's; the selected
ones are saved as ``best-<task>.pt`` (written atomically) and listed in ``summary.json`` under
``selected-models`` with their round (round 0, the initial weights, is never selected). A resumed run
recovers the best scores from its history.
"""

from __future__ import annotations

from collections.abc import Iterable

TASK_PREFIXES = ("knn-", "probe-")
SELECTION_NOTE = "selected on the labelled held-out split (task-aware selection): optimistic as a test score"


def task_scores(scores: dict) -> dict[str, float]:
    """The downstream-task scores of one central evaluation (not its floors or sample counts)."""
    return {k: float(v) for k, v in scores.items() if k.startswith(TASK_PREFIXES)}


def best_file(task: str) -> str:
    """The run-folder file holding the best global model for ``task``."""
    return f"best-{task}.pt"


class BestModels:
    """Best score and round per task; ``offer`` says which tasks a round's model improves (its caller saves
    that model as :func:`best_file` of each)."""

    def __init__(self, history: Iterable[dict] = ()) -> None:
        self.best: dict[str, dict] = {}
        for record in history:  # a resumed run: the files of earlier rounds are already on disk
            if record["round"] > 0:  # as when live: the initial weights are not a selection
                self.offer(record["round"], record.get("eval", {}))

    def offer(self, server_round: int, scores: dict) -> list[str]:
        """The tasks whose best score this round beats (ties keep the earlier round), recorded as the best."""
        improved = []
        for task, value in task_scores(scores).items():
            if task not in self.best or value > self.best[task]["value"]:
                self.best[task] = {"round": server_round, "value": value, "file": best_file(task)}
                improved.append(task)
        return improved

    def summary(self) -> dict:
        return {task: {**entry, "selection": SELECTION_NOTE} for task, entry in sorted(self.best.items())}
