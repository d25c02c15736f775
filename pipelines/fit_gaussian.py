"""Refit the Gaussian backbone's prior on a folder of images.

    python -m pipelines.fit_gaussian [images=DIR] [out=FILE.npz]

(also ``python -m diffc.backbones.gaussian_fit``, the same command). ``images`` defaults to
``$DIFFC_CACHE/kodak`` (the verified Kodak download; ``make seed-data`` fills it offline),
``out`` to the shipped fit ``diffc/backbones/params/gaussian_kodak.npz``; a fit elsewhere is used
with ``model.options.params_path=FILE.npz``. The file is written atomically.
"""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from analysis import cli
from diffc.backbones.gaussian import DEFAULT_PARAMS
from diffc.backbones.gaussian_fit import fit

from .common import PipelineError, atomic_write, one_line_errors
from .datasets import cache_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@one_line_errors
def fit_gaussian(cfg: DictConfig) -> Path:
    """Fit on every image of ``cfg.images`` and write ``cfg.out``; returns the file written."""
    images = Path(cfg.images) if cfg.images else cache_dir() / "kodak"
    out = Path(cfg.out) if cfg.out else DEFAULT_PARAMS
    paths = sorted(p for p in images.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise PipelineError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    mean, var = fit(paths)
    buf = BytesIO()
    np.savez(buf, mean=mean, var=var)
    atomic_write(out, buf.getvalue())
    print(f"fitted on {len(paths)} images -> {out}")
    return out


if __name__ == "__main__":
    cli.main(fit_gaussian, "fit_gaussian", verbatim=("images", "out"))
