"""The machine-wide CPU lock: heavy jobs of different people on one machine run one after another.

Heavy jobs (federated runs, the centralized baseline, suite evaluation) hold an
exclusive ``flock`` on ``$FSSUAVL_RUN_LOCK`` (default ``/tmp/fssuavl-cpu.lock``;
``''`` disables it), so they do not overlap and their reported times are not
inflated by other work. The lock is re-entrant within a process and a no-op
under a parent that holds it already (e.g. ``flock /tmp/fssuavl-cpu.lock python -m ...``):
who holds it is read from the kernel (``/proc/locks``), so no module keeps state
about it; a :class:`CpuLock` object holds the open lock file while it is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

DEFAULT_LOCK = "/tmp/fssuavl-cpu.lock"
log = logging.getLogger(__name__)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def lock_held_by_ancestor(path: str) -> bool:
    """True when this process or one it descends from holds the flock on ``path`` (Linux /proc/locks):
    taking it again would wait forever."""
    try:
        st = os.stat(path)
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    ancestors = _ancestors()
    for line in locks:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == ident and parts[4].isdigit():
            if int(parts[4]) in ancestors:
                return True
    return False


class CpuLock:
    """The lock file at ``path`` ('' = no lock); :meth:`held` takes it unless this process or an ancestor has it."""

    def __init__(self, path: str | None = None) -> None:
        self.path = os.environ.get("FSSUAVL_RUN_LOCK", DEFAULT_LOCK) if path is None else path
        self.file = None  # the open lock file while this object holds the flock

    @contextlib.contextmanager
    def held(self):
        if not self.path or self.file is not None or lock_held_by_ancestor(self.path):
            yield  # disabled, or already held here or above: nested use does not wait on itself
            return
        fh = open(self.path, "a")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for the CPU lock %s (another heavy job is running)", self.path)
                fcntl.flock(fh, fcntl.LOCK_EX)
            self.file = fh
            yield
        finally:
            self.file = None
            fh.close()  # releases the flock


def run_lock(path: str | None = None):
    """Hold the machine-wide CPU lock for a ``with`` block (re-entrant within a process, a no-op under a
    parent that holds it already); no-op when the path is ''."""
    return CpuLock(path).held()
