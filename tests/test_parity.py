"""Paper parity: under ``parity=reference`` the project's chain computes what the reference
implementation (JeremyIV/diffc) computes, checked against an independent oracle
(tests/parity_oracle.py) on every tiny twin that has a reference analogue.

Compared, with the twin loaded from conf/model/tiny-*.yaml resolved for ``parity=reference``:
(a) x0 estimates ``Backbone.predict_x0``; (b) the posterior / prior of coded steps
(``NoiseSchedule.posterior`` and ``Chain.step``: means, variance, KL) for steps of the reference's
encoding schedule; (c) reconstructions (``DiffcCodec.denoise`` / ``reconstruct`` on the reference's
denoising grid). Companion tests load the project's own settings (labels, Flux shift and guidance,
the uniform reconstruction grid) and show the oracle then disagrees by far more than the tolerance,
so every comparison here can fail.

Tolerances. The oracle works in float64 and the networks in float32, so the two sides differ by
float32 rounding of the network inputs and of the project's float32 arithmetic (unit roundoff
6e-8), amplified by at most 1/alpha ~ 14 at t = 981 and by the random networks' sensitivity
along a 51-step reconstruction: TOL = 1e-5, relative to max(1, max |oracle value|) (latents are
O(1); ε-prediction x0 estimates at high noise reach O(10)). Schedule coefficients are float64 on
both sides: COEFF_TOL = 1e-9 relative. The companion tests require a disagreement above
DIVERGED = 1e-3 = 100 TOL.
"""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from diffc.backbone import Backbone
from diffc.chain import Chain
from diffc.codec import DiffcCodec
from diffc.profiles import profile_params
from diffc.schedule import encoding_timesteps, recon_timesteps
from parity_oracle import ReferenceOracle, denoising_timesteps, reference_settings, sd_abar
from test_backbones import TINY, _one_thread, make_image, model_yaml, tiny  # noqa: F401 (autouse fixture)

TOL, COEFF_TOL, DIVERGED = 1e-5, 1e-9, 1e-3
#: tiny twin -> (oracle family, prediction type, reference config, the project's name of its encoding schedule)
REFERENCE_TWINS: dict[str, tuple[str, str, str, str]] = {
    "tiny-sd15": ("sd", "epsilon", "SD-1.5-base", "paper"),
    "tiny-sd21": ("sd", "v_prediction", "SD-2.1-base", "paper"),
    "tiny-sdxl": ("sd", "epsilon", "SDXL-base", "paper"),
    "tiny-flux": ("flux", "flow", "Flux-base", "paper-flux"),
}
NO_REFERENCE: dict[str, str] = {
    "tiny-ddpm": "the reference has no pixel-space DDPM backbone (SD 1.5/2.1/XL and Flux only)",
    "tiny-sd35-medium": "the reference has no SD 3.5 backbone (SD 1.5/2.1/XL and Flux only)",
}
#: labels at which x0 estimates are compared (the reference evaluates its networks at 981 .. 5)
X0_LABELS = (981, 500, 101, 10, 5)
#: first labels of the compared coded steps t -> next label of the reference's encoding schedule
STEP_STARTS = (972, 498, 101, 11, 2)
#: labels reconstructions start from
RECON_LABELS = (981, 500, 100, 10)
LATENT_SIDE = 64  # pixels: 8 x 8 latents


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max(1, max |want|) (float64)."""
    got, want = got.double(), want.double()
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


def coeff_err(got: float, want: float) -> float:
    """|got - want| / |want| (float64 scalars)."""
    return abs(got - want) / max(abs(want), 1e-300)


def reference_options(name: str, **overrides: Any) -> dict[str, Any]:
    """The twin's options resolved for parity=reference (+ ``overrides``)."""
    return {**model_yaml(name, "reference")["options"], **overrides}


def load_twin(name: str, **overrides: Any) -> tuple[Backbone, ReferenceOracle, torch.Tensor, torch.Tensor, Any]:
    """(backbone loaded with parity=reference options + overrides, oracle, x0 latent, eps, cond)."""
    if name in NO_REFERENCE:
        pytest.skip(NO_REFERENCE[name])
    family, kind, _, _ = REFERENCE_TWINS[name]
    b = tiny(name, **reference_options(name, **overrides))
    x0 = b.encode(make_image(LATENT_SIDE, LATENT_SIDE)).double()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return b, ReferenceOracle(b, family, kind), x0, eps, b.condition(None)


