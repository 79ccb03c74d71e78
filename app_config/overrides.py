"""Run-config overrides as ``flwr run --run-config`` takes them: ``"a=1 b='x'"`` (TOML literals)."""

from __future__ import annotations

import shlex
import tomllib


def parse_overrides(text: str) -> dict:
    """``"a=1 b='x'"`` -> ``{"a": 1, "b": "x"}``; a TOML error (a ValueError) names the bad part."""
    if not text:
        return {}
    return tomllib.loads("\n".join(shlex.split(text, posix=False)))
