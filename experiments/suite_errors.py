"""One-line errors for suite files: pydantic's validation errors as 'key.path: what is wrong'."""

from __future__ import annotations

import re

from pydantic import BaseModel, ValidationError


class SuiteError(ValueError):
    """A suite file that cannot run; the message is one line naming the file, entry and key."""


_TYPES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str",
          "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping"}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _where(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _valid_keys(loc: tuple, sections: dict) -> str:
    section = next((p for p in reversed(loc) if isinstance(p, str) and p in sections), None)
    return ", ".join(f.alias or name for name, f in sections[section].model_fields.items())


def describe_error(err: ValidationError, sections: dict[str | None, type[BaseModel]]) -> str:
    """The first problem of a validation error as 'key.path: what is wrong' (unknown keys first:
    a misspelt key also makes the key it was meant to be look missing). ``sections``: key of a
    mapping in the file (None = the top level) -> its model, for the list of valid keys."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc, kind, value = tuple(e["loc"]), e["type"], e.get("input")
    if kind == "extra_forbidden":
        prefix = _where(loc[:-1])
        return f"{prefix + ': ' if prefix else ''}unknown key {loc[-1]!r}; valid: {_valid_keys(loc[:-1], sections)}"
    if loc == ("entries",) and kind in ("missing", "too_short"):
        return "'entries' is missing or empty"
    where = f"{_where(loc)}: " if loc else ""
    if kind == "missing":
        return f"{where}required"
    if kind == "literal_error":
        valid = re.findall(r"'([^']*)'", e["ctx"]["expected"])
        return f"{where}unknown value {value!r}; valid: {', '.join(valid)}"
    if kind in _TYPES:
        return f"{where}expected {_TYPES[kind]}, got {value!r}"
    if kind in _BOUNDS:
        bound = next(iter(e["ctx"].values()))
        return f"{where}must be {_BOUNDS[kind]} {bound}, got {value!r}"
    if kind == "too_short":
        return f"{where}must not be empty"
    if kind == "string_pattern_mismatch":
        return f"{where}{value!r} must be letters, digits, '.', '_' or '-'"
    if kind == "value_error":
        return f"{where}{e['ctx']['error']}"
    return f"{where}{e['msg']}"
