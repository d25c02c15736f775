"""Diffusers backbones, generically: every tiny twin end to end (offline, CPU), the load errors of
every real backbone, and one real-weights round trip per real backbone (``-m weights``; skipped
without the weights).

Nothing here names a backbone. The tiny twins are the stems of ``conf/model/tiny-*.yaml``, the real
ones the configs with an ``options.hub_id``; what a test needs to know about a backbone (size
multiple, latent shape, autoencoder factors, text conditioning, hub id) comes from the backbone
object or its config. Adapter-specific behaviour (SDXL time ids, Flux packing, SD3 text layout,
DDPM clipping...) is tested in ``tests/test_backbone_adapters.py``.
"""
from __future__ import annotations

import dataclasses

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffc import format as fmt
from diffc.backbone import load_backbone
from diffc.codec import CodecParams, DiffcCodec, pad_to
from diffc.rcc.spec import PfrSpec
from diffc.profiles import profile_params
from diffc.recon import Recon
from pipelines.common import model_config

REPO = Path(__file__).resolve().parents[1]
MODEL_CONF = REPO / "conf" / "model"


def model_yaml(name: str, parity: str = "project") -> dict:
    """conf/model/NAME.yaml as a plain dict, its ``${parity:...}`` values resolved."""
    return OmegaConf.to_container(model_config(name, parity), resolve=True)


TINY = sorted(p.stem for p in MODEL_CONF.glob("tiny-*.yaml"))
REAL = sorted(p.stem for p in MODEL_CONF.glob("*.yaml") if "hub_id" in (model_yaml(p.stem).get("options") or {}))
#: The small codec setting the tiny twins are tested with (8 coded steps, 4 ODE steps).
PARAMS = CodecParams("linspace-8", channel=PfrSpec(chunk_bits=8, padding_bits=2), recon=Recon(mode="ode", steps=4))

