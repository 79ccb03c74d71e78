"""Every durable file write of the project: readers (and a resumed run) never see a half-written file.

The data goes to a temporary file in the target's folder, is flushed and
``fsync``-ed, then ``os.replace``-d over the target, and the folder is
``fsync``-ed so the rename itself survives a crash. If writing fails or the
process is interrupted before the rename, the temporary file is removed and the
previous file stays as it was (a SIGKILL can leave the temporary file behind;
writers that care remove such leftovers by their prefix).

The new file gets the mode of the file it replaces, or the mode a plain
``open(path, "w")`` would give it (``0o666`` less the umask): ``mkstemp``
alone would make every output ``0600`` and flip an existing ``0644`` file to
``0600`` on each rewrite (e.g. ``metrics.jsonl`` cut back on resume). Secrets
pass ``mode=0o600``; a folder published by one rename (the array cache) writes
its files with :func:`synced_write` and syncs the folder with :func:`fsync_dir`.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` survive a crash (best effort where folders cannot be synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask (read from /proc where possible; ``os.umask`` can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def target_mode(path: Path) -> int:
    """The permission bits ``path`` has, or those a new file would get from ``open``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def synced_write(path: Path, write: Callable[[BinaryIO], object], mode: int | None = None) -> Path:
    """Write a new file (no rename) and ``fsync`` it: for files inside a folder that is published as a whole."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with os.fdopen(fd, "wb") as fh:
        if mode is not None:
            os.fchmod(fh.fileno(), mode)
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def atomic_write(path: Path, write: Callable[[BinaryIO], object], prefix: str = ".tmp-",
                 mode: int | None = None) -> Path:
    """Replace ``path`` with what ``write(binary_file)`` writes, atomically, keeping its file mode
    (or giving it ``mode``)."""
    path = Path(path)
    mode = target_mode(path) if mode is None else mode
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: Path, text: str, mode: int | None = None) -> Path:
    """Replace a text file atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda fh: fh.write(text.encode()), prefix=f".{path.name}-", mode=mode)
