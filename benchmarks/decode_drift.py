"""Decode anywhere: encode under one setting, decode under another, and measure the drift.

For each backbone (gaussian, tiny-sd15, tiny-flux; the reference's ``paper`` schedule, or
``paper-flux`` for Flux, stopped at t = 10; a kodak-small image) one file is encoded with 2 torch
threads, then decoded in these settings (the decoder's backbone is a fresh copy):
- ``threads``: 1 thread, the default deterministic mode (the file's thread count is used);
- ``threads_optout``: encoded and decoded with ``deterministic=False``, 2 -> 1 threads;
- ``float64``: the decoder's networks and autoencoder in float64 (a proxy for another device);
- ``perturbed``: every network output on the decoder's side times (1 + 1e-3 N(0, 1)) (a proxy for
  a GPU's half precision against a CPU's float32).
Per case: ``drift_xt_max`` = max |x_t decoder - x_t encoder| and ``drift_psnr_db`` = PSNR between
the encoder-side reconstruction and the decoder's (images in [0, 1]; inf when equal). A case is a
desync when the decoder raises, gives non-finite values, or the drift PSNR is below 30 dB.
Goal: ``min_drift_psnr_db`` >= 40 and 0 desyncs. With ``--device cuda`` (when a GPU is lent) a
``cuda_fp16_to_cpu`` case encodes on the GPU in float16 and decodes on the CPU in float32;
``--half-only`` runs that case alone (on ``--device cpu``: ``cpu_fp16_to_cpu``, the tiny twins in
float16 on the CPU).

``--full-size sd15-arch``: one full-size round trip on ``--device`` instead: the SD 1.5 architecture
(real UNet and VAE sizes, random weights: benchmarks/backbone_step.py's configs; float16 on CUDA,
float32 on the CPU), kodim01 at 768x512 (a seeded synthetic image when Kodak is not cached), sd15's
codec settings, the paper schedule stopped at ``--stop-t``; encode, then decode with a second codec on
the same backbone: ``encode_s``, ``decode_s``, ``bit_exact`` (x_t and image), else the drift.
``--full-size tiny`` is the same round trip with tiny-sd15 at 64x64 (``benchmarks/gpu_check.sh --dry-run``).
"""
from __future__ import annotations

import math
import time

try:
    from . import _common as C  # type: ignore
except ImportError:
    import _common as C

import torch

from diffc.codec import DiffcCodec
from diffc.determinism import DESYNC_PSNR_DB, desynchronised, drift_psnr_db
from pipelines.common import build_codec, compose, model_config

BACKBONES = {"gaussian": "paper", "tiny-sd15": "paper", "tiny-flux": "paper-flux"}
STOP_T = 10
FULL_SIZE_STOP_T = 700
PERTURBATION = 1e-3


def codec_for(name: str, schedule: str, deterministic: bool = True, options: dict | None = None) -> DiffcCodec:
    codec = build_codec(compose("compress", [f"model={name}", f"codec.schedule={schedule}"]), options)
    codec.deterministic = deterministic
    return codec


def to_float64(codec: DiffcCodec) -> DiffcCodec:
    """Every torch module of the backbone in float64 (inputs follow its ``dtype``/``vae_dtype``)."""
    b = codec.backbone
    for value in vars(b).values():
        if isinstance(value, torch.nn.Module):
            value.double()
    for attr in ("dtype", "vae_dtype"):
        if hasattr(b, attr):
            setattr(b, attr, torch.float64)
    return codec


def perturbed(codec: DiffcCodec, seed: int) -> DiffcCodec:
    """Every network output times (1 + PERTURBATION N(0, 1)) (a fixed generator)."""
    b, gen = codec.backbone, torch.Generator().manual_seed(seed)
    network = b.network

    def noisy(model_input, t, cond, *extra):  # extra: Flux's guidance scale
        out = network(model_input, t, cond, *extra)
        noise = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(out.device, out.dtype)
        return out * (1 + PERTURBATION * noise)

    b.network = noisy
    return codec


def measure(enc: DiffcCodec, point, image: torch.Tensor, dec: DiffcCodec, threads: int) -> dict:
    """Decode ``point.data`` with ``dec`` at ``threads`` torch threads; drift against the encoder."""
    ref = enc.reconstruct(point.x_t, point.timestep, *image.shape[-2:],
                          enc.backbone.condition(None))
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        d = dec.decode(point.data)
    except Exception as e:  # noqa: BLE001 (any failure to decode is a desync)
        return {"desync": True, "error": f"{type(e).__name__}: {e}"}
    finally:
        torch.set_num_threads(2)
    drift_db = drift_psnr_db(ref, d.image) if bool(torch.isfinite(d.x_t).all()) else -math.inf
    return {"drift_xt_max": float((d.x_t.cpu() - point.x_t.cpu()).abs().max()), "drift_psnr_db": drift_db,
            "desync": desynchronised(drift_db), "warned": d.drift_warning is not None,
            "decode_s": time.perf_counter() - t0}