ODD_H, ODD_W = 53, 77  # not a multiple of 4, 8 or 16: every twin pads


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
    """Cached tiny backbone from its config's options (+ ``options``), on the CPU."""
    key = (name, tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = load_backbone(name, **{**model_yaml(name)["options"], "device": "cpu", **options})
    return _CACHE[key]


def make_image(h: int = ODD_H, w: int = ODD_W, seed: int = 0) -> torch.Tensor:
    """Deterministic natural-ish test image: smooth colour ramps + a little seeded texture."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.2 + 0.6 * xx, 0.8 - 0.5 * yy, 0.5 + 0.3 * torch.sin(6 * xx * yy)])
    return (img + 0.05 * torch.randn(3, h, w, generator=g)).clamp(0, 1)


_ENCODED: dict[tuple, tuple] = {}


def stops(codec: DiffcCodec) -> list[int]:
    """The test encodes' rate points: a mid one and the one before the schedule's last step (t = 1),
    whose KL with random weights is ~10^3 bits per latent entry (10^7 bits for a pixel-space twin:
    minutes of search that test nothing more)."""
    return [codec.timesteps[len(codec.timesteps) // 2], codec.timesteps[-2]]


def encode_once(name: str, caption: str | None = None):
    """(codec, EncodeResult at ``stops``) of the odd-size test image, cached per (backbone, caption)."""
    key = (name, caption)
    if key not in _ENCODED:
        codec = DiffcCodec(tiny(name), PARAMS)
        _ENCODED[key] = codec, codec.encode(make_image(), stop_timesteps=stops(codec), caption=caption)
    return _ENCODED[key]


def _tensors(cond) -> list[torch.Tensor]:
    """Every tensor in a conditioning object (nested dataclasses); [] for None."""
    out = []
    for v in vars(cond).values() if cond is not None else ():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif v is not None and hasattr(v, "__dict__"):
            out += _tensors(v)
    return out


# ---- registry and configs ---------------------------------------------------------------------------
def test_every_config_is_registered_and_tested():
    """A backbone is one module + one config: every conf/model name is a registry name and back."""
    import diffc.backbones  # noqa: F401  (registers the built-in backbones)
    from diffc.backbone import registered_backbones

    assert set(registered_backbones()) == {p.stem for p in MODEL_CONF.glob("*.yaml")}
    assert TINY and REAL
    for name in TINY + REAL:
        cfg = model_yaml(name)
        assert cfg["name"] == name


# ---- tiny twins: compress -> file -> decompress ----------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_tiny_file_roundtrip_bit_exact(name: str, tmp_path: Path):
    """File on disk -> decoder rebuilds the encoder's latent x_t and image bit for bit, at every rate
    point; bpp = file size; an odd-size image comes back at its original size."""
    codec, res = encode_once(name)
    b = codec.backbone
    assert [p.timestep for p in res.points] == stops(codec)
    for point in res.points:
        path = tmp_path / f"{name}-{point.timestep}.diffc"
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
    m = b.size_multiple
    assert tuple(res.points[-1].x_t.shape) == b.latent_shape(-(-ODD_H // m) * m, -(-ODD_W // m) * m)


@pytest.mark.parametrize("name", TINY)
def test_caption_stored_counted_and_used(name: str):
    """A caption goes in the file (larger header, higher bpp) and the decoder conditions on it: it
    rebuilds the captioned x_t exactly, which differs from the caption-free chain's when the
    backbone conditions on text (and equals it for an unconditional one)."""
    caption = "a red barn in a snowy field, photograph"
    _, plain = encode_once(name)
    _, capd = encode_once(name, caption)
    p0, p1 = plain.points[-1], capd.points[-1]
    assert p1.bits_header - p0.bits_header >= 8 * 10  # zlib(caption) >= 10 bytes
    assert p1.bpp == 8 * len(p1.data) / (ODD_H * ODD_W)
    dec = DiffcCodec(tiny(name), PARAMS).decode(p1.data, reconstruct=False)
    assert dec.header.caption == caption
    assert torch.equal(dec.x_t, p1.x_t)
    b = tiny(name)
    c_enc, c_dec = b.condition(caption), b.condition(dec.header.caption)
    conditioned = bool(_tensors(c_enc))
    assert conditioned == bool(b.text_stages)
    # the decoder's conditioning is the encoder's (deterministic text stage)
    for a, z in zip(_tensors(c_enc), _tensors(c_dec), strict=True):
        assert torch.equal(a, z)
    assert torch.equal(p1.x_t, p0.x_t) != conditioned, "caption vs the model's conditioning"


@pytest.mark.parametrize("name", TINY)
def test_fingerprint_refuses_other_weights(name: str):
    """A file does not decode with the twin built from another seed; a fresh build from the same seed
    has the same fingerprint."""
    _, res = encode_once(name)
    seed = model_yaml(name)["options"]["seed"]
    with pytest.raises(fmt.FingerprintMismatch) as e:
        DiffcCodec(tiny(name, seed=seed + 1), PARAMS).decode(res.points[-1].data)
    msg = str(e.value)
    assert name in msg and "fingerprint" in msg and "\n" not in msg
    fresh = load_backbone(name, **{**model_yaml(name)["options"], "device": "cpu"})
    assert DiffcCodec(fresh, PARAMS).fingerprint() == DiffcCodec(tiny(name), PARAMS).fingerprint()
    json.dumps(fresh.config())  # JSON-able as it is


@pytest.mark.parametrize("name,other", list(zip(TINY, TINY[1:] + TINY[:1])))
def test_fingerprint_refuses_other_backbone(name: str, other: str):
    _, res = encode_once(name)
    with pytest.raises(fmt.FingerprintMismatch, match=name):
        DiffcCodec(tiny(other), PARAMS).decode(res.points[-1].data)


# ---- the autoencoder side --------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_autoencoder_convention(name: str):
    """encode = (VAE mode - shift) * scaling (pixel space: 2 image - 1), float32, deterministic, of
    ``latent_shape``; decode inverts the affine map and clamps to [0, 1]."""
    b = tiny(name)
    img = make_image(64, 64)
    x0 = b.encode(img)
    assert x0.shape == b.latent_shape(64, 64) and x0.dtype == torch.float32
    assert x0.shape == (b.latent_channels, 64 // b.vae_scale, 64 // b.vae_scale)
    assert torch.equal(x0, b.encode(img))
    with torch.no_grad():
        if b.vae is None:
            z, ref = img * 2 - 1, img
        else:
            z = b.vae.encode(img[None] * 2 - 1).latent_dist.mode()[0]
            ref = (b.vae.decode(z[None]).sample[0] + 1) / 2
    torch.testing.assert_close(x0, (z - b.shift_factor) * b.scaling_factor, rtol=1e-6, atol=1e-6)
    out = b.decode(x0)
    assert out.shape == (3, 64, 64) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, ref.clamp(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_padding(name: str):
    """Images are replicate-padded (bottom/right) to the backbone's size multiple; the backbone
    itself refuses any other size."""
    b = tiny(name)
    m = b.size_multiple
    assert m > 1 and ODD_H % m and ODD_W % m
    img = make_image()
    padded = pad_to(img, *b.padded_size(ODD_H, ODD_W))
    assert padded.shape[-2] % m == 0 and padded.shape[-1] % m == 0
    assert torch.equal(padded[:, :ODD_H, :ODD_W], img)
    assert torch.equal(padded[:, -1, :ODD_W], img[:, -1])
    with pytest.raises(ValueError, match=f"multiple of {m}"):
        b.encode(img)
    with pytest.raises(ValueError, match=f"multiple of {m}"):  # e.g. a multiple of m / 2 is not enough
        b.encode(padded[:, : 3 * m + max(1, m // 2)])
    assert DiffcCodec(b, PARAMS).vae_roundtrip(img).shape == (3, ODD_H, ODD_W)


@pytest.mark.parametrize("name", TINY)
def test_tiny_images_round_trip(name: str):
    """A 3x5 image is padded up to the backbone's ``min_side`` (UNets whose deepest level would be
    1x1 fail on one-channel GroupNorm groups): it encodes and decodes bit-exactly."""
    b = tiny(name)
    h, w = b.padded_size(3, 5)
    assert min(h, w) >= max(b.size_multiple, b.min_side) and h % b.size_multiple == w % b.size_multiple == 0
    codec = DiffcCodec(b, dataclasses.replace(PARAMS, schedule="linspace-3"))
    img = make_image()[:, :3, :5]
    p = codec.encode(img, stop_timesteps=[codec.timesteps[2]]).points[-1]
    d = codec.decode(p.data)
    assert torch.equal(d.x_t, p.x_t) and d.image.shape == (3, 3, 5) and bool(torch.isfinite(d.image).all())


# ---- load errors of the real backbones ---------------------------------------------------------------
def _cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(hub_id, f), str)
               for f in ("scheduler/scheduler_config.json", "scheduler_config.json"))


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
@pytest.mark.parametrize("mode", ["HF_HUB_OFFLINE", "unreachable"])
@pytest.mark.parametrize("name", REAL)
def test_load_error_offline_is_clear(name: str, mode: str, monkeypatch: pytest.MonkeyPatch):
    """No weights offline -> one line naming the model id, the HF cache path, model.options.path and
    the env var, and why the hub was not asked (no network retries)."""
    import huggingface_hub.constants as hc

    from diffc.backbones import diffusers_common as dc

    hub_id = model_yaml(name)["options"]["hub_id"]
    if _cached(hub_id):
        pytest.skip(f"{hub_id} is in the HF cache here: nothing to fail on")
    env = dc.path_env_var(name)
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(dc, "_HUB_REACHABLE", {})
    if mode == "HF_HUB_OFFLINE":
        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    else:  # connection refused at once: the no-network case, deterministic on any machine
        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")
        monkeypatch.delenv("HTTPS_PROXY", raising=False)
        monkeypatch.delenv("https_proxy", raising=False)
    with pytest.raises(dc.BackboneLoadError) as e:
        load_backbone(name, **{**model_yaml(name)["options"], "device": "cpu"})
    msg = str(e.value)
    assert "\n" not in msg
    assert hub_id in msg and hc.HF_HUB_CACHE in msg
    assert "model.options.path" in msg and env in msg
    assert ("HF_HUB_OFFLINE" in msg) if mode == "HF_HUB_OFFLINE" else ("unreachable" in msg)


@pytest.mark.parametrize("name", REAL)
def test_load_error_bad_local_path(name: str, tmp_path: Path):
    from diffc.backbones.diffusers_common import BackboneLoadError

    hub_id = model_yaml(name)["options"]["hub_id"]
    with pytest.raises(BackboneLoadError, match="is not a directory"):
        load_backbone(name, path=str(tmp_path / "nope"), device="cpu")
    with pytest.raises(BackboneLoadError, match="local copy") as e:
        load_backbone(name, path=str(tmp_path), device="cpu")  # exists, but holds no model
    assert hub_id in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", REAL)
def test_env_var_names_local_copy(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """DIFFC_<NAME>_PATH stands in for model.options.path (here: an empty dir -> local-copy error)."""
    from diffc.backbones.diffusers_common import BackboneLoadError, path_env_var

    env = path_env_var(name)
    assert env.startswith("DIFFC_") and env.endswith("_PATH") and env.replace("_", "").isalnum()
    monkeypatch.setenv(env, str(tmp_path))
    with pytest.raises(BackboneLoadError, match="local copy"):
        load_backbone(name, device="cpu")


# ---- real weights (-m weights) ------------------------------------------------------------------------
@pytest.mark.weights
@pytest.mark.parametrize("name", REAL)
def test_real_backbone_kodak_roundtrip(name: str, tmp_path: Path):
    """Load the real model (hub cache, or DIFFC_<NAME>_PATH / model.options.path) and round-trip
    one Kodak image bit-exactly through a file, stopping at t <= 500 (a mid-rate point)."""
    from diffc.backbones.diffusers_common import path_env_var
    from pipelines.datasets import load_dataset, to_tensor

    cfg = model_yaml(name)
    options = cfg["options"]
    # every weights source of the config: (hub id, local path, env var of the local path)
    sources = [(options["hub_id"], options.get("path"), path_env_var(name))]
    if options.get("refiner_hub_id"):
        sources.append((options["refiner_hub_id"], options.get("refiner_path"), path_env_var(f"{name}-refiner")))
    for hub_id, path, env in sources:
        if not path and not os.environ.get(env) and not _cached(hub_id):
            pytest.skip(f"no weights for {name}: {hub_id} is not in the HF cache and {env} is unset")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    b = load_backbone(name, **options)
    codec = DiffcCodec(b, profile_params(name))  # the model's codec defaults
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


def test_classifier_free_guidance_on_tiny_sd15():
    """guidance s > 1 with a caption: out = out(empty) + s (out(caption) - out(empty)), one UNet call
    of batch 2 (empty prompt, caption); s <= 1 or no caption: the plain conditional call (batch 1).
    The batched outputs equal two batch-1 calls' to float32 rounding."""
    b = tiny("tiny-sd15")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b.latent_shape(32, 32), generator=g)
    cond, empty = b.condition("a red barn"), b.condition(None)
    batches = []
    hook = b.unet.register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0]))
    try:
        plain = b.guided_network(x, 500, cond, 1.0)
        assert batches == [1]
        guided = b.guided_network(x, 500, cond, 5.0)
        assert batches == [1, 2]
        assert torch.equal(b.guided_network(x, 500, empty, 5.0), b.guided_network(x, 500, empty, 1.0))
        assert batches == [1, 2, 1, 1]  # no caption: no guidance, batch 1
    finally:
        hook.remove()
    expected = b.network(x, 500, empty) + 5.0 * (plain - b.network(x, 500, empty))
    torch.testing.assert_close(guided, expected, rtol=2e-5, atol=2e-5)
    assert (guided - plain).abs().max() > 1e-3  # the scale does something
    # predict_x0 takes the scale from the backbone (the encoder's) or the call (the reconstruction's)
    x0_enc = b.predict_x0(x, 500, cond)
    assert torch.equal(x0_enc, b.predict_x0(x, 500, cond, 1.0))
    assert not torch.equal(x0_enc, b.predict_x0(x, 500, cond, 5.0))


