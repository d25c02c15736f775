"""Shared fixtures of the core tests: the Gaussian backbone and small Kodak crops.

Images come from the dataset loaders (``DIFFC_CACHE``, as ``make test`` seeds it); when that
cache is unavailable they are read from the shared Kodak copy directly. This file never sets
``DIFFC_CACHE`` (tests/test_datasets.py owns that).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import datasets as ds

SHARED_KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"


def kodak_native(image_id: str) -> np.ndarray:
    """uint8 [H, W, 3] Kodak image at native size (cache first, then the shared copy)."""
    try:
        return ds.load_kodak([image_id])[0][1]
    except ds.DatasetError:
        path = SHARED_KODAK / f"{image_id}.png"
        if not path.is_file():
            pytest.skip(f"Kodak {image_id} unavailable (no DIFFC_CACHE copy, no {path})")
        return ds.read_image(path)


@pytest.fixture(scope="session")
def gaussian_backbone():
    from diffc.backbones.gaussian import GaussianBackbone

    return GaussianBackbone()


@pytest.fixture(scope="session")
def kodak64() -> torch.Tensor:
    """kodim05 as in kodak-small: center square crop, Lanczos to 64x64; float [3, 64, 64]."""
    img = ds.resize(ds.center_crop_square(kodak_native("kodim05")), 64, 64)
    return ds.to_tensor(img)


@pytest.fixture(scope="session")
def kodak_odd() -> torch.Tensor:
    """An odd-size crop of kodim05: 77 wide x 53 high (neither a multiple of 8); [3, 53, 77]."""
    img = kodak_native("kodim05")[200:253, 300:377]
    return ds.to_tensor(img)
