"""Compress one image into a .diffc file.

    python -m pipelines.compress model=gaussian input=kodim01.png output=kodim01.diffc timestep=300
    python -m pipelines.compress model=sd15 input=kodim01.png output=kodim01.diffc bpp=0.1
    python -m pipelines.compress model=gaussian input=kodim01.png output=kodim01.diffc psnr=24

The bitrate is set by how far down the diffusion chain the encoder sends x_t: ``timestep=T``
stops at the largest schedule timestep <= T; ``bpp=B`` encodes once (progressively) and keeps the
highest-rate point whose real file is at most B bits per pixel; ``psnr=X`` / ``ms_ssim=X`` /
``lpips=X`` encodes once and keeps the smallest point whose decoder's reconstruction reaches the
quality, found by bisection over the stops (``pipelines.target``: about log2 of the schedule's
length reconstructions). bpp = file bytes x 8 / (W x H) of the original image: header, side
information, indices and caption included.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from analysis import cli
from diffc.checks import checked_int

from .common import (CONF_DIR, PipelineError, atomic_write, build_codec, check_writable, one_line_errors, png_bytes,
                     require)
from .target import TARGET_METRICS, best, smallest_reaching

if TYPE_CHECKING:
    from collections.abc import Callable

    from diffc.codec import DiffcCodec, RatePoint


def quality_target(cfg: DictConfig) -> tuple[str, float] | None:
    """The target quality asked for (``psnr=X``, ``ms_ssim=X`` or ``lpips=X``): (metric, value), or None."""
    given = [(m, cfg.get(m)) for m in TARGET_METRICS if cfg.get(m) is not None]
    if len(given) > 1:
        raise PipelineError(f"give one target quality, got {', '.join(f'{m}={v}' for m, v in given)}")
    if not given:
        return None
    metric, value = given[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise PipelineError(f"{metric} must be a number (the target quality), got {value!r}")
    return metric, float(value)


def stop_timesteps(codec: DiffcCodec, timestep: int | None, bpp: float | None,
                   quality: tuple[str, float] | None = None) -> list[int]:
    """Timesteps to encode: the one asked for, or every step of the schedule (bpp mode: the
    encoder stops after the first step whose file exceeds the target; quality mode: every
    step is a candidate of the bisection)."""
    if sum(v is not None for v in (timestep, bpp, quality)) != 1:
        raise PipelineError("give exactly one of timestep=T (stop timestep), bpp=B (target bits per pixel) or a "
                            f"target quality ({', '.join(f'{m}=X' for m in TARGET_METRICS)})")
    if quality is not None:
        return codec.timesteps[1:]
    if bpp is not None:
        if not bpp > 0:
            raise PipelineError(f"bpp must be > 0, got {bpp}")
        return codec.timesteps[1:]
    timestep = checked_int("timestep", timestep, 0)
    try:
        codec.stop_step_for(timestep)
    except ValueError as exc:
        raise PipelineError(str(exc)) from exc
    return [timestep]


def choose_point(points: list[RatePoint], bpp: float | None) -> RatePoint:
    """The single requested point, or the highest-rate point within the target bpp."""
    if bpp is None:
        return points[-1]
    fits = [p for p in points if p.bpp <= bpp]
    if not fits:
        raise PipelineError(f"no rate point within {bpp:g} bpp: the smallest file is {points[0].bpp:.4f} bpp "
                            f"(header alone: {points[0].bits_header / (points[0].width * points[0].height):.4f} bpp)")
    return fits[-1]


def decoder_image(codec: DiffcCodec, point: RatePoint, caption: str | None, height: int, width: int) -> np.ndarray:
    """The uint8 image ``decompress`` will write for ``point``'s file: its x_t (the decoder's, bit for
    bit) reconstructed with the file's settings in the decoder's deterministic context
    (``DiffcCodec.decode_prefixes``)."""
    from diffc.determinism import deterministic
    from diffc.format import read

    from .datasets import to_uint8

    header = read(point.data)[0]
    with deterministic(codec.decode_threads(header)):
        cond = codec.backbone.condition(caption)
        return to_uint8(codec.reconstruct(point.x_t, point.timestep, height, width, cond, header.recon))


def quality_scorer(metric: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """``score(ref, rec)`` of ``metric`` on uint8 images (``pipelines.metrics``); one line when it
    cannot be loaded here (lpips: the package or its AlexNet weights missing)."""
    from .metrics import REGISTRY

    try:
        return REGISTRY[metric]("cpu")
    except Exception as exc:  # ImportError, weights not downloadable
        from analysis.errors import describe as why

        raise PipelineError(f"{metric}=X needs the {metric} metric, which cannot be loaded here: {why(exc, 160)} "
                            f"(pip install -e '.[metrics]' and its weights)") from None


def choose_by_quality(codec: DiffcCodec, points: list[RatePoint], quality: tuple[str, float],
                      score: Callable[[np.ndarray, np.ndarray], float], ref: np.ndarray,
                      caption: str | None) -> tuple[RatePoint, np.ndarray]:
    """The smallest point whose decoder's reconstruction reaches ``quality`` by ``score`` (the
    ``pipelines.target`` bisection; prints how many reconstructions it ran) and that
    reconstruction. Unreachable: one line naming the best quality reached."""
    metric, target = quality
    h, w = ref.shape[:2]
    images: dict[int, np.ndarray] = {}

    def at(i: int) -> float:
        images[i] = decoder_image(codec, points[i], caption, h, w)
        return score(ref, images[i])

    search = smallest_reaching(len(points), at, target, metric)
    n = search.evaluations
    print(f"{metric}={target:g}: {n} reconstruction{'s' * (n != 1)} (bisection over the {len(points)} rate points "
          f"of one encode)")
    if search.index is None:
        i, value = best(search.scores, metric)
        raise PipelineError(f"{metric}={target:g} is unreachable: the best reconstruction reaches {metric} {value:.4g} "
                            f"(t={points[i].timestep}, {points[i].bpp:.4f} bpp, the highest-rate point)")
    i = search.index
    below = (f" (the point below, {points[i - 1].bpp:.4f} bpp, scored {search.scores[i - 1]:.4g})"
             if i - 1 in search.scores else "")
    print(f"{metric} {search.scores[i]:.4g} at {points[i].bpp:.4f} bpp{below}")
    return points[i], images[i]


def describe(point: RatePoint, n_steps: int) -> str:
    return (f"{point.bits_total // 8} B = {point.bpp:.4f} bpp at t={point.timestep} (step {point.step_index}/{n_steps}); "
            f"bits: header {point.bits_header}, side {point.bits_side:.0f}, payload {point.bits_payload:.0f}; "
            f"sum KL {point.kl_bits:.0f} bits, delivered {point.delivered_bits:.0f} bits")


@one_line_errors
def compress(cfg: DictConfig) -> None:
    require(cfg, "input", "output")
    check_writable(cfg.output)
    if cfg.recon_output:
        check_writable(cfg.recon_output, what="recon_output")
    # torch comes in only now: a bad output is refused in about a second, before any heavy import
    from .captions import resolve_caption
    from .datasets import as_uint8, read_image, to_tensor

    image = read_image(cfg.input, cfg.alpha, cfg.frame, cfg.max_pixels)
    codec = build_codec(cfg, deterministic=cfg.deterministic)
    codec.record_provenance = bool(cfg.provenance)
    quality = quality_target(cfg)
    stops = stop_timesteps(codec, cfg.timestep, cfg.bpp, quality)
    score = quality_scorer(quality[0]) if quality is not None else None  # refused before the encode if missing
    x = to_tensor(image)
    caption = resolve_caption(cfg.caption, as_uint8(image), cfg.get("captioner")) or None  # auto: a BLIP-2 caption
    try:
        max_bits = None if cfg.bpp is None else cfg.bpp * image.shape[0] * image.shape[1]
        result = codec.encode(x, stop_timesteps=stops, caption=caption, progress=cfg.progress, max_bits=max_bits)
    except ValueError as exc:  # image too large, bad caption...
        raise PipelineError(str(exc)) from exc
    recon: np.ndarray | None = None
    if quality is not None:
        point, recon = choose_by_quality(codec, result.points, quality, score, as_uint8(image), caption)
    else:
        point = choose_point(result.points, cfg.bpp)
    recon_png = None
    if cfg.recon_output:  # as the decoder reconstructs: in its deterministic context (DiffcCodec.decode)
        if recon is None:
            recon = decoder_image(codec, point, caption, *image.shape[:2])
        recon_png = png_bytes(recon)
    atomic_write(cfg.output, point.data)
    if recon_png is not None:
        atomic_write(cfg.recon_output, recon_png)
    if cfg.caption == "auto":
        print(f"caption (auto): {caption!r}")
    print(f"{Path(cfg.output)}: {describe(point, len(codec.timesteps) - 1)}; "
          f"encode {result.encode_s:.1f} s (CPU {result.encode_cpu_s:.1f} s)")
    for note in notes(image, point):
        print(f"note: {note}", file=sys.stderr)


#: above this share of the file, the container (header) dominates an image's bpp
HEADER_DOMINATES = 0.5


def notes(image, point: RatePoint) -> list[str]:
    """What a user should know about this file beyond its numbers: the decoder's PNG is 8-bit
    when the input had more precision (16-bit or float samples; README "Compress and decompress"),
    and on a tiny image the header, not the image, sets the bpp."""
    out = []
    if image.dtype != "uint8":
        out.append("the input has 16-bit or float samples: it is coded at that precision, but decompress "
                   "writes an 8-bit PNG")
    if point.bits_header > HEADER_DOMINATES * point.bits_total:
        out.append(f"the image is {point.width}x{point.height}: the container ({point.bits_header} header bits) is "
                   f"{point.bits_header / point.bits_total:.0%} of the file, so its bpp says little about the codec")
    return out


if __name__ == "__main__":
    cli.main(compress, "compress", verbatim=("input", "output", "recon_output", "caption", "model.options.path",
                                            "model.options.params_path", "captioner.options.path"),
             config_dir=CONF_DIR)
