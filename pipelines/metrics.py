"""Image-quality metrics: a registry of per-image metrics and dataset-level FID/KID on patches.

Every metric is evaluated on uint8-quantized images (what a PNG of the reconstruction holds).
Heavy metrics are loaded lazily, once per ``MetricSet`` (= once per job). A metric that cannot be
loaded or computed gives NaN and a reason; the reason is logged ONCE per metric per job as a
warning and returned with every row, and the run goes on.

Registry (``metrics.names`` in conf/metrics/*.yaml):
- ``psnr``: 10 log10(255^2 / MSE) over all pixels and channels of the uint8 images (own code).
- ``ms_ssim``: torchmetrics MS-SSIM (11x11 Gaussian window, data range 1). The standard 5 scales
  need a short side >= 176 px; smaller images use the most scales that fit (the first k standard
  betas, renormalized; k recorded in ``ms_ssim_scales``); below 11 px it is NaN.
- ``lpips``: the ``lpips`` package, AlexNet variant (needs torchvision).
- ``dists``, ``qalign``: ``pyiqa`` (DISTS full-reference; Q-Align no-reference, on the
  reconstruction only); both download weights on first use.
Dataset-level ``fid_kid``: torchmetrics FID/KID on patch_size x patch_size patches (a grid plus a
grid shifted by half a patch, as in HiFiC); needs torch-fidelity's Inception weights.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from analysis.errors import describe
from analysis.schema import PER_IMAGE_METRICS

log = logging.getLogger(__name__)

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL = 11


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (package missing, weights not downloadable, image too small)."""


