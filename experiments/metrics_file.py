"""Read a run's ``metrics.jsonl`` (one JSON record per round) while it may still be written.

A run that is being written, or was killed mid-write, can end in a torn line.
Readers skip such a last line (and warn once per file) instead of crashing; a
broken line anywhere else is real damage and an error naming the file and line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class WarnOnce:
    """Logs a warning the first time a key is seen; one object per kind of warning, named at its call site."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def warning(self, key: str, message: str, *args: object) -> None:
        if key not in self.seen:
            self.seen.add(key)
            log.warning(message, *args)


TORN_LAST_LINES = WarnOnce()  # one warning per metrics file and process, however many readers read it


def read_records(path: Path) -> list[dict]:
    """Every complete record of a metrics.jsonl; a torn or garbage last line is skipped with a warning."""
    path = Path(path)
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not a JSON record ({err})") from err
            TORN_LAST_LINES.warning(str(path), "%s: skipped a torn last line (%d characters; the run may "
                                    "still be writing)", path, len(line))
            break
        records.append(record)
    return records
