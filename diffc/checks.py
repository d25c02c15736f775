"""The validated integer: one rule for every integer setting, in the core and the commands alike.

A setting that counts something (pixels, steps, threads, bits, a seed, a frame number) is an
integer in a closed range lo..hi. ``checked_int`` is the one place that says so: it returns the
value as a Python ``int`` or raises ``InvalidValue`` with one line naming the setting, the range
and what was given. Standard library only: importing it loads no torch.
"""
from __future__ import annotations

import numbers
from typing import Any



class InvalidValue(ValueError):
    """A setting outside its allowed values: a ``ValueError`` to the code that calls with it, and
    to a command's user one line, no traceback (an expected error of the commands:
    ``pipelines.common.EXPECTED_ERRORS``)."""


def int_range(lo: int, hi: int | None) -> str:
    """The words for lo..hi: ``an integer in 0..255``, ``a positive integer`` (1.., no upper bound),
    ``an integer >= lo`` (any other lower bound alone)."""
    if hi is not None:
        return f"an integer in {lo}..{hi}"
    return "a positive integer" if lo == 1 else f"an integer >= {lo}"


def checked_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an ``int`` in lo..hi (``hi`` None: no upper bound), else ``InvalidValue``:
    ``NAME must be an integer in LO..HI, got VALUE``.

    Any integral type passes (``int``, numpy's integers); ``bool`` is refused although Python counts
    it an ``int`` (``True`` is never a count someone meant), and so are floats, even integral ones
    (``3.0``), strings and ``None``: a setting is never rounded or parsed on the quiet."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo or (
            hi is not None and value > hi):
        raise InvalidValue(f"{name} must be {int_range(lo, hi)}, got {value!r}")
    return int(value)
