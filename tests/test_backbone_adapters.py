"""What each diffusers adapter adds to the generic contract (tests/test_backbones.py): the network
call and conditioning layout of each family, and its schedule against diffusers' own scheduler.

One section per adapter module; a new backbone brings its own section (or file) and touches nothing
else here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffc.codec import DiffcCodec
from diffc.schedule import NoiseSchedule
from test_backbones import PARAMS, _one_thread, make_image, stops, tiny  # noqa: F401 (autouse fixture)


def forward_kwargs(module: torch.nn.Module, fn, *args) -> list[dict]:
    """The keyword arguments ``module`` was called with while ``fn(*args)`` ran."""
    seen: list[dict] = []
    handle = module.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw, args=a)), with_kwargs=True)
    try:
        fn(*args)
    finally:
        handle.remove()
    return seen


# ---- schedules -------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddpm_schedules_match_diffusers(beta_schedule: str):
    """NoiseSchedule.ddpm = DDPMScheduler.alphas_cumprod (diffusers computes in float32: rel. 2e-5)."""
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule=beta_schedule).alphas_cumprod.double().numpy()
    ours = NoiseSchedule.ddpm(0.0001, 0.02, beta_schedule, 1000).alphas_cumprod
    np.testing.assert_allclose(ours, ref, rtol=5e-5, atol=1e-9)
    if beta_schedule == "squaredcos_cap_v2":  # the cap: the last beta is 0.999, abar_T-1 tiny but > 0
        assert 0 < ours[-1] < 1e-8 and ours[-1] / ours[-2] == pytest.approx(1 - 0.999)
    with pytest.raises(ValueError, match="unsupported beta_schedule"):
        NoiseSchedule.ddpm(beta_schedule="sigmoid")


# ---- stable_diffusion.py ---------------------------------------------------------------------------
def test_sd21_v_prediction():
    """tiny-sd21 reads v_prediction from its scheduler config; x0 = a x_t - s v."""
    b = tiny("tiny-sd21")
    assert b.prediction_type == "v_prediction" and tiny("tiny-sd15").prediction_type == "epsilon"
    x = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1))
    a, s = b.schedule.a_s(500)
    torch.testing.assert_close(b.predict_x0(x, 500), a * x - s * b.network(x, 500, None))
    assert b.schedule.alphas_cumprod[0] == pytest.approx(1 - 0.00085)  # the SD betas, scaled_linear


def test_sdxl_refiner_roundtrip():
    """With the refiner (t < REFINER_BELOW_T on a second UNet), the file still decodes bit-exactly,
    and a decoder without the refiner refuses it (the refiner is part of the fingerprint)."""
    from diffc import format as fmt
    from diffc.backbones.stable_diffusion import REFINER_BELOW_T

    b = tiny("tiny-sdxl", refiner=True)
    assert b.refiner_below_t == REFINER_BELOW_T
    codec = DiffcCodec(b, PARAMS)
    assert any(t < b.refiner_below_t for t in stops(codec))
    point = codec.encode(make_image(), stop_timesteps=stops(codec), caption="a parrot").points[-1]
    dec = DiffcCodec(b, PARAMS).decode(point.data)
    assert torch.equal(dec.x_t, point.x_t)
    assert torch.equal(dec.image, codec.reconstruct(point.x_t, point.timestep, *make_image().shape[-2:],
                                                    b.condition("a parrot")))
    with pytest.raises(fmt.FingerprintMismatch):
        DiffcCodec(tiny("tiny-sdxl"), PARAMS).decode(point.data)


def test_sdxl_time_ids_and_pooled_embeds():
    """The SDXL UNet gets (H, W, 0, 0, H, W) time ids of the padded image and the pooled text
    embedding; the refiner gets 5 ids with the aesthetic score and its own embeddings for t < 200."""
    b = tiny("tiny-sdxl", refiner=True)
    cond = b.condition("a cat")
    x = torch.randn(4, 7, 10)  # a 56 x 80 image
    (k1,) = forward_kwargs(b.unet, b.network, x, 500, cond)
    (k2,) = forward_kwargs(b.refiner, b.network, x, 100, cond)
    assert k1["added_cond_kwargs"]["time_ids"].tolist() == [[56, 80, 0, 0, 56, 80]]
    assert k2["added_cond_kwargs"]["time_ids"].tolist() == [[56, 80, 0, 0, 6.0]]
    assert torch.equal(k1["added_cond_kwargs"]["text_embeds"], cond.base.pooled)
    assert cond.base.pooled.shape == (1, 32)
    assert k1["encoder_hidden_states"].shape[-1] == 64  # CLIP-L-like ++ bigG-like states
    assert torch.equal(k2["encoder_hidden_states"], cond.refiner.hidden)
    # pooled embedding matters: another caption -> another output
    assert not torch.equal(b.network(x, 500, cond), b.network(x, 500, b.condition("a dog")))


# ---- flux.py ---------------------------------------------------------------------------------------
def test_flux_pack_unpack_identity_and_layout():
    from diffusers import FluxPipeline

    from diffc.backbones.diffusers_common import dynamic_flow_shift
    from diffc.backbones.flux import image_ids, pack_latent, unpack_latent

    x = torch.randn(16, 6, 10)
    tokens = pack_latent(x)
    assert tokens.shape == (3 * 5, 64)
    assert torch.equal(unpack_latent(tokens, 6, 10), x)
    # same layout as diffusers' FluxPipeline (what the real transformer was trained on)
    assert torch.equal(tokens, FluxPipeline._pack_latents(x[None], 1, 16, 6, 10)[0])
    ids = image_ids(6, 10)
    assert ids.shape == (15, 3) and ids[7].tolist() == [0, 1, 2]
    assert dynamic_flow_shift(1536) == pytest.approx(2.048, abs=1e-3)
    b = tiny("tiny-flux")
    assert b.prediction_type == "flow" and b.shift == pytest.approx(2.048, abs=1e-3)
    assert b.shift_rule == "dynamic@1536"


# ---- sd3.py ----------------------------------------------------------------------------------------
def test_sd3_schedule_is_the_scheduler_training_grid():
    """Static shift 3.0 from the scheduler config; sigma(t) = FlowMatchEulerDiscreteScheduler's
    training sigmas (sigma of step t at index T - 1 - t)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffc.backbones.sd3 import SD35_SCHEDULER

    b = tiny("tiny-sd35-medium")
    assert (b.prediction_type, b.shift, b.shift_rule, b.size_multiple) == ("flow", 3.0, "config", 16)
    ref = FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER).sigmas.double().numpy()[:1000][::-1]
    ours = np.array([b.sigma(t) for t in range(1000)])
    np.testing.assert_allclose(ours[:-1], ref[:-1], rtol=1e-5)  # t = T-1: sigma = 1, clipped to 1 - 1e-6
    assert tiny("tiny-sd35-medium", shift=1.0).shift_rule == "fixed"


