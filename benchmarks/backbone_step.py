"""Cost of one DiffC encoding step per diffusers backbone, at real size, on this machine.

For each backbone (sd15, sd21, sdxl, flux-dev) the real architecture is built from its config,
written here in code (the checkpoints' unet/transformer/vae config.json values; no hub access),
with random weights: the compute of a forward pass does not depend on the weight values. The
network runs through the real adapter (``StableDiffusionBackbone`` / ``FluxBackbone``:
conditioning, SDXL time ids, Flux packing, prediction conversion) on the latent of a 768x512 Kodak
image (kodim01), with seeded stand-in text embeddings of the real shapes (77 CLIP tokens; 512 T5
tokens for Flux).

Measured per backbone, each in its own child process (so peak memory is per backbone):
  model_s_per_step  one ``predict_x0`` call at t=500 (SDXL: base UNet for t >= 200 and refiner UNet
                    for t < 200, weighted by the paper schedule's step counts);
  rcc_s_per_step    ``diffc.rcc.pfr.encode_chunks`` + ``decode_chunks`` on a latent-size u with the real
                    chunk settings (chunk_bits 12, padding 2: K = 2^14 candidates per chunk; per-step
                    KL = the reference's mean per-step KL table value, which sets the chunk count);
  peak_mem_gb       peak resident set size of the child (``resource.getrusage(RUSAGE_SELF).ru_maxrss``),
                    i.e. weights + activations + interpreter; on CUDA, torch.cuda.max_memory_allocated;
  projected_encode_s = VAE encode + N_enc x (model + rcc), N_enc = len('paper') = 161 (Flux:
                    'paper-flux', 152);
  projected_decode_s = N_enc x (model + rcc decode) + 51 network calls of a 50-step ODE
                    reconstruction + VAE decode.

Extrapolations (flagged ``extrapolated: true`` and described in ``note``):
  --quick times ONE network call per model, without a warm-up call, and the RCC search over
  2^10 of the 2^14 candidates, scaled x16 (its cost is linear in K: a loop over candidate blocks).
  The VAE is timed once on the SD VAE and reused for the others (same widths; Flux's 16-channel
  latent changes only the first/last conv).
  FLUX.1-dev (12B parameters: 48 GB in float32, 24 GB in bfloat16) does not fit this machine's RAM:
  a reduced-depth FluxTransformer2DModel at the real width (1 double-stream + 1 single-stream block
  of the real 19 + 38) is run, each block timed with forward hooks, and the step time is
  projected as  measured + 18 x t(double block) + 37 x t(single block) — exact up to timing noise,
  since all blocks of a stream have identical shapes and the rest (embedders, final norm/proj)
  runs once per call and is measured.

Usage:  python benchmarks/backbone_step.py [--quick] [--backbones sd15 sdxl] [--device cpu|cuda]
        [--dtype auto|float32|half] [--dry-run]
The last stdout line is one JSON object {"bench": "backbone_step", ...}.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BACKBONES = ["sd15", "sd21", "sdxl", "flux-dev"]
IMAGE_ID = "kodim01"  # 768 x 512 landscape
WIDTH, HEIGHT = 768, 512
T_STEP = 500
REFINER_BELOW_T = 200
RECON_CALLS = 51  # 50 ODE steps + the final x0 prediction (DiffcCodec.denoise)
CHUNK_BITS, PADDING_BITS = 12, 2
QUICK_RCC_BITS = 10  # quick: search 2^10 candidates, scale to 2^14
QUICK_BUDGET_S = 450  # --quick must finish in < 8 min (480 s): everything after startup fits in this

# ---- real architectures (values of the checkpoints' config.json files) ----------------------------
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
FLUX_VAE = {**SD_VAE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 0.3611,
            "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False}

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, norm_num_groups=32,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD21_UNET = {**SD15_UNET, "sample_size": 96, "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
             "use_linear_projection": True, "upcast_attention": True}
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, attention_head_dim=(5, 10, 20),
    block_out_channels=(320, 640, 1280), cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816)
SDXL_REFINER_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, attention_head_dim=(6, 12, 24, 24),
    block_out_channels=(384, 768, 1536, 1536), cross_attention_dim=1280, transformer_layers_per_block=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560)
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_PARAMS = 11.9e9  # FLUX.1-dev transformer parameters

#: Mean per-step KL (bits) of the reference's per-step KL tables (docs/reference/seed-settings.json):
#: sets the number of chunks per step (KL / 12). Cost is dominated by K x latent size, not by this.
REF_STEP_KL_BITS = {"sd15": 103949 / 161, "sd21": 104596 / 161, "sdxl": 214614 / 161, "flux-dev": 1477119 / 152}

SD_SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _peak_mem_gb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "getrusage ru_maxrss (peak RSS of the child)"


def _kodak_image() -> tuple[torch.Tensor, str]:
    try:
        from pipelines.datasets import load_dataset, to_tensor

        _, img = load_dataset("kodak", ids=[IMAGE_ID])[0]
        image = to_tensor(img)
        if image.shape[-2:] == (HEIGHT, WIDTH):
            return image, IMAGE_ID
    except Exception as e:  # noqa: BLE001 - the benchmark still runs on a synthetic image
        print(f"[backbone_step] Kodak unavailable ({type(e).__name__}: {e}); synthetic 768x512 image",
              file=sys.stderr)
    return torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0)), "synthetic"


def _paper_steps(name: str) -> list[int]:
    from diffc.schedule import encoding_timesteps

    return encoding_timesteps("paper-flux" if name == "flux-dev" else "paper", 1000)


# ---- FLOP counts (meta device: no memory, no compute) -------------------------------------------------
def _text_dims(name: str) -> tuple[int, int | None, int | None]:
    """(cross-attention dim, pooled dim, number of SDXL time ids) of the base network."""
    return {"sd15": (768, None, None), "sd21": (1024, None, None), "sdxl": (2048, 1280, 6),
            "sdxl-refiner": (1280, 1280, 5)}[name]


def count_flops() -> dict[str, float]:
    """FLOPs of one network call at the 768x512 latent, and of the VAE encode/decode at full and
    quarter size, counted with torch.utils.flop_counter on the meta device (~30 s; cached in
    $DIFFC_CACHE/bench/ under a hash of the configs and library versions)."""
    import hashlib

    import diffusers

    key = hashlib.sha256(json.dumps([SD_VAE, SDXL_VAE, FLUX_VAE, SD15_UNET, SD21_UNET, SDXL_UNET, SDXL_REFINER_UNET,
                                     FLUX_TRANSFORMER, HEIGHT, WIDTH, torch.__version__, diffusers.__version__],
                                    sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("DIFFC_CACHE", REPO / ".cache" / "diffc")) / "bench" / f"backbone_step_flops_{key}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    out = _count_flops()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(cache)
    except OSError:
        pass
    return out


def _count_flops() -> dict[str, float]:
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    h, w = HEIGHT // 8, WIDTH // 8
    out: dict[str, float] = {}

    def count(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return float(fc.get_total_flops())

    with torch.device("meta"):
        for name, cfg in (("sd15", SD15_UNET), ("sd21", SD21_UNET), ("sdxl", SDXL_UNET),
                          ("sdxl-refiner", SDXL_REFINER_UNET)):
            m = UNet2DConditionModel(**cfg)
            ctx, pooled, n_ids = _text_dims(name)
            kw = {}
            if pooled:
                kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.randn(1, n_ids)}
            out[name] = count(lambda: m(torch.randn(1, 4, h, w), T_STEP, encoder_hidden_states=torch.randn(1, 77, ctx), **kw))
            out[name + ":params"] = float(sum(p.numel() for p in m.parameters()))
            del m
        for tag, cfg in (("flux-dev", FLUX_TRANSFORMER),
                         ("flux-reduced", {**FLUX_TRANSFORMER, "num_layers": 1, "num_single_layers": 1})):
            m = FluxTransformer2DModel(**cfg)
            n_img = (h // 2) * (w // 2)
            out[tag] = count(lambda: m(
                hidden_states=torch.randn(1, n_img, 64), encoder_hidden_states=torch.randn(1, 512, 4096),
                pooled_projections=torch.randn(1, 768), timestep=torch.full((1,), 0.5), img_ids=torch.zeros(n_img, 3),
                txt_ids=torch.zeros(512, 3), guidance=torch.ones(1)))
            out[tag + ":params"] = float(sum(p.numel() for p in m.parameters()))
            del m
        for tag, cfg in (("vae", SD_VAE), ("vae-flux", FLUX_VAE)):
            v = AutoencoderKL(**cfg)
            c = cfg["latent_channels"]
            for sfx, (ih, iw) in (("", (HEIGHT, WIDTH)), (":quarter", (HEIGHT // 2, WIDTH // 2))):
                out[f"{tag}-encode{sfx}"] = count(lambda: v.encode(torch.randn(1, 3, ih, iw)).latent_dist.mode())
                out[f"{tag}-decode{sfx}"] = count(lambda: v.decode(torch.randn(1, c, ih // 8, iw // 8)))
    return out


# ---- child: one backbone ----------------------------------------------------------------------------
def _vae(cfg: dict) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg)


def _sd_backbone(name: str, unet_cfg: dict, text: list[tuple[int, int | None]], vae_cfg: dict,
                 prediction_type: str, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    from diffc.backbones.diffusers_common import SeededTextStage
    from diffc.backbones.stable_diffusion import StableDiffusionBackbone

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_cfg)
    stages = [SeededTextStage(0, i, 77, d, p) for i, (d, p) in enumerate(text)]
    return StableDiffusionBackbone(
        name=name, unet=unet, vae=_vae(vae_cfg), text_stages=stages,
        scheduler_config={**SD_SCHED, "prediction_type": prediction_type}, device=device, dtype=dtype,
        identity={"benchmark": "random weights, real architecture"})


def _flux_backbone(layers: int, single_layers: int, device: torch.device, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel

    from diffc.backbones.diffusers_common import SeededTextStage
    from diffc.backbones.flux import FLUX_SCHEDULER, FluxBackbone

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(**{**FLUX_TRANSFORMER, "num_layers": layers, "num_single_layers": single_layers})
    # one seeded stage of the real shapes: T5 states [1, 512, 4096] and a CLIP pooled vector [1, 768]
    stages = [SeededTextStage(0, 0, 512, 4096, 768)]
    return FluxBackbone(name="flux-dev", transformer=tr, vae=_vae(FLUX_VAE), text_stages=stages,
                        scheduler_config=FLUX_SCHEDULER, device=device, dtype=dtype,
                        identity={"benchmark": "random weights, real width, reduced depth"})


def _time_model(b, latent_shape, steps: int, warmup: int, device: torch.device) -> float:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*latent_shape, generator=g).to(device)
    cond = b.condition(None)
    for _ in range(warmup):
        b.predict_x0(x, T_STEP, cond)
    times = [_timed(lambda: b.predict_x0(x, T_STEP, cond), device)[1] for _ in range(steps)]
    return min(times) if len(times) > 1 else times[0]


def _time_vae(b, image: torch.Tensor, device: torch.device, quarter: bool) -> dict:
    """VAE encode + decode of the Kodak image (quick: at half width and height, 1/4 of the pixels)."""
    if quarter:
        image = torch.nn.functional.interpolate(image[None], scale_factor=0.5, mode="area")[0]
    x0, enc_s = _timed(lambda: b.encode(image.to(device)), device)
    _, dec_s = _timed(lambda: b.decode(x0), device)
    return {"vae_encode_s": enc_s, "vae_decode_s": dec_s, "vae_quarter": quarter}


def model_dtype(name: str, device: torch.device, choice: str) -> torch.dtype:
    """``--dtype``: float32, or half (bfloat16 for Flux, float16 for the UNets: what each is shipped
    in); auto = half on CUDA, float32 on the CPU."""
    if choice == "float32" or (choice == "auto" and device.type == "cpu"):
        return torch.float32
    return torch.bfloat16 if name == "flux-dev" else torch.float16


def child(name: str, quick: bool, steps: int, warmup: int, device: torch.device, vae: bool,
          dtype_choice: str = "auto") -> dict:
    """Build one real-size backbone, time its step (and the VAE with --vae), report JSON."""
    dtype = model_dtype(name, device, dtype_choice)
    out: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch.")}
    t_build = time.perf_counter()
    if name in ("sd15", "sd21"):
        cfg, text, pred = ((SD15_UNET, [(768, None)], "epsilon") if name == "sd15"
                           else (SD21_UNET, [(1024, None)], "v_prediction"))
        b = _sd_backbone(name, cfg, text, SD_VAE, pred, device, dtype)
        out["build_s"] = time.perf_counter() - t_build
        out["model_s_per_step"] = _time_model(b, b.latent_shape(HEIGHT, WIDTH), steps, warmup, device)
    elif name == "sdxl":
        b = _sd_backbone(name, SDXL_UNET, [(768, None), (1280, 1280)], SDXL_VAE, "epsilon", device, dtype)
        out["build_s"] = time.perf_counter() - t_build
        out["model_s_per_step"] = _time_model(b, b.latent_shape(HEIGHT, WIDTH), steps, warmup, device)
        if not quick:
            # the refiner UNet of the sdxl config (t < 200), built after freeing the base: both at
            # once would need ~20 GB in float32.
            b.unet = None
            gc.collect()
            r = _sd_backbone(name, SDXL_REFINER_UNET, [(1280, 1280)], SDXL_VAE, "epsilon", device, dtype)
            out["refiner_s_per_step"] = _time_model(r, r.latent_shape(HEIGHT, WIDTH), steps, warmup, device)
            del r
    elif name == "flux-dev":
        # Reduced depth at real width: 1 double + 1 single block, each timed by hooks.
        b = _flux_backbone(1, 1, device, dtype)
        out["build_s"] = time.perf_counter() - t_build
        blocks: dict[str, list[float]] = {"double": [], "single": []}
        t_start: dict[str, float] = {}

        def pre(tag):
            def f(*_):
                _sync(device)
                t_start[tag] = time.perf_counter()
            return f

        def post(tag):
            def f(*_):
                _sync(device)
                blocks[tag].append(time.perf_counter() - t_start[tag])
            return f

        tr = b.transformer
        hs = [tr.transformer_blocks[0].register_forward_pre_hook(pre("double")),
              tr.transformer_blocks[0].register_forward_hook(post("double")),
              tr.single_transformer_blocks[0].register_forward_pre_hook(pre("single")),
              tr.single_transformer_blocks[0].register_forward_hook(post("single"))]
        measured = _time_model(b, b.latent_shape(HEIGHT, WIDTH), steps, warmup, device)
        for h in hs:
            h.remove()
        td, tsn = min(blocks["double"]), min(blocks["single"])
        full = (measured + (FLUX_TRANSFORMER["num_layers"] - 1) * td
                + (FLUX_TRANSFORMER["num_single_layers"] - 1) * tsn)
        out.update(model_s_per_step=full, measured_reduced_s=measured, double_block_s=td, single_block_s=tsn)
    else:
        raise SystemExit(f"unknown backbone {name!r}")
    if vae:
        image, out["image"] = _kodak_image()
        out.update(_time_vae(b, image, device, quarter=quick))
    out["peak_mem_gb"] = _peak_mem_gb(device)[0]
    return out


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


# ---- RCC per step ---------------------------------------------------------------------------------------
def rcc_step(n_dims: int, kl_bits: float, quick: bool, device: torch.device) -> dict:
    """encode_chunks + decode_chunks of one step with chunk_bits 12, padding 2 (K = 2^14)."""
    from diffc.rcc.pfr import decode_chunks, encode_chunks, make_plan

    k_full = 1 << (CHUNK_BITS + PADDING_BITS)
    k = (1 << QUICK_RCC_BITS) if quick else k_full
    n_chunks = max(1, math.ceil(kl_bits / CHUNK_BITS))
    g = torch.Generator().manual_seed(2)
    # u with the step's KL: ||u||^2 / 2 nats = kl_bits
    u = torch.randn(n_dims, generator=g)
    u = (u * math.sqrt(2 * kl_bits * math.log(2)) / u.norm()).to(device)
    plan = make_plan(n_dims, n_chunks, 3)
    encode_chunks(u, plan, 16, 4)  # warm-up: the fused CPU kernels compile (or load) on first use
    idx, enc_s = _timed(lambda: encode_chunks(u, plan, k, 4), device)
    _, dec_s = _timed(lambda: decode_chunks(idx, plan, 4, device), device)
    scale = k_full / k
    return {"rcc_encode_s": enc_s * scale, "rcc_decode_s": dec_s, "n_chunks": n_chunks, "candidates": k_full,
            "candidates_timed": k, "entries_per_s": k * n_dims / enc_s, "extrapolated": scale != 1}


# ---- parent -----------------------------------------------------------------------------------------------
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({cpu}; {torch.get_num_threads()} threads; {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 network call per model, no warm-up, RCC over 2^10 "
                    "candidates scaled to 2^14, VAE at 1/4 of the pixels, a 450 s budget; < 8 min")
    ap.add_argument("--backbones", nargs="+", default=BACKBONES, choices=BACKBONES)
    ap.add_argument("--steps", type=int, default=None, help="timed network calls per model (default 1 quick, 3)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "half"],
                    help="model dtype: half = bfloat16 (Flux) / float16 (UNets); auto = half on CUDA, float32 on CPU")
    ap.add_argument("--dry-run", action="store_true", help="only build every architecture on the meta device "
                    "and count its FLOPs (checks the configs against the installed diffusers; ~30 s on a CPU)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for everything after startup (default 450 with --quick)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--vae", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from diffc.device import resolve_device

    device = resolve_device(args.device)
    steps = args.steps or (1 if args.quick else 3)
    warmup = 0 if args.quick else 1

    if args.child:
        print(json.dumps(child(args.child, args.quick, steps, warmup, device, args.vae, args.dtype)))
        return
    if args.dry_run:
        t0 = time.perf_counter()
        flops = count_flops()
        print(json.dumps({"bench": "backbone_step", "dry_run": True, "tflops_per_call": {
            k: round(v / 1e12, 3) for k, v in flops.items() if ":" not in k}, "wall_s": round(time.perf_counter() - t0, 1)}))
        return

    t0 = time.perf_counter()
    budget = args.budget if args.budget is not None else (QUICK_BUDGET_S if args.quick else math.inf)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev_name = _device_name(device)
    log = lambda msg: print(f"[backbone_step {time.perf_counter() - t0:5.0f} s] {msg}", file=sys.stderr)  # noqa: E731
    flops = count_flops()
    log("FLOPs per call: " + ", ".join(f"{k} {v / 1e12:.2f} T" for k, v in flops.items() if ":" not in k))

    # RCC per latent size (the same for the three SD backbones)
    rcc_by_dims: dict[int, dict] = {}
    for name in args.backbones:
        n_dims = (16 if name == "flux-dev" else 4) * (HEIGHT // 8) * (WIDTH // 8)
        if n_dims not in rcc_by_dims:
            rcc_by_dims[n_dims] = rcc_step(n_dims, REF_STEP_KL_BITS[name], args.quick, device)
            log(f"RCC {n_dims} dims: {rcc_by_dims[n_dims]['rcc_encode_s']:.1f} s/step")

    # Children: sd15 first (the anchor: achieved FLOP rate and per-child overhead), then flux, sdxl, sd21.
    order = [n for n in ("sd15", "flux-dev", "sdxl", "sd21") if n in args.backbones]
    runs: dict[str, dict] = {}
    anchor: tuple[str, float, float] | None = None  # (name, wall s of its child, its network FLOPs)
    vae: dict | None = None
    for name in order:
        net_flops = flops["flux-reduced" if name == "flux-dev" else name]
        left = budget - (time.perf_counter() - t0)
        if anchor is not None and math.isfinite(left):
            est = anchor[1] * max(net_flops / anchor[2], flops[_built(name)] / flops[_built(anchor[0])])
            if est > left:
                runs[name] = {"skipped": f"not run: ~{est:.0f} s estimated, {left:.0f} s of the budget left"}
                log(f"{name}: {runs[name]['skipped']}")
                continue
        if left < 20:
            runs[name] = {"skipped": "not run: budget spent"}
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--steps", str(steps),
               "--device", str(device), "--dtype", args.dtype] + (["--quick"] if args.quick else []) + (
               ["--vae"] if vae is None else [])
        tc = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                  timeout=left if math.isfinite(left) else None)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                raise RuntimeError(f"child exited {proc.returncode}: {tail}")
            r = json.loads(lines[-1])
        except subprocess.TimeoutExpired:
            runs[name] = {"skipped": f"timed out after {left:.0f} s (budget)"}
            log(f"{name}: {runs[name]['skipped']}")
            continue
        except Exception as e:  # noqa: BLE001 - reported in the JSON; the others still run
            runs[name] = {"skipped": f"failed: {e}"}
            log(f"{name}: {runs[name]['skipped']}")
            continue
        r["wall_s"] = time.perf_counter() - tc
        runs[name] = r
        if "vae_encode_s" in r:
            tag = "vae-flux" if name == "flux-dev" else "vae"
            sfx = ":quarter" if r["vae_quarter"] else ""
            vae = {"tag": tag, "rate_enc": flops[f"{tag}-encode{sfx}"] / r["vae_encode_s"],
                   "rate_dec": flops[f"{tag}-decode{sfx}"] / r["vae_decode_s"], "quarter": r["vae_quarter"],
                   "from": name}
        if anchor is None and name != "flux-dev":  # its child's wall time without the VAE timing
            anchor = (name, r["wall_s"] - r.get("vae_encode_s", 0.0) - r.get("vae_decode_s", 0.0), net_flops)
        log(f"{name}: {r['model_s_per_step']:.1f} s/step, peak {r['peak_mem_gb']:.1f} GB, child {r['wall_s']:.0f} s")
    if anchor is None and runs:  # only flux ran: its reduced model is the anchor
        first = next((n for n in order if "model_s_per_step" in runs[n]), None)
        if first:
            anchor = (first, runs[first]["wall_s"], flops["flux-reduced" if first == "flux-dev" else first])

    # Assemble
    results: dict[str, dict] = {}
    ref = next((n for n in order if "model_s_per_step" in runs.get(n, {}) and n != "flux-dev"), None)
    for name in args.backbones:
        r, notes = runs.get(name, {}), []
        n_dims = (16 if name == "flux-dev" else 4) * (HEIGHT // 8) * (WIDTH // 8)
        rcc = rcc_by_dims[n_dims]
        params = flops[_pkey(name)]
        measured = "model_s_per_step" in r
        if measured:
            model = r["model_s_per_step"]
            peak = r["peak_mem_gb"]
            mem_measured = True
        elif ref is not None:
            rr = runs[ref]
            rate = flops[ref] / rr["model_s_per_step"]
            model = flops[name if name != "flux-dev" else "flux-dev"] / rate
            notes.append(f"{r.get('skipped', 'not run')}: step time = its FLOPs ({flops[name] / 1e12:.2f} T) / the "
                         f"FLOP rate {ref} achieved ({rate / 1e9:.0f} GFLOP/s)")
            peak = rr["peak_mem_gb"] + (params - flops[_pkey(ref)]) * 4 / 2**30
            mem_measured = False
        else:
            results[name] = {"device": dev_name, "error": r.get("skipped", "not run"), "extrapolated": True}
            continue
        if name == "sdxl":
            ts = _paper_steps(name)
            n_ref = sum(1 for t in ts if t < REFINER_BELOW_T)
            base = model
            if "refiner_s_per_step" in r:
                refiner = r["refiner_s_per_step"]
            else:
                refiner = base * flops["sdxl-refiner"] / flops["sdxl"]
                notes.append(f"refiner UNet step = base x its FLOP ratio ({flops['sdxl-refiner'] / flops['sdxl']:.2f})")
            model = ((len(ts) - n_ref) * base + n_ref * refiner) / len(ts)
            notes.append(f"base {base:.1f} s + refiner {refiner:.1f} s per call, weighted by the paper schedule "
                         f"({len(ts) - n_ref} base + {n_ref} refiner steps, refiner below t={REFINER_BELOW_T})")
            if mem_measured and "refiner_s_per_step" not in r:
                peak = max(peak, peak + (flops["sdxl-refiner:params"] - params) * 4 / 2**30)
        if name == "flux-dev" and measured:
            notes.append(f"FLUX.1-dev ({params / 1e9:.1f}B params: {params * 4 / 2**30:.0f} GiB float32, "
                         f"{params * 2 / 2**30:.0f} GiB bfloat16) does not fit {_ram_gb():.0f} GiB RAM: timed a "
                         f"1 double + 1 single block transformer at real width ({r['measured_reduced_s']:.1f} s) "
                         f"and projected to 19 + 38 blocks (+18 x {r['double_block_s']:.2f} s + 37 x "
                         f"{r['single_block_s']:.2f} s); FLOP check: full/reduced = "
                         f"{flops['flux-dev'] / flops['flux-reduced']:.1f}x, time ratio "
                         f"{model / r['measured_reduced_s']:.1f}x")
            peak = r["peak_mem_gb"] + (params - flops["flux-reduced:params"]) * 4 / 2**30
            notes.append(f"peak_mem_gb projected for the full model in float32 (reduced model measured "
                         f"{r['peak_mem_gb']:.1f} GB)")
            mem_measured = False
        # VAE: full-size times from the measured VAE's FLOP rate
        vtag = "vae-flux" if name == "flux-dev" else "vae"
        if vae:
            venc = flops[f"{vtag}-encode"] / vae["rate_enc"]
            vdec = flops[f"{vtag}-decode"] / vae["rate_dec"]
            if vae["quarter"] or vtag != vae["tag"]:
                notes.append(f"VAE {venc:.1f} s encode / {vdec:.1f} s decode: timed on {vae['from']}'s VAE"
                             f"{' at 1/4 of the pixels' if vae['quarter'] else ''}, scaled by FLOPs")
        else:
            venc = vdec = 0.0
            notes.append("VAE not timed (left out of the projections)")
        n_enc = len(_paper_steps(name))
        rcc_s = rcc["rcc_encode_s"] + rcc["rcc_decode_s"]  # the encoder also regenerates the chosen candidates
        if rcc["extrapolated"]:
            notes.append(f"RCC: searched {rcc['candidates_timed']} of {rcc['candidates']} candidates per chunk, "
                         f"scaled x{rcc['candidates'] // rcc['candidates_timed']} (cost is linear in K)")
        notes.append(f"RCC {rcc['entries_per_s'] / 1e6:.1f} M candidate entries/s, {n_dims} latent dims, "
                     f"{rcc['n_chunks']} chunks/step")
        if measured and steps == 1:
            notes.append("1 network call timed (no warm-up)")
        extrap = (not measured) or name == "flux-dev" or rcc["extrapolated"] or bool(vae and vae["quarter"]) \
            or (name == "sdxl" and "refiner_s_per_step" not in r)
        results[name] = dict(
            model_s_per_step=round(model, 3), rcc_s_per_step=round(rcc_s, 3), peak_mem_gb=round(peak, 2),
            device=dev_name, projected_encode_s=round(venc + n_enc * (model + rcc_s), 1),
            projected_decode_s=round(n_enc * (model + rcc["rcc_decode_s"]) + RECON_CALLS * model + vdec, 1),
            extrapolated=extrap, note="; ".join(notes),
            detail={"timed": measured, "peak_mem_measured": mem_measured, "network_tflops": flops[name] / 1e12,
                    "params_b": params / 1e9, "encoding_steps": n_enc, "recon_calls": RECON_CALLS,
                    "vae_encode_s": round(venc, 2), "vae_decode_s": round(vdec, 2),
                    "rcc_encode_s": round(rcc["rcc_encode_s"], 3), "rcc_decode_s": round(rcc["rcc_decode_s"], 4),
                    "child": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}})
    summary = {"bench": "backbone_step", "quick": bool(args.quick), "dtype": args.dtype, "backbones": results,
               "peak_mem_method": ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                                   else "resource.getrusage(RUSAGE_SELF).ru_maxrss of one child process per backbone"),
               "image": f"{IMAGE_ID} {WIDTH}x{HEIGHT}", "chunk_bits": CHUNK_BITS, "padding_bits": PADDING_BITS,
               "schedule": "paper (161 steps; flux: paper-flux, 152) + 50 ODE recon steps",
               "loadavg_start": round(load0, 2), "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary))


def _built(name: str) -> str:
    """FLOP-table key of the parameter count of what the child builds (Flux: the reduced model)."""
    return ("flux-reduced" if name == "flux-dev" else name) + ":params"


def _pkey(name: str) -> str:
    return ("flux-dev" if name == "flux-dev" else name) + ":params"


if __name__ == "__main__":
    main()