def _batch(img: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(255).to(device)


def psnr(ref: np.ndarray, rec: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when identical)."""
    mse = float(np.mean((ref.astype(np.float64) - rec.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales fit: the coarsest scale must hold the window, and torchmetrics
    also needs side // (scales - 1)^2 >= kernel (5 scales: short side >= 176 px; 64 px: 3)."""
    side = min(height, width)
    for k in range(len(MS_SSIM_BETAS), 1, -1):
        if min(side // (k - 1) ** 2, side // 2 ** (k - 1)) >= MS_SSIM_KERNEL:
            return k
    return 1 if side >= MS_SSIM_KERNEL else 0


def ms_ssim(ref: np.ndarray, rec: np.ndarray, device: torch.device = torch.device("cpu")) -> float:
    """MS-SSIM of two uint8 images with as many of the 5 standard scales as the size allows."""
    from torchmetrics.functional.image import (multiscale_structural_similarity_index_measure,
                                               structural_similarity_index_measure)

    k = ms_ssim_scales(*ref.shape[:2])
    if k == 0:
        raise MetricUnavailable(f"image {ref.shape[1]}x{ref.shape[0]} smaller than the {MS_SSIM_KERNEL}px window")
    x, y = _batch(rec, device), _batch(ref, device)
    if k == 1:
        return float(structural_similarity_index_measure(x, y, data_range=1.0))
    betas = tuple(b / sum(MS_SSIM_BETAS[:k]) for b in MS_SSIM_BETAS[:k])
    return float(multiscale_structural_similarity_index_measure(x, y, data_range=1.0, betas=betas))


def _load_lpips(device: torch.device) -> Callable[[np.ndarray, np.ndarray], float]:
    import lpips  # noqa: PLC0415  (optional dependency)

    net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()

    def score(ref: np.ndarray, rec: np.ndarray) -> float:
        with torch.no_grad():
            return float(net(_batch(rec, device) * 2 - 1, _batch(ref, device) * 2 - 1))

    return score


def _load_pyiqa(name: str, device: torch.device, full_reference: bool) -> Callable[[np.ndarray, np.ndarray], float]:
    import pyiqa  # noqa: PLC0415  (optional dependency)

    net = pyiqa.create_metric(name, device=device, as_loss=False)

    def score(ref: np.ndarray, rec: np.ndarray) -> float:
        with torch.no_grad():
            args = (_batch(rec, device), _batch(ref, device)) if full_reference else (_batch(rec, device),)
            return float(net(*args))

    return score


# name -> loader(device) -> score(ref_uint8, rec_uint8); the names and their order are
# analysis.schema.PER_IMAGE_METRICS' (the one metric list; tests/test_pipeline.py checks it)
Loader = Callable[[torch.device], Callable[[np.ndarray, np.ndarray], float]]
REGISTRY: dict[str, Loader] = {
    "psnr": lambda device: psnr,
    "ms_ssim": lambda device: lambda ref, rec: ms_ssim(ref, rec, device),
    "lpips": _load_lpips,
    "dists": lambda device: _load_pyiqa("dists", device, full_reference=True),
    "qalign": lambda device: _load_pyiqa("qalign", device, full_reference=False),
}


class MetricSet:
    """The metrics of one job: each loaded at most once, failures reported once."""

    def __init__(self, names: Sequence[str], device: torch.device | str = "cpu",
                 loaded: Mapping[str, Callable[[np.ndarray, np.ndarray], float]] | None = None):
        """``loaded``: scorers the caller already holds (e.g. a quality target's), used as they are."""
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; available: {', '.join(REGISTRY)}")
        self.names = list(names)
        self.device = torch.device(device)
        self._scorers: dict[str, Callable[[np.ndarray, np.ndarray], float]] = dict(loaded or {})
        self._unavailable: dict[str, str] = {}
        self._warned: set[str] = set()

    def _scorer(self, name: str) -> Callable[[np.ndarray, np.ndarray], float] | None:
        if name not in self._scorers and name not in self._unavailable:
            try:
                self._scorers[name] = REGISTRY[name](self.device)
            except Exception as exc:  # ImportError, download failures, ...: NaN + reason
                self._unavailable[name] = f"unavailable ({describe(exc, 200)})"
        return self._scorers.get(name)

    def _warn(self, name: str, reason: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("metric %s -> NaN: %s", name, reason)

    def compute(self, ref: np.ndarray, rec: np.ndarray) -> tuple[dict[str, float], dict[str, str]]:
        """Scores of uint8 ``rec`` against uint8 ``ref``: ({metric: value}, {metric: reason for NaN}).

        Every name of ``PER_IMAGE_METRICS`` gets a value; those not requested are NaN with reason
        'not requested'.
        """
        values = {n: math.nan for n in PER_IMAGE_METRICS}
        reasons = {n: "not requested" for n in PER_IMAGE_METRICS if n not in self.names}
        for name in self.names:
            scorer = self._scorer(name)
            if scorer is None:
                reasons[name] = self._unavailable[name]
                self._warn(name, reasons[name])
                continue
            try:
                values[name] = scorer(ref, rec)
            except Exception as exc:  # one image failing (too small, ...) must not stop the job
                reasons[name] = describe(exc, 200)
                self._warn(name, reasons[name])
        return values, reasons


def format_reasons(reasons: dict[str, str], requested: Iterable[str]) -> str:
    """The ``metric_errors`` cell: 'name: reason; ...' for requested metrics that are NaN."""
    wanted = set(requested)
    return "; ".join(f"{k}: {v}" for k, v in reasons.items() if k in wanted)


# ---- dataset-level FID / KID on patches ---------------------------------------------------------
def extract_patches(img: np.ndarray, size: int = 256) -> list[np.ndarray]:
    """size x size patches of an [H, W, 3] image: the aligned grid plus the grid shifted by size/2."""
    h, w = img.shape[:2]
    out = []
    for off in (0, size // 2):
        for top in range(off, h - size + 1, size):
            for left in range(off, w - size + 1, size):
                out.append(img[top:top + size, left:left + size])
    return out


@dataclass
class FidKid:
    """Result of ``fid_kid``: NaN values come with a reason."""

    fid: float
    kid: float
    n_patches: int
    reason: str = ""


def fid_kid(refs: Sequence[np.ndarray], recs: Sequence[np.ndarray], patch: int = 256,
            device: torch.device | str = "cpu", feature: torch.nn.Module | None = None) -> FidKid:
    """FID and KID (mean) between the patches of ``refs`` and of ``recs`` (uint8 images).

    ``feature`` replaces the Inception network (for tests); by default torch-fidelity's
    InceptionV3 (2048-d pool features) is used, which must be installed and downloadable.
    """
    ref_p = [p for img in refs for p in extract_patches(img, patch)]
    rec_p = [p for img in recs for p in extract_patches(img, patch)]
    n = min(len(ref_p), len(rec_p))
    if n < 2:
        return FidKid(math.nan, math.nan, n, f"{n} patches of {patch}px (images too small or too few)")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        feat = feature if feature is not None else 2048
        fid = FrechetInceptionDistance(feature=feat, normalize=True).to(device)
        kid = KernelInceptionDistance(feature=feat, subset_size=min(1000, n), normalize=True).to(device)
        for start in range(0, n, 32):
            stop = min(start + 32, n)  # n patches of each side, whatever the other side has beyond n
            for metric in (fid, kid):
                metric.update(torch.cat([_batch(p, device) for p in ref_p[start:stop]]), real=True)
                metric.update(torch.cat([_batch(p, device) for p in rec_p[start:stop]]), real=False)
        return FidKid(float(fid.compute()), float(kid.compute()[0]), n)
    except Exception as exc:  # torch-fidelity missing, weights not downloadable, ...
        return FidKid(math.nan, math.nan, n, f"unavailable ({describe(exc, 200)})")