def test_sd3_text_layout_and_timestep():
    """As StableDiffusion3Pipeline: [CLIP-L ++ bigG states, zero-padded to T5's width] then T5 states
    on the sequence axis; pooled CLIP-L ++ bigG; the transformer's timestep is 1000 sigma."""
    b = tiny("tiny-sd35-medium")
    clip_l, clip_g, t5 = b._run_text_stages("a lighthouse")
    cond = b.condition("a lighthouse")
    n_clip, width = clip_l.hidden.shape[1], t5.hidden.shape[-1]
    assert cond.hidden.shape == (1, n_clip + t5.hidden.shape[1], width)
    torch.testing.assert_close(cond.hidden[:, :n_clip, :32], torch.cat([clip_l.hidden, clip_g.hidden], -1))
    assert not cond.hidden[:, :n_clip, 32:].any()
    assert torch.equal(cond.hidden[:, n_clip:], t5.hidden)
    assert torch.equal(cond.pooled, torch.cat([clip_l.pooled, clip_g.pooled], -1))
    x = torch.randn(16, 4, 6)
    (kw,) = forward_kwargs(b.transformer, b.network, x, 300, cond)
    assert kw["timestep"].tolist() == pytest.approx([1000 * b.sigma(300)])
    assert torch.equal(kw["encoder_hidden_states"], cond.hidden) and kw["hidden_states"].shape == (1, 16, 4, 6)
    a, s = b.schedule.a_s(300)
    v = b.network(x / (a + s), 300, cond)
    torch.testing.assert_close(b.predict_x0(x, 300, cond), x / (a + s) - b.sigma(300) * v)