def full_size_round_trip(kind: str, device: str, stop_t: int) -> dict:
    """Encode + decode one image on ``device`` with the SD 1.5 architecture (``sd15-arch``) or
    tiny-sd15 (``tiny``); seconds and bit-exactness (module docstring)."""
    from diffc.profiles import profile_params

    if kind == "tiny":
        enc = codec_for("tiny-sd15", "paper", options={"device": device})
        image, source = C.kodak_small(quick=False)[0][1], "kodak-small[0] 64x64"
    else:
        import backbone_step as bs

        dev = torch.device(device)
        backbone = bs._sd_backbone("sd15", bs.SD15_UNET, [(768, None)], bs.SD_VAE, "epsilon", dev,
                                   bs.model_dtype("sd15", dev, "auto"))
        enc = DiffcCodec(backbone, profile_params("sd15"))  # the paper schedule
        image, source = bs._kodak_image()
    dec = DiffcCodec(enc.backbone, enc.params)
    t0 = time.perf_counter()
    point = enc.encode(image, stop_timesteps=[stop_t]).points[-1]
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = dec.decode(point.data)
    decode_s = time.perf_counter() - t0
    xt_max, drift_db = enc.drift(point, d)
    return {"backbone": "sd15 architecture, random weights" if kind != "tiny" else "tiny-sd15",
            "image": source, "size": list(image.shape[-2:]), "device": device,
            "dtype": str(getattr(enc.backbone, "dtype", torch.float32)).removeprefix("torch."),
            "timestep": point.timestep, "steps": point.step_index, "bpp": point.bpp,
            "encode_s": encode_s, "decode_s": decode_s, "bit_exact": xt_max == 0.0 and drift_db == math.inf,
            "drift_xt_max": xt_max, "drift_psnr_db": drift_db, "desync": desynchronised(drift_db)}


def main() -> None:
    ap = C.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--full-size", choices=["sd15-arch", "tiny"], default=None,
                    help="only the full-size round trip on --device (module docstring)")
    ap.add_argument("--stop-t", type=int, default=None,
                    help=f"the stop timestep (default {STOP_T}; --full-size: {FULL_SIZE_STOP_T})")
    ap.add_argument("--half-only", action="store_true", help="only the half-precision case: encode on --device "
                    "in float16, decode on the CPU in float32 (what benchmarks/gpu_check.sh runs)")
    args = ap.parse_args()
    C.setup(args)
    t_start = time.perf_counter()
    if args.full_size:
        r = full_size_round_trip(args.full_size, args.device, args.stop_t or FULL_SIZE_STOP_T)
        C.log("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
        C.emit("decode_drift", args, {"full_size": r}, t_start)
        return
    _, image = C.kodak_small(quick=False)[0]
    stop_t = args.stop_t or STOP_T
    by_case: dict[str, dict] = {}
    for name, schedule in BACKBONES.items():
        torch.set_num_threads(2)
        cases = {}
        for deterministic in () if args.half_only else (True, False):
            enc = codec_for(name, schedule, deterministic)
            point = enc.encode(image, stop_timesteps=[stop_t]).points[-1]
            C.log(f"{name}: {schedule} to t={point.timestep} ({point.step_index} steps), {point.bpp:.3f} bpp, "
                  f"{'deterministic' if deterministic else 'opt-out'}")
            if deterministic:
                cases["threads"] = measure(enc, point, image, codec_for(name, schedule), 1)
                cases["float64"] = measure(enc, point, image, to_float64(codec_for(name, schedule)), 2)
                cases["perturbed"] = measure(enc, point, image, perturbed(codec_for(name, schedule), args.seed), 2)
            else:
                cases["threads_optout"] = measure(enc, point, image, codec_for(name, schedule, False), 1)
        if args.device.startswith("cuda") or args.half_only:  # (tiny twins honour float16 on the CPU too)
            half = {"dtype": "float16"} if "dtype" in model_config(name).options else {}  # gaussian: no dtype
            enc = codec_for(name, schedule, options={"device": args.device, **half})
            point = enc.encode(image, stop_timesteps=[stop_t]).points[-1]
            dev = torch.device(args.device).type
            cases[f"{dev}_fp16_to_cpu"] = measure(enc, point, image, codec_for(name, schedule, options={"device": "cpu"}),
                                                  2)
        for case, r in cases.items():
            by_case[f"{name}/{case}"] = r
            C.log(f"  {case:15s} " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in r.items()))
    psnrs = [r.get("drift_psnr_db", -math.inf) for r in by_case.values()]
    finite = [p for p in psnrs if math.isfinite(p)]
    figures = {
        "min_drift_psnr_db": min(psnrs),
        "min_finite_drift_psnr_db": min(finite) if finite else None,
        "desyncs": sum(r["desync"] for r in by_case.values()),
        "cases": len(by_case),
        "bit_exact_cases": sum(r.get("drift_xt_max") == 0.0 for r in by_case.values()),
        "goal_min_drift_psnr_db": 40.0,
        "by_case": by_case,
        "setup": {"backbones": BACKBONES, "stop_t": stop_t, "perturbation": PERTURBATION, "desync_below_db": DESYNC_PSNR_DB,
                  "image": "kodak-small[0] 64x64", "encode_threads": 2},
    }
    C.emit("decode_drift", args, figures, t_start)


if __name__ == "__main__":
    main()
