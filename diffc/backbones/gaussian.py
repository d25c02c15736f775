"""The analytic Gaussian backbone: a blockwise-DCT Gaussian prior with its exact denoiser.

Latent ("identity VAE"): pixels mapped to [-1, 1], rotated by a fixed orthonormal colour
transform (luma + two opponent channels) and by the orthonormal 8x8 block DCT of each channel.
Both rotations are orthonormal, so isotropic noise and MSE are the same in latent and pixel
space (MSE per latent entry = MSE per pixel value on the [-1, 1] scale).

Prior: x0 ~ N(m, diag(lam)), with (m, lam) per colour channel and DCT frequency (3 x 8 x 8),
fitted on Kodak (``python -m pipelines.fit_gaussian images=DIR out=F``; shipped in params/gaussian_kodak.npz).
For x_t = a x0 + s eps the exact denoiser is, per coefficient,

    E[x0 | x_t] = m + lam a / (a^2 lam + s^2) (x_t - a m),   mmse(t) = lam s^2 / (s^2 + a^2 lam).

Closed forms (docs/design.md §1) used by tests and benchmarks: expected KL of step t -> t' is
c0^2 mmse(t) / (2 var) nats per coefficient; I(x0; x_t) = 1/2 sum log(1 + a^2 lam / s^2).
"""
from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..backbone import Backbone, register_backbone
from ..schedule import NoiseSchedule

BLOCK = 8
PARAMS_DIR = Path(__file__).with_name("params")
DEFAULT_PARAMS = PARAMS_DIR / "gaussian_kodak.npz"

#: orthonormal colour transform (rows): luma, red-blue, green-magenta
COLOR = torch.tensor([[1 / math.sqrt(3)] * 3,
                      [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
                      [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)]], dtype=torch.float64)


@lru_cache(maxsize=4)
def dct_matrix(n: int = BLOCK) -> torch.Tensor:
    """Orthonormal DCT-II matrix (float64 [n, n]); rows are basis functions."""
    k = torch.arange(n, dtype=torch.float64, device="cpu")[:, None]
    i = torch.arange(n, dtype=torch.float64, device="cpu")[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def to_coefficients(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [0, 1] (H, W multiples of 8) -> latent [3, H, W]: each 8x8 block holds its DCT."""
    x = image.to(torch.float64) * 2 - 1
    x = torch.einsum("dc,chw->dhw", COLOR.to(x.device), x)
    c, h, w = x.shape
    d = dct_matrix().to(x.device)
    blocks = x.reshape(c, h // BLOCK, BLOCK, w // BLOCK, BLOCK)
    coef = torch.einsum("ki,cbiBj,lj->cbkBl", d, blocks, d)
    return coef.reshape(c, h, w)


def from_coefficients(latent: torch.Tensor) -> torch.Tensor:
    """Inverse of ``to_coefficients`` (float64 in, image in [0, 1] scale, not clamped)."""
    c, h, w = latent.shape
    d = dct_matrix().to(latent.device)
    blocks = latent.to(torch.float64).reshape(c, h // BLOCK, BLOCK, w // BLOCK, BLOCK)
    x = torch.einsum("ki,cbkBl,lj->cbiBj", d, blocks, d).reshape(c, h, w)
    x = torch.einsum("dc,dhw->chw", COLOR.to(x.device), x)
    return (x + 1) / 2


def tile(per_block: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[3, 8, 8] per-frequency values -> [3, H, W] latent layout."""
    return per_block.repeat(1, height // BLOCK, width // BLOCK)


class GaussianBackbone(Backbone):
    """Exact MMSE denoiser of a Gaussian prior on block-DCT coefficients (prediction type 'sample')."""

    name = "gaussian"
    prediction_type = "sample"
    size_multiple = BLOCK

    def __init__(self, params_path: str | Path | None = None, beta_schedule: str = "scaled_linear",
                 beta_start: float = 0.00085, beta_end: float = 0.012, device: str = "cpu"):
        path = Path(params_path) if params_path else DEFAULT_PARAMS
        if not path.is_file():
            raise FileNotFoundError(f"Gaussian prior parameters not found: {path} "
                                    f"(build them with `python -m pipelines.fit_gaussian images=DIR out=F`)")
        with np.load(path) as f:
            self.mean = torch.from_numpy(f["mean"]).to(torch.float64)
            self.var = torch.from_numpy(f["var"]).to(torch.float64)
        if self.mean.shape != (3, BLOCK, BLOCK) or self.var.shape != (3, BLOCK, BLOCK) or not (self.var > 0).all():
            raise ValueError(f"{path}: expected mean/var of shape (3, 8, 8) with var > 0")
        self.params_path = path  # the prior's file (named by decompress's fingerprint-mismatch error)
        self._params_sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self._sched_args = dict(beta_start=beta_start, beta_end=beta_end, beta_schedule=beta_schedule)
        self.schedule = NoiseSchedule.ddpm(**self._sched_args)
        self.device = torch.device(device)

    def config(self) -> dict:
        return {"name": self.name, "params_sha256": self._params_sha, "block": BLOCK, **self._sched_args}

    def prior(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) tensors of the prior in latent layout, float64."""
        _, h, w = shape
        return tile(self.mean, h, w).to(self.device), tile(self.var, h, w).to(self.device)

    def sample_prior(self, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A latent x0 drawn from the prior itself (a synthetic source for theory checks)."""
        m, v = self.prior((3, height, width))
        eps = torch.randn(m.shape, generator=generator, dtype=torch.float64, device="cpu")
        return (m + v.sqrt() * eps.to(self.device)).to(torch.float32)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return to_coefficients(image).to(torch.float32)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return from_coefficients(latent).clamp(0, 1).to(torch.float32)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (3, height, width)

    def network(self, model_input: torch.Tensor, t: int, cond=None) -> torch.Tensor:
        m, v = self.prior(tuple(model_input.shape))
        a, s = self.schedule.a_s(t)
        x = model_input.to(torch.float64)
        return (m + v * a / (a * a * v + s * s) * (x - a * m)).to(torch.float32)

    def network_timestep(self, t: int) -> int:
        return t  # exact at every t, including the pure-noise start (a = 0)

    def mmse(self, shape: tuple[int, ...], t: int) -> torch.Tensor:
        """Per-coefficient posterior variance lam s^2 / (s^2 + a^2 lam) at timestep t (float64)."""
        _, v = self.prior(shape)
        a, s = self.schedule.a_s(t)
        return v * s * s / (s * s + a * a * v)

    def kl_weights(self, shape: tuple[int, ...], t: int, t_prev: int) -> torch.Tensor:
        return self.mmse(shape, t)


@register_backbone("gaussian")
def _gaussian(**options) -> GaussianBackbone:
    return GaussianBackbone(**options)
