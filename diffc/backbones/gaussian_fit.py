"""Fit the Gaussian backbone's prior (mean and variance per colour channel x DCT frequency).

    python -m diffc.backbones.gaussian_fit out=FILE.npz [images=DIR]

The command line is ``pipelines.fit_gaussian``'s (a Hydra app like every command of the project;
the codec core has no command-line framework, so running this module hands over to it). ``images``
defaults to $DIFFC_CACHE/kodak (the verified Kodak download; ``make seed-data`` fills it
offline). Each image is cropped to multiples of 8; statistics are pooled over all blocks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .gaussian import BLOCK, to_coefficients

VAR_FLOOR = 1e-6


def fit(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled per-frequency mean and variance of the latent coefficients of the images."""
    total = np.zeros((3, BLOCK, BLOCK))
    total_sq = np.zeros((3, BLOCK, BLOCK))
    n = 0
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0
        h, w = (img.shape[0] // BLOCK) * BLOCK, (img.shape[1] // BLOCK) * BLOCK
        coef = to_coefficients(torch.from_numpy(img[:h, :w]).permute(2, 0, 1)).numpy()
        blocks = coef.reshape(3, h // BLOCK, BLOCK, w // BLOCK, BLOCK)
        total += blocks.sum(axis=(1, 3))
        total_sq += (blocks ** 2).sum(axis=(1, 3))
        n += (h // BLOCK) * (w // BLOCK)
    mean = total / n
    var = np.maximum(total_sq / n - mean ** 2, VAR_FLOOR)
    return mean, var


if __name__ == "__main__":  # only when run as a script: importing this module loads no pipelines code
    import runpy

    runpy.run_module("pipelines.fit_gaussian", run_name="__main__", alter_sys=True)