def test_guided_encode_round_trip_bit_exact():
    """An encoder with guidance 3 (batched CFG at every step) writes files its decoder rebuilds bit
    for bit; the reconstruction may use another scale (here 1: one batch-1 call per step)."""
    b = tiny("tiny-sdxl", guidance=3.0)
    codec = DiffcCodec(b, PARAMS)
    point = codec.encode(make_image(), stop_timesteps=[codec.timesteps[4]], caption="a parrot").points[-1]
    dec = DiffcCodec(tiny("tiny-sdxl", guidance=3.0), PARAMS).decode(point.data)
    assert torch.equal(dec.x_t, point.x_t)
    cond = b.condition("a parrot")
    assert torch.equal(dec.image, codec.reconstruct(point.x_t, point.timestep, ODD_H, ODD_W, cond))
    unguided = dataclasses.replace(codec.params.recon, guidance=1.0)
    assert not torch.equal(codec.reconstruct(point.x_t, point.timestep, ODD_H, ODD_W, cond, unguided), dec.image)


@pytest.mark.parametrize("name", TINY)
def test_latent_shape_without_running_the_autoencoder(name: str, monkeypatch: pytest.MonkeyPatch):
    """``latent_shape`` is (latent channels, H / f, W / f) from the VAE config (f = 2^(levels - 1);
    pixel space: 3, f = 1) without running the VAE, and equals the shape of a real encode at every
    padded size the twin accepts (Flux's packing is inside ``network``: its latent stays [16, h, w])."""
    b = tiny(name)
    sizes = [b.padded_size(h, w) for h, w in ((ODD_H, ODD_W), (64, 64), (3, 5), (96, 40))]
    real = {hw: tuple(b.encode(make_image(*hw)).shape) for hw in sizes}
    if b.vae is not None:
        monkeypatch.setattr(b.vae, "encode", lambda *a, **k: pytest.fail("latent_shape ran the VAE"))
    for hw in sizes:
        assert b.latent_shape(*hw) == real[hw]


def test_vae_posterior_mode_is_deterministic_and_sample_is_an_option():
    img = make_image(32, 32)
    mode = tiny("tiny-sd15")
    assert torch.equal(mode.encode(img), mode.encode(img))
    sample = tiny("tiny-sd15", vae_posterior="sample")  # the reference's unseeded draw
    a, b = sample.encode(img), sample.encode(img)
    assert not torch.equal(a, b) and not torch.equal(a, mode.encode(img))
    with pytest.raises(ValueError, match="vae_posterior"):
        load_backbone("tiny-sd15", **{**model_yaml("tiny-sd15")["options"], "device": "cpu", "vae_posterior": "median"})