# ---- ddpm.py ---------------------------------------------------------------------------------------
def test_ddpm_pixel_space_and_clip_sample():
    """No VAE: x0 = 2 image - 1 exactly; the x0 estimate is clamped to [-1, 1] (clip_sample), which
    bites at high noise (x0 = (x_t - s eps) / a with a = 0.006 at t = 999)."""
    from diffc.backbones.ddpm import DDPM_CHURCH_SCHEDULER

    b = tiny("tiny-ddpm")
    img = make_image(32, 32)
    assert torch.equal(b.encode(img), img * 2 - 1) and b.config()["vae"] is None
    assert b.latent_shape(32, 48) == (3, 32, 48) and b.size_multiple == 4
    np.testing.assert_allclose(b.schedule.alphas_cumprod,
                               NoiseSchedule.ddpm(**{k: DDPM_CHURCH_SCHEDULER[k] for k in
                                                     ("beta_start", "beta_end", "beta_schedule")}).alphas_cumprod)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    clipped, free = b.predict_x0(x, 999), tiny("tiny-ddpm", clip_sample=False).predict_x0(x, 999)
    assert free.abs().max() > 10 and torch.equal(clipped, free.clamp(-1, 1))
    assert b.config() != tiny("tiny-ddpm", clip_sample=False).config()


def test_ddpm_ode_step_is_ddim_with_clipped_model_output():
    """One step of the ODE reconstruction (t = 999 -> 499, clip_sample active) is diffusers'
    DDIMScheduler.step with use_clipped_model_output=True (eps recomputed from the clamped x0), and
    not DDIMPipeline's default (the network's eps): the claim of diffc/backbones/ddpm.py."""
    from diffusers import DDIMScheduler

    from diffc.backbones.ddpm import DDPM_CHURCH_SCHEDULER

    b = tiny("tiny-ddpm")
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = DiffcCodec(b, PARAMS).denoise(x, 999, grid=(499, 0))  # DDIM to 499, then x0_hat(x_499)
    sched = DDIMScheduler(**{k: v for k, v in DDPM_CHURCH_SCHEDULER.items() if k != "variance_type"})
    sched.set_timesteps(2)  # step ratio 500: 999 -> 499
    eps = b.network(x, 999, None)
    for clipped, close in ((True, True), (None, False)):  # None: DDIMPipeline's default
        prev = sched.step(eps[None], 999, x[None], eta=0.0, use_clipped_model_output=clipped).prev_sample[0]
        err = (b.predict_x0(prev, 499) - ours).abs().max().item()
        assert (err < 1e-4) if close else (err > 1e-2), (clipped, err)


def test_ddpm_cosine_schedule_roundtrip():
    """beta_schedule=squaredcos_cap_v2: the diffusers cosine schedule, and a bit-exact file."""
    from diffusers import DDPMScheduler

    b = tiny("tiny-ddpm", beta_schedule="squaredcos_cap_v2")
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double().numpy()
    np.testing.assert_allclose(b.schedule.alphas_cumprod, ref, rtol=5e-5, atol=1e-9)
    img = make_image(20, 28)
    codec = DiffcCodec(b, PARAMS)
    point = codec.encode(img, stop_timesteps=stops(codec)).points[-1]
    dec = DiffcCodec(b, PARAMS).decode(point.data)
    assert torch.equal(dec.x_t, point.x_t)
    assert torch.equal(dec.image, codec.reconstruct(point.x_t, point.timestep, 20, 28))


@pytest.mark.parametrize("layout", ["subfolders", "flat"])
def test_ddpm_loads_a_local_copy(layout: str, tmp_path: Path):
    """ddpm-church's real loading code on a local diffusers copy of the tiny UNet: ``unet/`` +
    ``scheduler/`` (DDPMPipeline.save_pretrained) or the same files at the root; the loaded backbone
    computes what the tiny one does, and names the hub id (not the path) in its config."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from diffc.backbone import load_backbone
    from diffc.backbones.ddpm import DDPM_CHURCH_SCHEDULER

    b = tiny("tiny-ddpm")
    scheduler = DDPMScheduler(**DDPM_CHURCH_SCHEDULER)
    if layout == "subfolders":
        DDPMPipeline(unet=b.unet, scheduler=scheduler).save_pretrained(tmp_path)
    else:
        b.unet.save_pretrained(tmp_path)
        scheduler.save_config(tmp_path)
    real = load_backbone("ddpm-church", path=str(tmp_path), device="cpu", dtype="float32")
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(2))
    # (the same weights; loaded modules may pick other kernels: equal to float32 rounding)
    torch.testing.assert_close(real.predict_x0(x, 400), b.predict_x0(x, 400), rtol=1e-5, atol=1e-5)
    cfg = real.config()
    assert cfg["weights"] == {"hub_id": "google/ddpm-church-256", "revision": None}
    assert cfg["scheduler"] == b.config()["scheduler"] and str(tmp_path) not in str(cfg)
