"""The PNGs of a job directory, written by the sweep (``pipelines.evaluate``) and read by the
figures (``analysis.visual_comparison``) with numpy and imagecodecs only: no torch, no pipelines.

``RECON/IMAGE/LABEL.png`` (``recon_png``): LABEL a rate point's ``point_label`` ('t700',
'bpp0.1', 'vae'; 8-bit RGB, what the decoder gives) or ``ORIGINAL``, the image the job coded
(after its protocol) at its own precision: 8-bit RGB for uint8 images, 16-bit RGB for float32
ones (``pipelines.datasets.read_image``'s two kinds), samples round(65535 x), read back as
float32 / 65535 (16-bit sources exactly, resized float images within 1 / 131070).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import imagecodecs
import numpy as np

from .errors import UsageError, describe

#: a job dir's folder of saved PNGs (``save.recon_png``)
RECON = "recon"
#: the label of the image as the job coded it, beside its reconstructions
ORIGINAL = "original"
#: full scale of a 16-bit sample
U16 = 65535


def point_label(recon_timestep: int | None, target_bpp: float, target_metric: str | None = None,
                target_quality: float = math.nan) -> str:
    """File stem of a rate point: 'vae' (no stop timestep), 't700' (``target_bpp`` NaN: the
    timesteps plan), 'bpp0.1' (the bpp plan's target, ``%g``) or 'psnr24' (a quality target's
    metric and value, ``%g``)."""
    if recon_timestep is None:
        return "vae"
    if target_metric:
        return f"{target_metric}{target_quality:g}"
    return f"t{recon_timestep}" if math.isnan(target_bpp) else f"bpp{target_bpp:g}"


def row_label(row: Mapping[str, Any]) -> str:
    """``point_label`` of a results row (its recon_timestep, target_bpp, target_metric, target_quality;
    the last two absent or null in shards written before them)."""
    from pandas import isna  # the rows' nulls (NaN, <NA>); the PNG readers above need no pandas

    t, metric, quality = row["recon_timestep"], row.get("target_metric"), row.get("target_quality")
    return point_label(None if isna(t) else int(t), float(row["target_bpp"]), None if isna(metric) else str(metric),
                       math.nan if isna(quality) else float(quality))


def recon_png(job_dir: str | os.PathLike, image_id: str, label: str) -> Path:
    """Where a job dir keeps the PNG ``label`` of image ``image_id``."""
    return Path(job_dir) / RECON / image_id / f"{label}.png"


def encode_png(img: np.ndarray) -> bytes:
    """A PNG of an [H, W, 3] image: uint8 as 8-bit, float (in [0, 1]) as 16-bit round(65535 x)."""
    if img.dtype == np.uint8:
        return imagecodecs.png_encode(np.ascontiguousarray(img))
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"encode_png takes uint8 or float images, got {img.dtype}")
    return imagecodecs.png_encode(np.round(np.clip(img, 0, 1) * U16).astype(np.uint16))


def read_png(path: str | os.PathLike) -> np.ndarray:
    """A PNG as RGB [H, W, 3]: uint8 for 8-bit samples, float32 in [0, 1] for 16-bit ones (/ 65535);
    gray is repeated to RGB, an alpha channel dropped. One line (``UsageError``) when unreadable."""
    try:
        a = np.atleast_3d(imagecodecs.png_decode(Path(path).read_bytes()))
    except (OSError, ValueError, imagecodecs.PngError) as exc:  # missing, not a PNG, damaged
        raise UsageError(f"cannot read {path}: {describe(exc, 200)}") from None
    a = a[..., :3] if a.shape[-1] >= 3 else np.repeat(a[..., :1], 3, axis=-1)
    return a.astype(np.float32) / np.float32(U16) if a.dtype == np.uint16 else a
