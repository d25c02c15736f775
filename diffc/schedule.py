"""Noise schedules in the variance-preserving (VP) view, and the DDPM posterior.

Convention (used everywhere in this package):
    x_t = a_t * x0 + s_t * eps,   a_t = sqrt(abar_t),   s_t = sqrt(1 - abar_t),
    SNR_t = a_t / s_t  (an *amplitude* ratio, not a power ratio).

Timesteps are integers on the training grid 0..T-1 of the backbone. The chain of DiffC starts
from pure noise at the virtual timestep ``T`` (abar_T = 0 exactly), so the first coded step is
q(x_t | x0) itself and costs I(x0; x_t) in expectation.

Posterior (Ho et al. 2020, eq. 7) for t' < t, with alpha = abar_t / abar_t':
    q(x_t' | x_t, x0) = N(c0 * x0 + ct * x_t, var * I)
    c0  = sqrt(abar_t') (1 - alpha) / (1 - abar_t)
    ct  = sqrt(alpha) (1 - abar_t') / (1 - abar_t)
    var = (1 - abar_t') (1 - alpha) / (1 - abar_t)
The model's prior p(x_t' | x_t) is the same Gaussian with x0 replaced by the model's estimate,
so KL(q || p) = c0^2 ||x0 - x0_hat||^2 / (2 var) nats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .recon import RECON_GRIDS



@dataclass(frozen=True)
class PosteriorCoeffs:
    """Coefficients of q(x_t' | x_t, x0) = N(c0 * x0 + ct * x_t, var)."""

    c0: float
    ct: float
    var: float

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the ``squaredcos_cap_v2`` schedule: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)
    with abar(u) = cos^2((u + 0.008) / 1.008 * pi / 2) (float64; diffusers rounds them to float32)."""
    u = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    abar = np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


class NoiseSchedule:
    """Cumulative signal fractions abar_t on an integer grid, plus the virtual pure-noise step T.

    ``alphas_cumprod[t]`` for t in 0..T-1 comes from the backbone (DDPM betas, or a flow-matching
    sigma grid mapped to the VP view); ``abar(T)`` is 0.
    """

    def __init__(self, alphas_cumprod: Sequence[float] | np.ndarray | torch.Tensor):
        ac = np.asarray(torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu(), dtype=np.float64)
        if ac.ndim != 1 or len(ac) < 2:
            raise ValueError("alphas_cumprod must be a 1-D sequence of length >= 2")
        if not np.all((ac > 0) & (ac <= 1)):
            raise ValueError("alphas_cumprod must lie in (0, 1]")
        if np.any(np.diff(ac) > 0):
            raise ValueError("alphas_cumprod must be non-increasing in t")
        self.alphas_cumprod = ac

    @property
    def num_train_timesteps(self) -> int:
        """T: the pure-noise virtual timestep (one past the last training timestep)."""
        return len(self.alphas_cumprod)

    @classmethod
    def ddpm(cls, beta_start: float = 0.00085, beta_end: float = 0.012,
             beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
             timestep_labels: str = "project") -> "NoiseSchedule":
        """The DDPM schedules of diffusers' DDPMScheduler.

        ``timestep_labels``: ``project`` = label t has abar[t] (diffusers' convention, self-consistent
        with the network's timestep input); ``reference`` = the reference implementation's labels:
        label t has abar[t - 1] and label 0 is clean (abar = 1), while the network is still told t
        (docs/parity.md, row 7).

        ``scaled_linear`` (SD 1.5/2.1/XL), ``linear`` (the google/ddpm-* models) and
        ``squaredcos_cap_v2`` (the cosine schedule of Nichol & Dhariwal 2021, improved DDPM: betas
        discretise abar(u) = cos^2((u + 0.008) / 1.008 * pi / 2) on u = t / T, each beta capped at
        0.999, as diffusers' ``betas_for_alpha_bar``; beta_start / beta_end are unused).
        """
        if beta_schedule == "scaled_linear":
            betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps) ** 2
        elif beta_schedule == "linear":
            betas = np.linspace(beta_start, beta_end, num_train_timesteps)
        elif beta_schedule == "squaredcos_cap_v2":
            betas = cosine_betas(num_train_timesteps)
        else:
            raise ValueError(f"unsupported beta_schedule {beta_schedule!r} "
                             "(scaled_linear, linear, squaredcos_cap_v2)")
        ac = np.cumprod(1.0 - betas)
        if check_labels(timestep_labels) == "reference":
            ac = np.concatenate([[1.0], ac[:-1]])
        return cls(ac)

    @classmethod
    def flow_matching(cls, shift: float = 1.0, num_train_timesteps: int = 1000,
                      label_offset: int = 0) -> "NoiseSchedule":
        """Rectified flow x = (1-sigma) x0 + sigma eps on sigma = u/T (shifted), mapped to the VP view.

        Label t sits at u = t + 1 - ``label_offset`` (0: FlowMatchEulerDiscreteScheduler's training
        grid; 2: the reference implementation's sigma = (t - 1) / T; 1: sigma = t / T, what the
        reference tells its transformer). sigma' = shift sigma / (1 + (shift - 1) sigma), clipped
        to [1e-6, 1 - 1e-6]; a = (1-sigma)/r, s = sigma/r with r = sqrt((1-sigma)^2 + sigma^2), so abar = a^2.
        """
        sig = (np.arange(num_train_timesteps, dtype=np.float64) + 1 - label_offset) / num_train_timesteps
        sig = shift * sig / (1 + (shift - 1) * sig)
        sig = np.clip(sig, 1e-6, 1 - 1e-6)
        a2 = (1 - sig) ** 2
        return cls(a2 / (a2 + sig ** 2))

    def abar(self, t: int) -> float:
        if t == self.num_train_timesteps:
            return 0.0
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep {t} outside 0..{self.num_train_timesteps}")
        return float(self.alphas_cumprod[t])

    def a_s(self, t: int) -> tuple[float, float]:
        """Signal and noise amplitudes (a_t, s_t), a_t^2 + s_t^2 = 1."""
        ab = self.abar(t)
        return math.sqrt(ab), math.sqrt(1.0 - ab)

    def posterior(self, t: int, t_prev: int) -> PosteriorCoeffs:
        """Coefficients of q(x_{t_prev} | x_t, x0), t_prev < t (DDPM eq. 7)."""
        if not t_prev < t:
            raise ValueError(f"posterior needs t_prev < t, got {t_prev} >= {t}")
        ab_t, ab_p = self.abar(t), self.abar(t_prev)
        alpha = ab_t / ab_p
        c0 = math.sqrt(ab_p) * (1 - alpha) / (1 - ab_t)
        ct = math.sqrt(alpha) * (1 - ab_p) / (1 - ab_t)
        var = (1 - ab_p) * (1 - alpha) / (1 - ab_t)
        return PosteriorCoeffs(c0, ct, var)


TIMESTEP_LABELS = ("project", "reference")


def check_labels(timestep_labels: str) -> str:
    """Validate a ``timestep_labels`` option (project | reference)."""
    if timestep_labels not in TIMESTEP_LABELS:
        raise ValueError(f"timestep_labels must be one of {TIMESTEP_LABELS}, got {timestep_labels!r}")
    return timestep_labels


# ---- reconstruction grids ----------------------------------------------------------------------

#: The reference implementation's denoising timesteps (docs/reference/seed-settings.json,
#: ``denoising_timesteps``): DDIM from the transmitted x_t through those below t; 0 = the clean image.
REFERENCE_DENOISING_TIMESTEPS: tuple[int, ...] = (*range(981, 20, -20), 10, 5, 0)  # 981, 961, ..., 21, 10, 5, 0


def recon_timesteps(t: int, grid: str | Sequence[int], steps: int) -> list[int]:
    """The timesteps a reconstruction from x_t visits, t first.

    ``uniform``: ``steps`` DDIM steps evenly from t to 0 (rounded, duplicates dropped);
    ``reference``: t, then the reference's denoising timesteps strictly below t; a list of
    decreasing timesteps: t, then those of the list strictly below t.
    """
    if isinstance(grid, str):
        if grid == "uniform":
            return sorted({int(round(v)) for v in np.linspace(t, 0, steps + 1)}, reverse=True)
        if grid != "reference":
            raise ValueError(f"recon_grid must be one of {RECON_GRIDS} or a list, got {grid!r}")
        grid = REFERENCE_DENOISING_TIMESTEPS
    return [t, *(int(g) for g in grid if g < t)]


# ---- named encoding schedules (stored by name in the .diffc header) ----------------------------

# The reference implementation's encoding timesteps (docs/reference/seed-settings.json, SD-1.5):
# 972 -> 1 on the 1000-step grid, 161 steps, denser at low noise.
PAPER_TIMESTEPS: tuple[int, ...] = (
    972, 949, 929, 897, 869, 834, 805, 780, 751, 726, 704, 688, 670, 648, 627, 608, 591, 578, 561,
    546, 530, 520, 510, 498, 491, 480, 465, 455, 447, 438, 429, 419, 410, 402, 390, 380, 371, 361,
    353, 345, 336, 326, 319, 313, 305, 296, 289, 282, 276, 269, 261, 254, 247, 242, 237, 231, 224,
    219, 213, 209, 204, 200, 194, 189, 185, 181, 175, 170, 167, 163, 160, 156, 153, 149, 146, 143,
    139, 135, 132, 129, 125, 121, 118, 116, 113, 110, 107, 104, 101, 99, 96, 94, 92, 90, 87, 85,
    82, 80, 78, 76, 74, 72, 70, 68, 66, 64, 62, 60, 58, 56, 54, 52, 50, 48, *range(47, 0, -1),
)

#: where generated schedules start, as a fraction of T: the reference's first timestep (972 of 1000)
TOP_FRACTION = PAPER_TIMESTEPS[0] / 1000


#: the schedule families' ids in a .diffc header (``diffc.format``: 1 + index; the N of linspace-N and
#: geom-N follows as a varint; 0 = a name). Part of the format: append, never reorder.
SCHEDULE_FAMILIES = ("paper", "paper-flux", "linspace", "geom")


def encoding_timesteps(name: str, num_train_timesteps: int = 1000) -> list[int]:
    """Resolve a named encoding schedule to strictly decreasing timesteps (without the start T).

    Names: ``paper`` (the reference's 161 steps; ``paper-flux`` stops at 10 as the reference's
    Flux setting does), ``linspace-N`` (N steps evenly from TOP_FRACTION x T = 0.972 T down to 1),
    ``geom-N`` (N steps log-spaced from 0.972 T down to 1: denser at low noise).
    """
    if name == "paper":
        ts = list(PAPER_TIMESTEPS)
    elif name == "paper-flux":
        ts = [t for t in PAPER_TIMESTEPS if t >= 10]
    elif name.startswith(("linspace-", "geom-")):
        kind, _, n_str = name.partition("-")
        if not n_str.isdigit() or not 1 <= int(n_str) <= num_train_timesteps:
            raise ValueError(f"bad schedule name {name!r}: expected {kind}-N with 1 <= N <= {num_train_timesteps}")
        n, top = int(n_str), round(TOP_FRACTION * num_train_timesteps)
        grid = np.linspace(top, 1, n) if kind == "linspace" else np.geomspace(top, 1, n)
        ts = sorted({int(round(v)) for v in grid}, reverse=True)
    else:
        raise ValueError(f"unknown encoding schedule {name!r} (paper, paper-flux, linspace-N, geom-N)")
    ts = [t * num_train_timesteps // 1000 if name.startswith("paper") else t for t in ts]
    ts = sorted(set(ts), reverse=True)
    return ts
