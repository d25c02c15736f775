"""Refit the Gaussian backbone's prior on a folder of images.

    python -m pipelines.fit_gaussian out=FILE.npz [images=DIR]

(also ``python -m diffc.backbones.gaussian_fit``, the same command). ``images`` defaults to
``$DIFFC_CACHE/kodak`` (the verified Kodak download; ``make seed-data`` fills it offline); ``out``
is required and never a file inside the installed ``diffc`` package: the shipped fit
``diffc/backbones/params/gaussian_kodak.npz`` is hashed into every gaussian ``.diffc`` file's
fingerprint, and even a refit on the same images differs in the last bits (summation order), so
overwriting it would make every earlier file undecodable. A fit is used with
``model.options.params_path=FILE.npz`` (compress, evaluate) and ``options.params_path=FILE.npz``
(decompress). The file is written atomically.
"""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from analysis import cli
from diffc.backbones.gaussian import DEFAULT_PARAMS
from diffc.backbones.gaussian_fit import fit

from .common import CONF_DIR, PipelineError, atomic_write, check_writable, one_line_errors, require
from .datasets import cache_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: the installed codec package: nothing is written under it
PACKAGE_DIR = DEFAULT_PARAMS.resolve().parents[2]


@one_line_errors
def fit_gaussian(cfg: DictConfig) -> Path:
    """Fit on every image of ``cfg.images`` and write ``cfg.out``; returns the file written."""
    require(cfg, "out")
    out = Path(cfg.out)
    if out.resolve().is_relative_to(PACKAGE_DIR):
        raise PipelineError(f"out={out} is inside the diffc package ({PACKAGE_DIR}): the shipped prior is in "
                            "every gaussian file's fingerprint; write the fit elsewhere and use it with "
                            "model.options.params_path=FILE.npz")
    check_writable(out)
    images = Path(cfg.images) if cfg.images else cache_dir() / "kodak"
    paths = sorted(p for p in images.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise PipelineError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    mean, var = fit(paths)
    buf = BytesIO()
    np.savez(buf, mean=mean, var=var)
    atomic_write(out, buf.getvalue())
    print(f"fitted on {len(paths)} images -> {out} (use it with model.options.params_path={out})")
    return out


if __name__ == "__main__":
    cli.main(fit_gaussian, "fit_gaussian", verbatim=("images", "out"), config_dir=CONF_DIR)
