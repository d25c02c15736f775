"""Diffusers backbones: tiny twins end to end (offline, CPU), adapter unit tests, load errors,
and one real-weights round trip per backbone (``-m weights``; skipped without the weights).

The tiny twins are the real diffusers classes (UNet2DConditionModel, FluxTransformer2DModel,
AutoencoderKL) with tiny widths and seeded random weights, so every adapter code path runs here.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from diffc import format as fmt
from diffc.backbone import load_backbone
from diffc.codec import CodecParams, DiffcCodec, pad_to_multiple

TINY = ["tiny-sd15", "tiny-sd21", "tiny-sdxl", "tiny-flux"]
REAL = ["sd15", "sd21", "sdxl", "flux-dev"]
#: The small codec setting the tiny twins are tested with (8 coded steps, 4 ODE steps).
PARAMS = CodecParams(schedule="linspace-8", chunk_bits=8, padding_bits=2, recon="ode", recon_steps=4)
ODD_H, ODD_W = 53, 77  # not a multiple of 8 or 16: padded to 56x80 (SD) / 64x80 (Flux)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are dominated by per-op overhead: 1 thread is ~30x faster than 2 contended
    threads on a shared CPU (and keeps the suite well under a minute)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_CACHE: dict[tuple, object] = {}


def tiny(name: str, **options):
    """Cached tiny backbone (building one takes ~0.1 s after the first diffusers import)."""
    key = (name, tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = load_backbone(name, device="cpu", **options)
    return _CACHE[key]


def make_image(h: int = ODD_H, w: int = ODD_W, seed: int = 0) -> torch.Tensor:
    """Deterministic natural-ish test image: smooth colour ramps + a little seeded texture."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.2 + 0.6 * xx, 0.8 - 0.5 * yy, 0.5 + 0.3 * torch.sin(6 * xx * yy)])
    return (img + 0.05 * torch.randn(3, h, w, generator=g)).clamp(0, 1)


_ENCODED: dict[tuple, tuple] = {}


def encode_once(name: str, caption: str | None = None):
    """(codec, EncodeResult) of the odd-size test image, cached per (backbone, caption)."""
    key = (name, caption)
    if key not in _ENCODED:
        codec = DiffcCodec(tiny(name), PARAMS)
        _ENCODED[key] = codec, codec.encode(make_image(), caption=caption)
    return _ENCODED[key]


