"""Atomic file replacement: readers (and a resumed run) never see a half-written file.

The data goes to a temporary file in the target's folder, is flushed and
``fsync``-ed, then ``os.replace``-d over the target, and the folder is
``fsync``-ed so the rename itself survives a crash. If writing fails or the
process is interrupted before the rename, the temporary file is removed and the
previous file stays as it was (a SIGKILL can leave the temporary file behind;
writers that care remove such leftovers by their prefix).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def fsync_dir(folder: Path) -> None:
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


def atomic_write(path: Path, write: Callable[[BinaryIO], object], prefix: str = ".tmp-") -> Path:
    """Replace ``path`` with what ``write(binary_file)`` writes, atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
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
