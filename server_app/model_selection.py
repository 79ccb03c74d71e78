"""Task-aware global-model selection (FASSL, Rehman et al., ICASSP Workshops 2024): after each evaluated round
the server keeps, per downstream task, the best global model so far.

A task is one central-evaluation score (``knn-image``, ``probe-audio``, ...). The scores come from the labelled
held-out split, so a selected model is **selected with labelled data**: its score is optimistic as a test
figure, and the run's summary says so beside each one. The final model stays the last round's; the selected
ones are saved as ``best-<task>.pt`` (written atomically) and listed in ``summary.json`` under
``selected-models`` with their round. A resumed run recovers the best scores from its history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

TASK_PREFIXES = ("knn-", "probe-")
SELECTION_NOTE = "selected on the labelled held-out split (task-aware selection): optimistic as a test score"


def task_scores(scores: dict) -> dict[str, float]:
    """The downstream-task scores of one central evaluation (not its floors or sample counts)."""
    return {k: float(v) for k, v in scores.items() if k.startswith(TASK_PREFIXES)}


class BestModels:
    """Best score and round per task; ``offer`` saves the model when it beats a task's best so far."""

    def __init__(self, save: Callable[[str], str], history: Iterable[dict] = ()) -> None:
        self.save = save  # file name -> written path
        self.best: dict[str, dict] = {}
        for record in history:  # a resumed run: the files of earlier rounds are already on disk
            for task, value in task_scores(record.get("eval", {})).items():
                if task not in self.best or value > self.best[task]["value"]:
                    self.best[task] = {"round": record["round"], "value": value, "file": f"best-{task}.pt"}

    def offer(self, server_round: int, scores: dict) -> list[str]:
        """Save the round's model for every task it improves (ties keep the earlier round); the tasks saved."""
        improved = [task for task, value in task_scores(scores).items()
                    if task not in self.best or value > self.best[task]["value"]]
        for task in improved:
            path = self.save(f"best-{task}.pt")
            self.best[task] = {"round": server_round, "value": task_scores(scores)[task], "file": str(path)}
        return improved

    def summary(self) -> dict:
        return {task: {**entry, "selection": SELECTION_NOTE} for task, entry in sorted(self.best.items())}
