"""Helpers for tests that start and stop real processes."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def gone(pid: int) -> bool:
    """No such process, or only its zombie is left."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


@contextmanager
def reaped(*procs: subprocess.Popen) -> Iterator[None]:
    """Whatever the block does, ``procs`` are killed and reaped when it ends."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def sigkill(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Kill ``proc`` as a crash would (no handler runs) and wait for it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=timeout)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
