"""The model options no other test runs: float16 / bfloat16, ``cpu_offload`` and ``compile``, on
every tiny twin, each a file round trip that must be bit-exact on the platform that made it.

The tiny twins honour a half ``dtype`` on the CPU too (``resolve_dtype(cpu_half=True)``), so the
half-precision paths of the adapters (casts in and out, the VAE kept in float32 where
``force_upcast``) run here. ``DIFFC_TEST_DEVICE=cuda`` runs the same tests on a GPU
(``benchmarks/gpu_check.sh`` does).
"""
from __future__ import annotations

import functools
import os
import time

import pytest
import torch

from diffc import format as fmt
from diffc.backbone import load_backbone
from diffc.codec import DiffcCodec
from test_backbones import PARAMS, TINY, _one_thread, make_image, model_yaml  # noqa: F401 (autouse fixture)

DEVICE = os.environ.get("DIFFC_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip(f"DIFFC_TEST_DEVICE={DEVICE} but CUDA is not available", allow_module_level=True)
H, W = 20, 28
#: twins with an autoencoder or text encoder to offload (the pixel-space DDPM has neither)
OFFLOADABLE = [n for n in TINY if n != "tiny-ddpm"]


def build(name: str, **options):
    return load_backbone(name, **{**model_yaml(name)["options"], "device": DEVICE, **options})


def round_trip(name: str, **options):
    """(encoder's point, decoder's result): one file at the 4th of 8 steps, decoded by a codec on a
    freshly built backbone of the same options."""
    enc = DiffcCodec(build(name, **options), PARAMS, provenance=True)
    point = enc.encode(make_image(H, W), stop_timesteps=[enc.timesteps[4]]).points[-1]
    dec = DiffcCodec(build(name, **options), PARAMS).decode(point.data)
    assert torch.equal(dec.x_t, point.x_t), "decoded latent differs from the encoder's"
    assert torch.equal(dec.image, enc.reconstruct(point.x_t, point.timestep, H, W)), "decoded image differs"
    assert dec.drift_warning is None
    return point, dec


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", TINY)
def test_half_precision_round_trip(name: str, dtype: str):
    """The network runs in the half dtype (the header says so), the file decodes bit for bit on
    the same platform, and the chain is not float32's (the dtype really changed the outputs)."""
    point, dec = round_trip(name, dtype=dtype)
    b = build(name, dtype=dtype)
    net = b.unet if hasattr(b, "unet") else b.transformer
    assert next(net.parameters()).dtype == getattr(torch, dtype) and b.dtype == getattr(torch, dtype)
    assert fmt.read(point.data)[0].provenance.dtype == dtype
    assert bool(torch.isfinite(dec.image).all())
    f32, _ = round_trip(name, dtype="float32")
    assert not torch.equal(point.x_t, f32.x_t)
    # a float32 receiver decodes it (with drift, said in one line), never refuses it
    other = DiffcCodec(build(name, dtype="float32"), PARAMS).decode(point.data)
    assert other.drift_warning and "dtype" in other.drift_warning and bool(torch.isfinite(other.x_t).all())


@pytest.mark.parametrize("name", OFFLOADABLE)
def test_cpu_offload_round_trip(name: str):
    """``cpu_offload``: the VAE (and text encoders with weights) live on the CPU between calls and
    run on the device; the file is the one the backbone without offload writes, byte for byte."""
    point, _ = round_trip(name, cpu_offload=True)
    plain, _ = round_trip(name)
    assert point.data == plain.data and torch.equal(point.x_t, plain.x_t)
    b = build(name, cpu_offload=True)
    seen = []
    hook = b.vae.encoder.register_forward_pre_hook(lambda m, a: seen.append(next(m.parameters()).device.type))
    try:
        b.encode(make_image(32, 32))
    finally:
        hook.remove()
    assert seen == [torch.device(DEVICE).type] and next(b.vae.parameters()).device.type == "cpu"


def _compile_round_trip(name: str, monkeypatch: pytest.MonkeyPatch, backend: str) -> float:
    """Seconds of a ``compile: true`` round trip with torch.compile's ``backend``; the compiled
    network is traced once per input shape, not once per timestep (timesteps are tensors)."""
    import torch._dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    torch._dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    round_trip(name, compile=True)
    seconds = time.perf_counter() - t0
    b = build(name, compile=True)
    assert isinstance(b.unet if hasattr(b, "unet") else b.transformer, torch._dynamo.eval_frame.OptimizedModule)
    frames = torch._dynamo.utils.counters["frames"]
    # encoder + decoder backbones, batch 1, one latent shape: a few frames (graph breaks), not one per step
    assert 0 < frames["ok"] <= 16, dict(frames)
    print(f"{name} compile=true ({backend}) round trip: {seconds:.0f} s, {dict(frames)}")
    return seconds


@pytest.mark.parametrize("name", TINY)
def test_compile_round_trip_traced(name: str, monkeypatch: pytest.MonkeyPatch):
    """``compile: true`` through dynamo's tracing (backend eager: the captured graphs run eagerly, no
    code generation): the file decodes bit for bit."""
    _compile_round_trip(name, monkeypatch, "eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_compile_round_trip_inductor(name: str, monkeypatch: pytest.MonkeyPatch):
    """The default backend (inductor: generated C++ on the CPU, Triton on CUDA); slow on a CPU:
    tiny-sd15 takes about 3 minutes on 2 cores (code generation), hence ``slow``."""
    _compile_round_trip(name, monkeypatch, "inductor")
