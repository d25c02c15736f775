"""Fit the Gaussian backbone's prior (mean and variance per colour channel x DCT frequency).

    python -m diffc.backbones.gaussian_fit [IMAGE_DIR] [--out diffc/backbones/params/gaussian_kodak.npz]

IMAGE_DIR defaults to $DIFFC_CACHE/kodak (the verified Kodak download; ``make seed-data`` fills
it offline). Each image is cropped to multiples of 8; statistics are pooled over all blocks.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .gaussian import BLOCK, DEFAULT_PARAMS, to_coefficients

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_dir = Path(os.environ.get("DIFFC_CACHE", Path.home() / ".cache" / "diffc")) / "kodak"
    ap.add_argument("image_dir", nargs="?", type=Path, default=default_dir)
    ap.add_argument("--out", type=Path, default=DEFAULT_PARAMS)
    args = ap.parse_args(argv)
    paths = sorted(p for p in args.image_dir.glob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not paths:
        print(f"error: no images in {args.image_dir}", file=sys.stderr)
        return 2
    mean, var = fit(paths)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez(tmp, mean=mean, var=var)
    os.replace(tmp, args.out)
    print(f"fitted on {len(paths)} images -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
