"""An independent oracle of the reference implementation's chain maths (JeremyIV/diffc), for
tests/test_parity.py.

Written from the reference's description, in the reference's own conventions, without calling the
project's schedule, prediction or codec code (``diffc.schedule``, ``diffc.prediction``,
``diffc.chain``, ``diffc.codec``): only the backbones' raw networks are borrowed. The facts it
rests on, copied here:

1. Noise levels and labels. Every backbone is a Gaussian path x_t = alpha_t x0 + sigma_t eps in the
   reference's own coordinates.

   - Stable Diffusion 1.5 / 2.1 / XL (VP path, alpha^2 + sigma^2 = 1): the checkpoint's DDPM betas,
     ``scaled_linear`` from beta_start = 0.00085 to beta_end = 0.012 over T = 1000 steps,
     beta_i = (sqrt(beta_start) + i / (T - 1) (sqrt(beta_end) - sqrt(beta_start)))^2, i = 0..T-1.
     The reference's label t has had t noising steps applied:
         abar_ref(t) = prod_{i < t} (1 - beta_i)      (= diffusers' alphas_cumprod[t - 1]; abar_ref(0) = 1),
     alpha_t = sqrt(abar_ref(t)), sigma_t = sqrt(1 - abar_ref(t)); yet the UNet is told t.
   - Flux (rectified flow, not VP): no shift, x_t = (1 - s_t) x0 + s_t eps with s_t = (t - 1) / 1000,
     i.e. alpha_t = 1 - s_t, sigma_t = s_t, while the transformer is told t / 1000 (one label above
     its noise level) and guidance 0 (the reference's encoding/denoising guidance scale).
   - Label 0 is the clean image: alpha = 1, sigma = 0 (the last step of the reference's
     reconstruction lands there).

   The VP view of any such path (what this project codes in) divides by the path's norm:
   x_vp = x / n_t, n_t = sqrt(alpha_t^2 + sigma_t^2) (n = 1 for SD; for Flux n = sqrt((1-s)^2 + s^2)),
   so that x_vp = (alpha / n) x0 + (sigma / n) eps has unit total variance.

2. Posterior and prior for a step t -> t' < t (non-adjacent labels allowed), derived by Bayes' rule
   rather than DDPM eq. 7. Along the path, x_t given x_t' is x_t = r x_t' + sqrt(v) xi with
   r = alpha_t / alpha_t', v = sigma_t^2 - r^2 sigma_t'^2 (the noise added between t' and t), and
   x_t' given x0 is N(alpha_t' x0, sigma_t'^2). Then q(x_t' | x_t, x0) = N(c0 x0 + ct x_t, var) with
       1 / var = 1 / sigma_t'^2 + r^2 / v,    c0 = var alpha_t' / sigma_t'^2,    ct = var r / v.
   The prior is the same Gaussian with the model's x0 estimate: p(x_t' | x_t) = q(x_t' | x_t, x0_hat),
   and KL(q || p) = c0^2 |x0 - x0_hat|^2 / (2 var) nats (invariant under the VP rescaling).

3. x0 and eps estimates from the network output f at (x_t, t):
   - epsilon:      eps = f,                        x0 = (x_t - sigma_t f) / alpha_t;
   - v_prediction: v = alpha eps - sigma x0,       x0 = alpha_t x_t - sigma_t f,  eps = sigma_t x_t + alpha_t f;
   - flow:         velocity f = eps - x0,          x0 = x_t - s_t f,              eps = x_t + (1 - s_t) f.

4. Reconstruction (the reference's denoising loop): DDIM with eta = 0 from the
   transmitted x_t through the fixed ``denoising_timesteps`` list of docs/reference/seed-settings.json
   (981, 961, ..., 21, 10, 5, 0) restricted to labels strictly below t:
       x_{t_next} = alpha_{t_next} x0_hat(x_t, t) + sigma_{t_next} eps_hat(x_t, t),
   one network call per step; the last step goes to label 0 (alpha = 1, sigma = 0), i.e. returns
   the last x0 estimate. For Flux this DDIM step is the Euler step x + (s_next - s) f of the flow ODE.

Everything is float64 except the network itself (it runs in its own dtype).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffc.backbones.flux import image_ids, pack_latent, unpack_latent  # token layout only, no maths

REFERENCE_SETTINGS = Path(__file__).resolve().parents[1] / "docs" / "reference" / "seed-settings.json"
#: the reference's SD checkpoints' DDPM betas (their scheduler configs): scaled_linear, 1000 steps
SD_BETA_START, SD_BETA_END, SD_TRAIN_STEPS = 0.00085, 0.012, 1000
#: Flux: the transformer's timestep input is in units of 1000 steps
FLUX_STEPS = 1000
#: the guidance-embedding value the reference passes to Flux (its Flux-base guidance scales)
FLUX_REFERENCE_GUIDANCE = 0.0
KINDS = ("epsilon", "v_prediction", "flow")


def reference_settings(config: str) -> dict[str, Any]:
    """One reference config of docs/reference/seed-settings.json (``SD-1.5-base``, ``Flux-base``...)."""
    return json.loads(REFERENCE_SETTINGS.read_text())["settings"][config]


def denoising_timesteps(t: int) -> list[int]:
    """The labels a reconstruction from x_t visits: t, then the reference's ``denoising_timesteps``
    (the same list in every reference config) strictly below t, ending at 0."""
    return [t, *(g for g in reference_settings("SD-1.5-base")["denoising_timesteps"] if g < t)]


def sd_abar(t: int, beta_start: float = SD_BETA_START, beta_end: float = SD_BETA_END,
            train_steps: int = SD_TRAIN_STEPS) -> float:
    """abar_ref(t) = prod_{i < t} (1 - beta_i) of the scaled_linear betas (float64, as a sum of
    log1p terms); abar_ref(0) = 1 (the empty product: the clean image)."""
    if not 0 <= t <= train_steps:
        raise ValueError(f"label {t} outside 0..{train_steps}")
    i = np.arange(t, dtype=np.float64)
    root = math.sqrt(beta_start) + i / (train_steps - 1) * (math.sqrt(beta_end) - math.sqrt(beta_start))
    return float(np.exp(np.log1p(-root ** 2).sum()))


@dataclass(frozen=True)
class Coeffs:
    """A Gaussian N(c0 x0 + ct x_t, var) in some coordinates (the reference's, or the VP view)."""

    c0: float
    ct: float
    var: float


def bayes_posterior(alpha_t: float, sigma_t: float, alpha_p: float, sigma_p: float) -> Coeffs:
    """q(x_p | x_t, x0) for the path x = alpha x0 + sigma eps at a later point t (SNR_t < SNR_p),
    by Bayes' rule (module docstring, fact 2); needs sigma_p > 0."""
    r = alpha_t / alpha_p
    v = sigma_t ** 2 - r ** 2 * sigma_p ** 2
    if v <= 0:
        raise ValueError("the later point must be noisier (SNR_t < SNR_p)")
    var = 1.0 / (1.0 / sigma_p ** 2 + r ** 2 / v)
    return Coeffs(var * alpha_p / sigma_p ** 2, var * r / v, var)


class ReferenceOracle:
    """The reference's chain for one backbone (``family`` 'sd' or 'flux', ``kind`` the network's
    prediction), built on the backbone's raw network only."""

    def __init__(self, backbone: Any, family: str, kind: str):
        if family not in ("sd", "flux") or kind not in KINDS or (family == "flux") != (kind == "flow"):
            raise ValueError(f"unsupported family/kind {family!r}/{kind!r}")
        self.backbone, self.family, self.kind = backbone, family, kind
        self.network_calls = 0

    # ---- noise levels -------------------------------------------------------------------------
    def alpha_sigma(self, t: int) -> tuple[float, float]:
        """(alpha_t, sigma_t) of label t in the reference's coordinates; label 0 = clean (1, 0)."""
        if t == 0:
            return 1.0, 0.0
        if self.family == "sd":
            abar = sd_abar(t)
            return math.sqrt(abar), math.sqrt(1.0 - abar)
        s = (t - 1) / FLUX_STEPS
        return 1.0 - s, s

    def norm(self, t: int) -> float:
        """n_t = sqrt(alpha_t^2 + sigma_t^2): x_vp = x / n_t (1 on a VP path)."""
        a, s = self.alpha_sigma(t)
        return math.sqrt(a * a + s * s)

    def to_vp(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The project's VP view x / n_t of a reference state x_t."""
        return x / self.norm(t)

    def forward_sample(self, x0: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t eps (reference coordinates, float64)."""
        a, s = self.alpha_sigma(t)
        return a * x0.double() + s * eps.double()

    # ---- the network ------------------------------------------------------------------------
    @torch.no_grad()
    def network(self, x: torch.Tensor, t: int, cond: Any) -> torch.Tensor:
        """Raw network output at label t (float64): the UNet told t; Flux's transformer told t / 1000
        with guidance 0 (called directly: the adapter's ``network`` derives its timestep from the
        project's schedule, which this oracle must not trust)."""
        self.network_calls += 1
        b = self.backbone
        if self.family == "sd":
            return b.network(x.float(), t, cond).double()
        tr = b.transformer
        dtype = next(tr.parameters()).dtype
        _, h, w = x.shape
        full = lambda v: torch.full((1,), v, dtype=dtype)
        out = tr(hidden_states=pack_latent(x.to(dtype))[None], encoder_hidden_states=cond.hidden,
                 pooled_projections=cond.pooled, timestep=full(t / FLUX_STEPS), img_ids=image_ids(h, w).to(dtype),
                 txt_ids=cond.txt_ids, guidance=full(FLUX_REFERENCE_GUIDANCE), return_dict=False)[0]
        return unpack_latent(out[0].double(), h, w)

    def estimates(self, x: torch.Tensor, t: int, cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from the network at (x_t, t), reference coordinates (fact 3)."""
        a, s = self.alpha_sigma(t)
        f = self.network(x, t, cond)
        x = x.double()
        if self.kind == "epsilon":
            return (x - s * f) / a, f
        if self.kind == "v_prediction":
            return a * x - s * f, s * x + a * f
        return x - s * f, x + (1 - s) * f

    # ---- one coded step -----------------------------------------------------------------------
    def posterior(self, t: int, t_prev: int) -> Coeffs:
        """q(x_{t_prev} | x_t, x0) in the reference's coordinates."""
        if not t_prev < t:
            raise ValueError(f"need t_prev < t, got {t_prev} >= {t}")
        return bayes_posterior(*self.alpha_sigma(t), *self.alpha_sigma(t_prev))

    def posterior_vp(self, t: int, t_prev: int) -> Coeffs:
        """The same Gaussian in the VP view (x_vp = x / n): c0 / n', ct n / n', var / n'^2."""
        c, n, n_p = self.posterior(t, t_prev), self.norm(t), self.norm(t_prev)
        return Coeffs(c.c0 / n_p, c.ct * n / n_p, c.var / n_p ** 2)

    def step(self, x: torch.Tensor, t: int, t_prev: int, x0: torch.Tensor, cond: Any) -> dict[str, Any]:
        """One coded step t -> t_prev at state x (reference coordinates): the x0 estimate, the means
        of q and p, the common variance and KL(q || p) in nats."""
        x0_hat, _ = self.estimates(x, t, cond)
        c = self.posterior(t, t_prev)
        mu_q, mu_p = c.c0 * x0.double() + c.ct * x.double(), c.c0 * x0_hat + c.ct * x.double()
        kl = float(((mu_q - mu_p) ** 2).sum()) / (2 * c.var)
        return {"x0_hat": x0_hat, "mu_q": mu_q, "mu_p": mu_p, "var": c.var, "kl_nats": kl}

    # ---- reconstruction -----------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, t: int, cond: Any) -> torch.Tensor:
        """DDIM (eta = 0) from x_t over ``denoising_timesteps(t)``; the clean latent x0 (fact 4)."""
        ts = denoising_timesteps(t)
        x = x.double()
        for t_cur, t_next in zip(ts[:-1], ts[1:]):
            x0_hat, eps_hat = self.estimates(x, t_cur, cond)
            a_n, s_n = self.alpha_sigma(t_next)
            x = a_n * x0_hat + s_n * eps_hat
        return x
