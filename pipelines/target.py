"""The targets of the ``bitrate`` group (conf/bitrate/, shared by compress and evaluate) and the
target-quality search.

``request`` reads the group into a ``Request``: the encode's ``diffc.rate.RateTarget`` (stop
timesteps and/or bpp budgets; one implementation of "the highest-rate point within a budget":
``diffc.rate.within``, applied by ``DiffcCodec.encode``) and, optionally, quality targets of one
metric: per target, the smallest rate point of ONE progressive encode whose decoder's
reconstruction reaches it (``compress psnr=X`` / ``ms_ssim=X`` / ``lpips=X``, evaluate
``bitrate.psnr=[...]``). The stop timesteps are then the candidates (null: every schedule step).

One encode gives every rate point (``diffc.codec.DiffcCodec.encode`` with every schedule step, or
the group's stop timesteps, as stops); points are ordered by increasing rate. ``smallest_reaching`` bisects over them, calling
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
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
from omegaconf import ListConfig

from analysis.errors import describe
from analysis.schema import HIGHER_IS_BETTER
from diffc.checks import checked_int
from diffc.rate import RateTarget

from .common import PipelineError

if TYPE_CHECKING:
    from diffc.codec import DiffcCodec, RatePoint

#: the metrics a target can name (compress's options and the bitrate group's keys of the same names)
TARGET_METRICS: tuple[str, ...] = ("psnr", "ms_ssim", "lpips")
#: the keys of the bitrate group (conf/bitrate/*.yaml): candidate stops, then the targets
GROUP_KEYS: tuple[str, ...] = ("stop_timesteps", "bpp", *TARGET_METRICS)


@dataclass(frozen=True)
class Request:
    """A bitrate group, read: the encode's rate target and the quality targets (``metric`` None =
    none; ``quality``: its targets, in increasing order of difficulty)."""

    rate: RateTarget
    metric: str | None = None
    quality: tuple[float, ...] = ()

    @property
    def kind(self) -> str:
        """What keys the points: ``stop_timesteps``, ``bpp`` or the quality metric."""
        return self.metric or ("bpp" if self.rate.bpp else "stop_timesteps")

    def targets(self) -> tuple[Any, ...] | None:
        """The targets of ``kind`` (None: the stop timesteps, every step of the schedule)."""
        return self.quality if self.metric else self.rate.bpp or self.rate.timesteps


def request(node: Mapping[str, Any], spelled: Mapping[str, str] | None = None) -> Request:
    """The ``Request`` of a bitrate group's node (keys ``GROUP_KEYS``; each null, a number or a list
    of numbers). At most one kind of target: bpp budgets or one quality metric. ``spelled``: how
    the command line names a key in errors (compress: ``timestep``). PipelineError in one line."""
    spelled = spelled or {}
    name = lambda k: spelled.get(k, f"bitrate.{k}")
    unknown = sorted(set(node) - set(GROUP_KEYS))
    if unknown:
        raise PipelineError(f"unknown bitrate option(s) {unknown} (known: {', '.join(GROUP_KEYS)})")
    values = {k: _numbers(node.get(k), name(k), integer=k == "stop_timesteps") for k in GROUP_KEYS}
    given = [k for k in GROUP_KEYS[1:] if values[k] is not None]
    if len(given) > 1:
        raise PipelineError(f"give one kind of target, got {', '.join(f'{name(k)}={_show(node[k])}' for k in given)}")
    try:
        rate = RateTarget(values["stop_timesteps"], values["bpp"] or ())
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    metric = next((k for k in given if k in TARGET_METRICS), None)
    if metric is None:
        return Request(rate)
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    return Request(rate, metric, tuple(sorted({float(v) for v in values[metric]}, key=lambda v: sign * v)))


def _numbers(value: Any, name: str, integer: bool) -> tuple | None:
    """A group value as a tuple of numbers (a scalar = a list of one), None when null."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    for v in items:
        if integer:
            checked_int(name, v, 0)
        elif isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise PipelineError(f"{name} must be a number (the target), got {_show(value)}")
    if not items:
        raise PipelineError(f"{name} must be null or a non-empty list")
    return tuple(items)


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, ListConfig) else repr(value)


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


def decoder_image(codec: DiffcCodec, point: RatePoint, caption: str | None, height: int, width: int) -> np.ndarray:
    """The uint8 image ``decompress`` will write for ``point``'s file: its x_t (the decoder's, bit for
    bit) reconstructed with the file's settings in the decoder's deterministic context
    (``DiffcCodec.decode_prefixes``)."""
    from diffc.determinism import deterministic
    from diffc.format import read

    from .datasets import to_uint8

    header = read(point.data)[0]
    with deterministic(codec.decode_threads(header)):
        cond = codec.backbone.condition(caption)
        return to_uint8(codec.reconstruct(point.x_t, point.timestep, height, width, cond, header.recon))


def quality_scorer(metric: str, device: Any = "cpu") -> Callable[[np.ndarray, np.ndarray], float]:
    """``score(ref, rec)`` of ``metric`` on uint8 images (``pipelines.metrics``); one line when it
    cannot be loaded here (lpips: the package or its AlexNet weights missing)."""
    from .metrics import REGISTRY

    try:
        return REGISTRY[metric](device)
    except Exception as exc:  # ImportError, weights not downloadable
        raise PipelineError(f"{metric}=X needs the {metric} metric, which cannot be loaded here: {describe(exc, 160)} "
                            f"(pip install -e '.[metrics]' and its weights)") from None


class QualitySearch:
    """The target-quality searches over the points of one encode of ``ref`` (uint8 [H, W, 3]):
    ``reach(target)`` bisects (``smallest_reaching``) on the decoder's reconstructions
    (``decoder_image``), each point reconstructed and scored at most once across targets."""

    def __init__(self, codec: DiffcCodec, points: list[RatePoint], metric: str,
                 score: Callable[[np.ndarray, np.ndarray], float], ref: np.ndarray, caption: str | None):
        self.codec, self.points, self.metric, self.score, self.ref, self.caption = (
            codec, points, metric, score, ref, caption)
        self.images: dict[int, np.ndarray] = {}
        self.scores: dict[int, float] = {}

    def quality(self, i: int) -> float:
        if i not in self.scores:
            self.images[i] = decoder_image(self.codec, self.points[i], self.caption, *self.ref.shape[:2])
            self.scores[i] = float(self.score(self.ref, self.images[i]))
        return self.scores[i]

    def reach(self, target: float) -> Search:
        return smallest_reaching(len(self.points), self.quality, target, self.metric)

    def unreachable(self, target: float, search: Search) -> str:
        """Why no point reaches ``target``: the best quality reached (one line)."""
        i, value = best(search.scores, self.metric)
        p = self.points[i]
        return (f"{self.metric}={target:g} is unreachable: the best reconstruction reaches {self.metric} {value:.4g} "
                f"(t={p.timestep}, {p.bpp:.4f} bpp, the highest-rate point)")
