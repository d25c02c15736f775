"""Target quality: the smallest rate point of ONE progressive encode whose reconstruction reaches
a quality (``compress psnr=X`` / ``ms_ssim=X`` / ``lpips=X``).

One encode gives every rate point (``diffc.codec.DiffcCodec.encode`` with every schedule step as
a stop); points are ordered by increasing rate. ``smallest_reaching`` bisects over them, calling
``quality(i)`` (the decoder's reconstruction of point i, scored against the original) at about
log2(n) + 1 points instead of n.

Assumption: quality is non-decreasing in the rate (a later stop transmits x_t at a lower noise
level, so its reconstruction is closer to the image). This holds only approximately: the sample
sent at each step is random, so PSNR can dip by a fraction of a dB between neighbouring steps.
The bisection therefore guarantees only what it evaluated: the point it returns WAS scored and
reaches the target, and the point just below it (when there is one) was scored and does not.
Under the assumption that is the smallest such point; without it, a smaller point reaching the
target can exist among the ones never scored (a non-monotone dip can only make the file larger
than necessary, never return a file that misses the target).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from analysis.schema import HIGHER_IS_BETTER

#: the metrics a target can name (compress's options of the same names)
TARGET_METRICS: tuple[str, ...] = ("psnr", "ms_ssim", "lpips")


@dataclass
class Search:
    """Outcome of ``smallest_reaching``: the chosen index (None: no evaluated point reaches the
    target) and every evaluated index's quality."""

    index: int | None
    scores: dict[int, float] = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        return len(self.scores)


def reaches(value: float, target: float, metric: str) -> bool:
    """Whether ``value`` of ``metric`` is at least as good as ``target`` (NaN never reaches)."""
    if math.isnan(value):
        return False
    return value >= target if HIGHER_IS_BETTER[metric] else value <= target


def best(scores: dict[int, float], metric: str) -> tuple[int, float]:
    """The evaluated point with the best quality: (index, value)."""
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    finite = {i: v for i, v in scores.items() if not math.isnan(v)}
    if not finite:
        return max(scores), math.nan
    i = max(finite, key=lambda k: (sign * finite[k], -k))
    return i, finite[i]


def smallest_reaching(n: int, quality: Callable[[int], float], target: float, metric: str) -> Search:
    """Bisection for the smallest index in 0..n-1 whose ``quality`` reaches ``target`` (points
    ordered by increasing rate; see the module's assumption). The highest-rate point is scored
    first: when it misses the target, nothing is searched further (index None). Then the invariant
    is: ``hi`` reaches the target (scored), every index < ``lo`` was ruled out by a scored index that
    misses it. At most 1 + ceil(log2 n) calls of ``quality``."""
    if n < 1:
        raise ValueError("no rate points to search")
    search = Search(None)

    def score(i: int) -> bool:
        search.scores[i] = float(quality(i))
        return reaches(search.scores[i], target, metric)

    if not score(n - 1):
        return search
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if score(mid):
            hi = mid
        else:
            lo = mid + 1
    search.index = hi
    return search