def state(oracle: ReferenceOracle, x0: torch.Tensor, eps: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t in the reference's coordinates (float64) and the project's VP view of it (float32)."""
    x_ref = oracle.forward_sample(x0, eps, t)
    return x_ref, oracle.to_vp(x_ref, t).float()


def step_pairs(name: str) -> list[tuple[int, int]]:
    """Coded steps (t, t') of the reference's encoding schedule starting at STEP_STARTS."""
    ts = reference_settings(REFERENCE_TWINS[name][2])["encoding_timesteps"]
    return [(t, ts[i + 1]) for i, t in enumerate(ts[:-1]) if t in STEP_STARTS]


# ---- the set-up itself ------------------------------------------------------------------------------
def test_every_twin_is_classified():
    """Each tiny twin has a reference analogue (compared below) or a stated reason why not."""
    assert set(TINY) == set(REFERENCE_TWINS) | set(NO_REFERENCE)
    assert not set(REFERENCE_TWINS) & set(NO_REFERENCE)


def test_reference_grids_and_schedules():
    """The project's paper schedules are the reference's encoding lists, its reference reconstruction grid
    visits the reference's denoising timesteps from every label, and the oracle's abar table is diffusers'
    DDPMScheduler table shifted by one label (float32 there)."""
    from diffusers import DDPMScheduler

    for name, (_, _, config, schedule) in REFERENCE_TWINS.items():
        settings = reference_settings(config)
        assert encoding_timesteps(schedule) == settings["encoding_timesteps"], name
        assert settings["denoising_timesteps"] == reference_settings("SD-1.5-base")["denoising_timesteps"]
    for t in range(1, 1001):
        assert recon_timesteps(t, "reference", 50) == denoising_timesteps(t), t
    ddpm = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    ours = torch.tensor([sd_abar(t) for t in range(1, 1001)], dtype=torch.float64)
    assert float((ours - ddpm.alphas_cumprod.double()).abs().max()) < 1e-6
    assert sd_abar(0) == 1.0


# ---- (a) x0 estimates --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_x0_estimates_match_reference(name: str):
    """predict_x0 at the reference's labels (ε, v and flow velocity; Flux told t / 1000, guidance 0)."""
    b, oracle, x0, eps, cond = load_twin(name)
    assert b.prediction_type == oracle.kind
    for t in X0_LABELS:
        x_ref, x_vp = state(oracle, x0, eps, t)
        got, want = b.predict_x0(x_vp, t, cond), oracle.estimates(x_ref, t, cond)[0]
        assert rel_err(got, want) <= TOL, (name, t, rel_err(got, want))


@pytest.mark.parametrize("name,overrides", [
    ("tiny-sd15", {"timestep_labels": "project"}),
    ("tiny-sd21", {"timestep_labels": "project"}),
    ("tiny-sdxl", {"timestep_labels": "project"}),
    ("tiny-flux", {"timestep_labels": "project"}),
    ("tiny-flux", {"shift": None}),  # the project's dynamic shift (2.048 at 1536 tokens)
    ("tiny-flux", {"guidance": 1.0}),  # the project's guidance embedding
])
def test_x0_estimates_diverge_under_project_settings(name: str, overrides: dict):
    """One project setting in place of the reference's moves the x0 estimates by > 100 TOL."""
    b, oracle, x0, eps, cond = load_twin(name, **overrides)
    worst = 0.0
    for t in X0_LABELS:
        x_ref, x_vp = state(oracle, x0, eps, t)
        worst = max(worst, rel_err(b.predict_x0(x_vp, t, cond), oracle.estimates(x_ref, t, cond)[0]))
    assert worst > DIVERGED, (name, overrides, worst)


# ---- (b) posterior and prior of coded steps ----------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_posterior_coefficients_match_reference(name: str):
    """NoiseSchedule.posterior(t, t') = the oracle's Bayes posterior in the VP view, on the reference's steps."""
    b, oracle, *_ = load_twin(name)
    pairs = step_pairs(name)
    assert len(pairs) >= 4
    for t, tp in pairs:
        got, want = b.schedule.posterior(t, tp), oracle.posterior_vp(t, tp)
        for field in ("c0", "ct", "var"):
            err = coeff_err(getattr(got, field), getattr(want, field))
            assert err <= COEFF_TOL, (name, t, tp, field, err)


@pytest.mark.parametrize("name,overrides", [
    ("tiny-sd15", {"timestep_labels": "project"}),
    ("tiny-flux", {"timestep_labels": "project"}),
    ("tiny-flux", {"shift": None}),
])
def test_posterior_coefficients_diverge_under_project_settings(name: str, overrides: dict):
    """The project's labels (abar[t] for SD; sigma = (t + 1) / 1000 for Flux) or Flux shift move the
    posterior coefficients by far more than COEFF_TOL (and than DIVERGED)."""
    b, oracle, *_ = load_twin(name, **overrides)
    worst = max(coeff_err(getattr(b.schedule.posterior(t, tp), f), getattr(oracle.posterior_vp(t, tp), f))
                for t, tp in step_pairs(name) for f in ("c0", "ct", "var"))
    assert worst > DIVERGED, (name, overrides, worst)


@pytest.mark.parametrize("name", TINY)
def test_chain_steps_match_reference(name: str):
    """Chain.step on the reference's schedule: x0 estimate, prior and posterior means, variance (VP view
    of the oracle's), and KL(q || p) (coordinate-free) per step."""
    b, oracle, x0, eps, cond = load_twin(name)
    chain = Chain(b, REFERENCE_TWINS[name][3], seed=0)
    assert chain.timesteps[1:] == reference_settings(REFERENCE_TWINS[name][2])["encoding_timesteps"]
    for t, tp in step_pairs(name):
        k = chain.timesteps.index(t) + 1
        assert chain.timesteps[k] == tp
        x_ref, x_vp = state(oracle, x0, eps, t)
        got = chain.step(x_vp, k, cond, x0.float())
        want = oracle.step(x_ref, t, tp, x0, cond)
        n_p = oracle.norm(tp)
        mu_q = got.mu_p.double() + got.std * got.u.double()
        errs = {"x0_hat": rel_err(got.x0_hat, want["x0_hat"]),
                "mu_p": rel_err(got.mu_p, want["mu_p"] / n_p),
                "mu_q": rel_err(mu_q, want["mu_q"] / n_p),
                "kl": coeff_err(got.kl_bits, want["kl_nats"] / math.log(2))}
        assert max(errs.values()) <= TOL, (name, t, tp, errs)
        assert coeff_err(got.std ** 2, want["var"] / n_p ** 2) <= COEFF_TOL, (name, t, tp)


# ---- (c) reconstructions -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_reconstructions_match_reference(name: str, monkeypatch: pytest.MonkeyPatch):
    """DiffcCodec.denoise with the twin's parity=reference codec settings (recon_grid reference) = the
    oracle's DDIM over the reference's denoising timesteps, with as many network calls; the decoded
    image of ``reconstruct`` = the VAE decode of the oracle's latent."""
    b, oracle, x0, eps, cond = load_twin(name)
    params = profile_params(name, "reference")
    assert params.recon.grid == "reference" and params.recon.mode == "ode"
    codec = DiffcCodec(b, params)
    calls: list[int] = []  # the labels the project's reconstruction evaluates its network at
    predict = b.predict_x0

    def counted(x: torch.Tensor, t: int, *args: Any) -> torch.Tensor:
        calls.append(t)
        return predict(x, t, *args)

    monkeypatch.setattr(b, "predict_x0", counted)
    for t in RECON_LABELS:
        x_ref, x_vp = state(oracle, x0, eps, t)
        calls.clear()
        oracle.network_calls = 0
        got = codec.denoise(x_vp, t, cond, params.recon.mode, params.recon.steps, params.recon.grid)
        want = oracle.denoise(x_ref, t, cond)
        assert rel_err(got, want) <= TOL, (name, t, rel_err(got, want))
        assert calls == denoising_timesteps(t)[:-1]
        assert oracle.network_calls == len(calls)
    t = RECON_LABELS[-1]
    x_ref, x_vp = state(oracle, x0, eps, t)
    image = codec.reconstruct(x_vp, t, LATENT_SIDE, LATENT_SIDE, cond)
    want = b.decode(oracle.denoise(x_ref, t, cond).float())
    assert float((image - want).abs().max()) <= TOL


@pytest.mark.parametrize("name", TINY)
def test_reconstructions_diverge_on_the_uniform_grid(name: str):
    """The project's default reconstruction (uniform grid, 4 steps for the twins) is another image."""
    b, oracle, x0, eps, cond = load_twin(name)
    codec = DiffcCodec(b, profile_params(name, "project"))
    assert codec.params.recon.grid == "uniform"
    worst = 0.0
    for t in RECON_LABELS:
        x_ref, x_vp = state(oracle, x0, eps, t)
        got = codec.denoise(x_vp, t, cond, "ode", codec.params.recon.steps, codec.params.recon.grid)
        worst = max(worst, rel_err(got, oracle.denoise(x_ref, t, cond)))
    assert worst > DIVERGED, (name, worst)


def test_sdxl_refiner_runs_from_label_200_down():
    """The reference's SDXL refiner serves t <= 200 (refiner_below_t = 201 under parity=reference): at 200
    the network differs from the base UNet's, at 201 it is the base UNet's."""
    with_refiner = tiny("tiny-sdxl", **reference_options("tiny-sdxl", refiner=True))
    base = tiny("tiny-sdxl", **reference_options("tiny-sdxl"))
    x = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(with_refiner.network(x, 201, None), base.network(x, 201, None))
    assert float((with_refiner.network(x, 200, None) - base.network(x, 200, None)).abs().max()) > DIVERGED
