"""What counts as a number in a config, a reply or a record: one definition for every check.

Python's ``bool`` is an ``int``; a ``True`` where a count or a rate is expected is
a mistake, not the number 1, so booleans are numbers only where a caller says so
(TensorBoard plots flags as 0/1).
"""

from __future__ import annotations

import math


def real_number(value: object, *, finite: bool = True, limit: float = math.inf,
                allow_bool: bool = False) -> float | None:
    """``value`` as a float when it is an int or float (a bool only with ``allow_bool``), finite unless
    ``finite=False``, within ``+-limit``; otherwise None (also for an int beyond float's range)."""
    if isinstance(value, bool) and not allow_bool:
        return None
    if not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    if finite and not math.isfinite(number):
        return None
    return number if math.isnan(number) or abs(number) <= limit else None


def positive_number(value: object) -> float | None:
    """A finite number > 0 (a learning rate, a clipping norm), else None."""
    number = real_number(value)
    return number if number is not None and number > 0 else None