# ---- tiny twins: compress -> file -> decompress ----------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_tiny_file_roundtrip_bit_exact(name: str, tmp_path: Path):
    """File on disk -> decoder rebuilds the encoder's latent x_t and image bit for bit; bpp = file
    size; an odd-size image comes back at its original size."""
    codec, res = encode_once(name)
    point = res.points[-1]
    path = tmp_path / f"{name}.diffc"
    path.write_bytes(point.data)

    # a fresh codec (decoder side), parameters from the file's header
    dec = DiffcCodec(tiny(name), CodecParams()).decode(path.read_bytes())
    assert torch.equal(dec.x_t, point.x_t), "decoded latent differs from the encoder's"
    assert dec.timestep == point.timestep
    enc_image = codec.reconstruct(point.x_t, point.timestep, ODD_H, ODD_W)  # what the encoder reports
    assert dec.image.shape == (3, ODD_H, ODD_W) == enc_image.shape
    assert torch.equal(dec.image, enc_image), "decoded image differs from the encoder's"
    assert dec.image.min() >= 0 and dec.image.max() <= 1

    size = os.path.getsize(path)
    assert point.bits_total == 8 * size
    assert point.bpp == pytest.approx(8 * size / (ODD_H * ODD_W), rel=0, abs=1e-12)
    assert point.bits_header + point.bits_side + point.bits_payload == pytest.approx(point.bits_total)
    hdr, _ = fmt.read(point.data)
    assert (hdr.backbone, hdr.width, hdr.height, hdr.caption) == (name, ODD_W, ODD_H, None)
    mult = 16 if name == "tiny-flux" else 8
    assert tuple(point.x_t.shape[-2:]) == (-(-ODD_H // mult) * mult // 8, -(-ODD_W // mult) * mult // 8)


def test_tiny_sdxl_refiner_roundtrip():
    """With the refiner (t < 200 steps on a second UNet), the file still decodes bit-exactly, and a
    decoder without the refiner refuses it (the refiner is part of the fingerprint)."""
    b = tiny("tiny-sdxl", refiner=True)
    codec = DiffcCodec(b, PARAMS)
    assert any(t < b.refiner_below_t for t in codec.timesteps[1:])
    point = codec.encode(make_image(), caption="a parrot").points[-1]
    dec = DiffcCodec(b, PARAMS).decode(point.data)
    assert torch.equal(dec.x_t, point.x_t)
    assert torch.equal(dec.image, codec.reconstruct(point.x_t, point.timestep, ODD_H, ODD_W, b.condition("a parrot")))
    with pytest.raises(fmt.FingerprintMismatch):
        DiffcCodec(tiny("tiny-sdxl"), PARAMS).decode(point.data)


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl", "tiny-flux"])
def test_caption_stored_counted_and_used(name: str):
    """A caption goes in the file (larger file, higher bpp), and the decoder conditions on it:
    it rebuilds the captioned x_t exactly, which differs from the caption-free chain's."""
    caption = "a red barn in a snowy field, photograph"
    _, plain = encode_once(name)
    _, capd = encode_once(name, caption)
    p0, p1 = plain.points[-1], capd.points[-1]
    # (the payloads differ too: the conditioning changes the chain; their sizes are not ordered)
    assert p1.bits_header > p0.bits_header
    assert p1.bits_header - p0.bits_header >= 8 * 10  # zlib(caption) >= 10 bytes
    assert p1.bpp == 8 * len(p1.data) / (ODD_H * ODD_W)
    dec = DiffcCodec(tiny(name), PARAMS).decode(p1.data, reconstruct=False)
    assert dec.header.caption == caption
    assert torch.equal(dec.x_t, p1.x_t)
    assert not torch.equal(p1.x_t, p0.x_t), "the caption did not change the model's conditioning"
    # the decoder's conditioning is the encoder's (deterministic text stage)
    b = tiny(name)
    c_enc, c_dec = b.condition(caption), b.condition(dec.header.caption)
    assert _tensors(c_enc)
    for a, z in zip(_tensors(c_enc), _tensors(c_dec)):
        assert torch.equal(a, z)


def _tensors(cond) -> list[torch.Tensor]:
    out = []
    for v in vars(cond).values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif v is not None and hasattr(v, "__dict__"):
            out += _tensors(v)
    return out


def test_fingerprint_refuses_other_weights():
    """A tiny-sd15 (seed 0) file does not decode with tiny-sd15 built from seed 1."""
    _, res = encode_once("tiny-sd15")
    other = DiffcCodec(tiny("tiny-sd15", seed=1), PARAMS)
    with pytest.raises(fmt.FingerprintMismatch) as e:
        other.decode(res.points[-1].data)
    msg = str(e.value)
    assert "tiny-sd15" in msg and "fingerprint" in msg and "\n" not in msg
    # same seed, fresh build: same weights, same fingerprint
    assert DiffcCodec(load_backbone("tiny-sd15", device="cpu", seed=0), PARAMS).fingerprint() == \
        DiffcCodec(tiny("tiny-sd15"), PARAMS).fingerprint()


def test_fingerprint_refuses_other_backbone():
    _, res = encode_once("tiny-sd15")
    with pytest.raises(fmt.FingerprintMismatch, match="tiny-sd15"):
        DiffcCodec(tiny("tiny-sd21"), PARAMS).decode(res.points[-1].data)


# ---- adapter units ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,channels", [("tiny-sd15", 4), ("tiny-flux", 16)])
def test_vae_roundtrip_and_latent_convention(name: str, channels: int):
    """encode = (VAE mode - shift) * scaling, deterministic; decode inverts the affine map."""
    b = tiny(name)
    img = make_image(64, 64)
    x0 = b.encode(img)
    assert x0.shape == (channels, 8, 8) == b.latent_shape(64, 64) and x0.dtype == torch.float32
    assert torch.equal(x0, b.encode(img))
    with torch.no_grad():
        z = b.vae.encode(img[None] * 2 - 1).latent_dist.mode()[0]
        ref = (b.vae.decode(z[None]).sample[0] + 1) / 2
    torch.testing.assert_close(x0, (z - b.shift_factor) * b.scaling_factor, rtol=1e-6, atol=1e-6)
    out = b.decode(x0)
    assert out.shape == (3, 64, 64) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, ref.clamp(0, 1), rtol=1e-5, atol=1e-5)
    if name == "tiny-flux":
        assert b.shift_factor != 0  # the shift path is exercised


@pytest.mark.parametrize("name,mult", [("tiny-sd15", 8), ("tiny-flux", 16)])
def test_padding(name: str, mult: int):
    b = tiny(name)
    assert b.size_multiple == mult
    img = make_image()
    padded = pad_to_multiple(img, mult)
    assert padded.shape[-2] % mult == 0 and padded.shape[-1] % mult == 0
    assert torch.equal(padded[:, :ODD_H, :ODD_W], img)  # replicate-pad at bottom/right only
    assert torch.equal(padded[:, -1, :ODD_W], img[:, -1])
    with pytest.raises(ValueError, match="multiple of"):
        b.encode(img)
    if mult == 16:
        with pytest.raises(ValueError, match="multiple of 16"):
            b.encode(pad_to_multiple(img, 8)[:, :56, :80])  # 56 = 7 x 8: a multiple of 8, not of 16
    assert DiffcCodec(b, PARAMS).vae_roundtrip(img).shape == (3, ODD_H, ODD_W)


def test_sd21_v_prediction():
    """tiny-sd21 reads v_prediction from its scheduler config; x0 = a x_t - s v."""
    b = tiny("tiny-sd21")
    assert b.prediction_type == "v_prediction"
    assert tiny("tiny-sd15").prediction_type == "epsilon"
    x = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = 500
    a, s = b.schedule.a_s(t)
    v = b.network(x, t, None)
    torch.testing.assert_close(b.predict_x0(x, t), a * x - s * v)
    # schedule = the SD DDPM betas (scaled_linear 0.00085 .. 0.012)
    assert b.schedule.alphas_cumprod[0] == pytest.approx(1 - 0.00085)


def test_sdxl_time_ids_and_pooled_embeds():
    """The SDXL UNet gets (H, W, 0, 0, H, W) time ids of the padded image and the pooled text
    embedding; the refiner gets 5 ids with the aesthetic score and its own embeddings for t < 200."""
    b = tiny("tiny-sdxl", refiner=True)
    seen: list[tuple[str, dict]] = []

    def hook(tag):
        def f(module, args, kwargs):
            seen.append((tag, kwargs))
        return f

    handles = [b.unet.register_forward_pre_hook(hook("base"), with_kwargs=True),
               b.refiner.register_forward_pre_hook(hook("refiner"), with_kwargs=True)]
    try:
        cond = b.condition("a cat")
        x = torch.randn(4, 7, 10)  # a 56 x 80 image
        b.network(x, 500, cond)
        b.network(x, 100, cond)
    finally:
        for h in handles:
            h.remove()
    (t1, k1), (t2, k2) = seen
    assert (t1, t2) == ("base", "refiner")
    assert k1["added_cond_kwargs"]["time_ids"].tolist() == [[56, 80, 0, 0, 56, 80]]
    assert k2["added_cond_kwargs"]["time_ids"].tolist() == [[56, 80, 0, 0, 6.0]]
    assert torch.equal(k1["added_cond_kwargs"]["text_embeds"], cond.base.pooled)
    assert cond.base.pooled.shape == (1, 32)
    assert k1["encoder_hidden_states"].shape[-1] == 64  # CLIP-L-like ++ bigG-like states
    assert torch.equal(k2["encoder_hidden_states"], cond.refiner.hidden)
    # pooled embedding matters: another caption -> another output
    out_a = b.network(x, 500, cond)
    out_b = b.network(x, 500, b.condition("a dog"))
    assert not torch.equal(out_a, out_b)


def test_flux_pack_unpack_identity_and_layout():
    from diffusers import FluxPipeline

    from diffc.backbones.flux import dynamic_flow_shift, image_ids, pack_latent, unpack_latent

    x = torch.randn(16, 6, 10)
    tokens = pack_latent(x)
    assert tokens.shape == (3 * 5, 64)
    assert torch.equal(unpack_latent(tokens, 6, 10), x)
    # same layout as diffusers' FluxPipeline (what the real transformer was trained on)
    ref = FluxPipeline._pack_latents(x[None], 1, 16, 6, 10)[0]
    assert torch.equal(tokens, ref)
    ids = image_ids(6, 10)
    assert ids.shape == (15, 3) and ids[7].tolist() == [0, 1, 2]
    assert dynamic_flow_shift(1536) == pytest.approx(2.048, abs=1e-3)
    b = tiny("tiny-flux")
    assert b.prediction_type == "flow" and b.shift == pytest.approx(2.048, abs=1e-3)


# ---- load errors ------------------------------------------------------------------------------------
def _cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "scheduler/scheduler_config.json"), str)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
@pytest.mark.parametrize("mode", ["HF_HUB_OFFLINE", "unreachable"])
def test_load_error_offline_is_clear_and_fast(mode: str, monkeypatch: pytest.MonkeyPatch):
    """No weights offline -> one line: the model id, the HF cache path, model.options.path and the
    env var; within seconds (no network retries)."""
    import huggingface_hub.constants as hc

    from diffc.backbones import diffusers_common as dc
    from diffc.backbones.diffusers_common import BackboneLoadError

    hub_id = "runwayml/stable-diffusion-v1-5"
    if _cached(hub_id):
        pytest.skip(f"{hub_id} is in the HF cache here: nothing to fail on")
    monkeypatch.delenv("DIFFC_SD15_PATH", raising=False)
    monkeypatch.setattr(dc, "_HUB_REACHABLE", {})
    if mode == "HF_HUB_OFFLINE":
        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    else:  # connection refused at once: the no-network case, deterministic on any machine
        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")
        monkeypatch.delenv("HTTPS_PROXY", raising=False)
        monkeypatch.delenv("https_proxy", raising=False)
    # import time is not the loader's: the classes it imports lazily
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    t0 = time.perf_counter()
    with pytest.raises(BackboneLoadError) as e:
        load_backbone("sd15")
    elapsed = time.perf_counter() - t0
    msg = str(e.value)
    assert elapsed < 15, f"offline load error took {elapsed:.1f} s"
    assert "\n" not in msg
    assert hub_id in msg and hc.HF_HUB_CACHE in msg
    assert "model.options.path" in msg and "DIFFC_SD15_PATH" in msg
    assert ("HF_HUB_OFFLINE" in msg) if mode == "HF_HUB_OFFLINE" else ("unreachable" in msg)


