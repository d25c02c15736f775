"""What one progressive encode is asked for: a rate target, one value validated in one place.

A rate point of an encode is the file of stop step k: the symbols of steps 1..k (``diffc.codec``).
A ``RateTarget`` names the points to keep:

- ``timesteps``: stop timesteps, each reached at the largest schedule timestep <= it
  (``diffc.chain.Chain.stop_step_for``); None = every step of the schedule.
- ``bpp``: budgets in bits per pixel. Per budget B, the highest-rate stop whose file holds at most
  B x W x H bits (``within``: bpp = 8 x file bytes / (W x H) of the original image, every bit of
  the file counted); none fits = no point. Empty = every stop is a point.

A point is keyed by what asked for it (``keys``): its budget when ``bpp`` is set, else its
requested stop timestep. Since a later stop's file extends an earlier one's, the file sizes grow
with the step, so with budgets the encoder stops after the first file over the largest budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Protocol, Sequence, TypeVar


class Sized(Protocol):
    """A rate point as ``within`` reads it: its file's bits per pixel."""

    @property
    def bpp(self) -> float: ...


P = TypeVar("P", bound=Sized)


@dataclass(frozen=True)
class RateTarget:
    """Stop timesteps and/or bpp budgets (module docstring). Raises ValueError on a bad value.

    ``timesteps`` are kept in decreasing order (increasing rate), ``bpp`` in increasing order,
    each without repeats."""

    timesteps: tuple[int, ...] | None = None
    bpp: tuple[float, ...] = ()

    def __post_init__(self):
        if self.timesteps is not None:
            ts = tuple(self.timesteps)
            if not ts or any(isinstance(t, bool) or not isinstance(t, Integral) or t <= 0 for t in ts):
                raise ValueError(f"stop timesteps must be a non-empty list of positive integers, got {list(ts)}")
            object.__setattr__(self, "timesteps", tuple(sorted({int(t) for t in ts}, reverse=True)))
        bpp = tuple(self.bpp)
        if any(isinstance(b, bool) or not isinstance(b, Real) or not (math.isfinite(b) and b > 0) for b in bpp):
            raise ValueError(f"bpp targets must be positive numbers, got {list(bpp)}")
        object.__setattr__(self, "bpp", tuple(sorted({float(b) for b in bpp})))

    def keys(self, schedule: Sequence[int]) -> tuple[float, ...] | tuple[int, ...]:
        """What the points are keyed by, in increasing rate: the budgets, or the stop timesteps
        (``schedule``'s steps, ``schedule[1:]``, when ``timesteps`` is None)."""
        if self.bpp:
            return self.bpp
        return self.stops(schedule)

    def stops(self, schedule: Sequence[int]) -> tuple[int, ...]:
        """The stop timesteps to encode: ``timesteps``, or every step of ``schedule`` ([T, t_1, ...])."""
        return tuple(schedule[1:]) if self.timesteps is None else self.timesteps

    def max_bits(self, pixels: int) -> float | None:
        """The largest budget in bits of a ``pixels``-pixel image (None: no budget)."""
        return self.bpp[-1] * pixels if self.bpp else None


def within(points: Sequence[P], bpp: float) -> P | None:
    """The highest-rate point of ``points`` (increasing rate) whose file is at most ``bpp`` bits per
    pixel, or None when none is: THE "best point within a budget" of compress and evaluate."""
    fits = [p for p in points if p.bpp <= bpp]
    return fits[-1] if fits else None
