"""Write pyproject.toml's ``[tool.flwr.app.config]`` from ``app_config.run_config.RunConfig``.

Flower reads a run's defaults from pyproject.toml; they are written once, in
``RunConfig``, and this command copies them there (a test fails while the two
differ). ``--check`` only reports whether the file is up to date.

    python -m tools.sync_pyproject_defaults [--check]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app_config.log_setup import setup_logging
from app_config.run_config import pyproject_section

PROJECT = Path(__file__).resolve().parents[1]
HEADER = "[tool.flwr.app.config]"
log = logging.getLogger("fssuavl.sync")


def with_section(text: str, section: str) -> str:
    """``text`` (a pyproject.toml) with its run-config section, and the comments right above it, replaced."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == HEADER)
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("[") and lines[i].strip() != HEADER), len(lines))
    while end > start and not lines[end - 1].strip():
        end -= 1
    return "".join(lines[:start]) + section + "".join(lines[end:])


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyproject", type=Path, default=PROJECT / "pyproject.toml")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs, write nothing")
    args = parser.parse_args(argv)
    text = args.pyproject.read_text()
    updated = with_section(text, pyproject_section())
    if updated == text:
        log.info("%s: run-config defaults up to date", args.pyproject)
        return 0
    if args.check:
        log.error("%s: run-config defaults differ from app_config/run_config.py; run "
                  "python -m tools.sync_pyproject_defaults", args.pyproject)
        return 1
    args.pyproject.write_text(updated)
    log.info("%s: run-config defaults written", args.pyproject)
    return 0


if __name__ == "__main__":
    sys.exit(main())