def test_load_error_bad_local_path(tmp_path: Path):
    from diffc.backbones.diffusers_common import BackboneLoadError

    with pytest.raises(BackboneLoadError, match="is not a directory"):
        load_backbone("sd21", path=str(tmp_path / "nope"))
    with pytest.raises(BackboneLoadError, match=r"local copy.*stable-diffusion-2-1") as e:
        load_backbone("sd21", path=str(tmp_path))  # exists, but holds no model
    assert "\n" not in str(e.value)


def test_env_var_names_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """DIFFC_<NAME>_PATH stands in for model.options.path (here: an empty dir -> local-copy error)."""
    from diffc.backbones.diffusers_common import BackboneLoadError, path_env_var

    assert path_env_var("sd15") == "DIFFC_SD15_PATH" and path_env_var("flux-dev") == "DIFFC_FLUX_DEV_PATH"
    monkeypatch.setenv("DIFFC_FLUX_DEV_PATH", str(tmp_path))
    with pytest.raises(BackboneLoadError, match="local copy"):
        load_backbone("flux-dev")


# ---- real weights (-m weights) ------------------------------------------------------------------------
def _real_options(name: str) -> tuple[dict, dict]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml"))
    return cfg["options"], cfg["codec"]


@pytest.mark.weights
@pytest.mark.parametrize("name", REAL)
def test_real_backbone_kodak_roundtrip(name: str, tmp_path: Path):
    """Load the real model (hub cache, or DIFFC_<NAME>_PATH / model.options.path) and round-trip
    one Kodak image bit-exactly through a file, stopping at t <= 500 (a mid-rate point)."""
    from diffc.backbones.diffusers_common import path_env_var
    from pipelines.datasets import load_dataset, to_tensor

    options, codec_cfg = _real_options(name)
    env = path_env_var(name)
    if not os.environ.get(env) and not options.get("path") and not _cached(options["hub_id"]):
        pytest.skip(f"no weights for {name}: {options['hub_id']} is not in the HF cache and {env} is unset")
    if options.get("refiner_hub_id") and not os.environ.get("DIFFC_SDXL_REFINER_PATH") \
            and not options.get("refiner_path") and not _cached(options["refiner_hub_id"]):
        pytest.skip(f"no weights for the {name} refiner: {options['refiner_hub_id']} is not in the HF cache "
                    "and DIFFC_SDXL_REFINER_PATH is unset")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    b = load_backbone(name, **options)
    codec = DiffcCodec(b, CodecParams(**codec_cfg))
    _, img = load_dataset("kodak", ids=["kodim23"])[0]
    image = to_tensor(img)
    res = codec.encode(image, stop_timesteps=[500], caption="two parrots")
    point = res.points[-1]
    path = tmp_path / "kodim23.diffc"
    path.write_bytes(point.data)
    dec = codec.decode(path.read_bytes())
    assert torch.equal(dec.x_t, point.x_t)
    assert torch.equal(dec.image, codec.reconstruct(point.x_t, point.timestep, *image.shape[-2:],
                                                    cond=b.condition("two parrots")))
    assert dec.image.shape == image.shape
    assert point.bpp == 8 * os.path.getsize(path) / (image.shape[-1] * image.shape[-2])
    mse = float(((dec.image.cpu() - image) ** 2).mean())
    assert -10 * torch.log10(torch.tensor(mse)) > 15, "a real model at t=500 should give > 15 dB"
