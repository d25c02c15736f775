"""Compress one image into a .diffc file.

    python -m pipelines.compress model=gaussian input=kodim01.png output=kodim01.diffc timestep=300
    python -m pipelines.compress model=sd15 input=kodim01.png output=kodim01.diffc bpp=0.1
    python -m pipelines.compress model=gaussian input=kodim01.png output=kodim01.diffc psnr=24

The bitrate is set by how far down the diffusion chain the encoder sends x_t: ``timestep=T``
stops at the largest schedule timestep <= T; ``bpp=B`` encodes once (progressively) and keeps the
highest-rate point whose real file is at most B bits per pixel; ``psnr=X`` / ``ms_ssim=X`` /
``lpips=X`` encodes once and keeps the smallest point whose decoder's reconstruction reaches the
quality, found by bisection over the stops (``pipelines.target``: about log2 of the schedule's
length reconstructions). These shorthands fill the ``bitrate`` group that evaluate shares
(conf/bitrate/compress.yaml); ``bitrate=NAME bitrate.KEY=...`` works too when it names one file.
bpp = file bytes x 8 / (W x H) of the original image: header, side
information, indices and caption included.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf

from analysis import cli

from .common import (CONF_DIR, PipelineError, atomic_write, build_codec, check_writable, one_line_errors, png_bytes,
                     require)
from .target import TARGET_METRICS, QualitySearch, Request, decoder_image, quality_scorer, request

if TYPE_CHECKING:
    from diffc.codec import RatePoint


#: compress's shorthands -> the bitrate group's keys they fill (conf/bitrate/compress.yaml)
SHORTHANDS: dict[str, str] = {"timestep": "stop_timesteps", "bpp": "bpp", **{m: m for m in TARGET_METRICS}}


#: compress's ways to ask for a rate, as its errors list them
CHOICES = ("timestep=T (stop timestep), bpp=B (target bits per pixel) or a target quality "
           f"({', '.join(f'{m}=X' for m in TARGET_METRICS)})")


def rate_request(cfg: DictConfig) -> Request:
    """compress's request: its bitrate group (``pipelines.target.request``), which the shorthands
    fill; it must name ONE file: one stop timestep, one bpp budget or one quality target."""
    given = {k: cfg.get(k) for k in SHORTHANDS if cfg.get(k) is not None}
    for k, v in given.items():
        if not OmegaConf.is_interpolation(cfg.bitrate, SHORTHANDS[k]):
            raise PipelineError(f"{k}={v} fills bitrate.{SHORTHANDS[k]} of bitrate=compress, but the command line "
                                f"chose another bitrate option or value: give bitrate.{SHORTHANDS[k]}= alone")
    if len([k for k in given if k in TARGET_METRICS]) > 1:
        raise PipelineError(f"give one target quality, got {', '.join(f'{k}={v}' for k, v in given.items())}")
    if len(given) > 1:
        raise PipelineError(f"give exactly one of {CHOICES}, got {', '.join(f'{k}={v}' for k, v in given.items())}")
    req = request(cfg.bitrate, {v: k for k, v in SHORTHANDS.items()} if given else None)
    targets = req.targets()
    if targets is None or len(targets) != 1:
        raise PipelineError(f"compress writes one file: give exactly one of {CHOICES}")
    return req


def choose_by_quality(search: QualitySearch, target: float) -> tuple[RatePoint, np.ndarray]:
    """The smallest point whose decoder's reconstruction reaches ``target`` (the ``pipelines.target``
    bisection; prints how many reconstructions it ran) and that reconstruction. Unreachable: one
    line naming the best quality reached."""
    metric, points = search.metric, search.points
    found = search.reach(target)
    n = found.evaluations
    print(f"{metric}={target:g}: {n} reconstruction{'s' * (n != 1)} (bisection over the {len(points)} rate points "
          f"of one encode)")
    if found.index is None:
        raise PipelineError(search.unreachable(target, found))
    i = found.index
    below = (f" (the point below, {points[i - 1].bpp:.4f} bpp, scored {found.scores[i - 1]:.4g})"
             if i - 1 in found.scores else "")
    print(f"{metric} {found.scores[i]:.4g} at {points[i].bpp:.4f} bpp{below}")
    return points[i], search.images[i]


def describe(point: RatePoint, n_steps: int) -> str:
    return (f"{point.bits_total // 8} B = {point.bpp:.4f} bpp at t={point.timestep} (step {point.step_index}/{n_steps}); "
            f"bits: header {point.bits_header}, side {point.bits_side:.0f}, payload {point.bits_payload:.0f}; "
            f"sum KL {point.kl_bits:.0f} bits, delivered {point.delivered_bits:.0f} bits")


@one_line_errors
def compress(cfg: DictConfig) -> None:
    require(cfg, "input", "output")
    req = rate_request(cfg)
    check_writable(cfg.output)
    if cfg.recon_output:
        check_writable(cfg.recon_output, what="recon_output")
    # torch comes in only now: a bad output is refused in about a second, before any heavy import
    from .captions import resolve_caption
    from .datasets import as_uint8, read_image, to_tensor

    image = read_image(cfg.input, cfg.alpha, cfg.frame, cfg.max_pixels)
    score = quality_scorer(req.metric) if req.metric else None  # refused before the backbone loads if missing
    codec = build_codec(cfg, deterministic=cfg.deterministic)
    codec.record_provenance = bool(cfg.provenance)
    x = to_tensor(image)
    caption = resolve_caption(cfg.caption, as_uint8(image), cfg.get("captioner")) or None  # auto: a BLIP-2 caption
    try:
        result = codec.encode(x, req.rate, caption=caption, progress=cfg.progress)
    except ValueError as exc:  # a stop below the schedule, image too large, bad caption...
        raise PipelineError(str(exc)) from exc
    recon: np.ndarray | None = None
    if req.metric:
        search = QualitySearch(codec, result.points, req.metric, score, as_uint8(image), caption)
        point, recon = choose_by_quality(search, req.quality[0])
    else:
        (point,) = result.by_target.values()
        if point is None:
            first = result.points[0]
            raise PipelineError(f"no rate point within {req.rate.bpp[0]:g} bpp: the smallest file is {first.bpp:.4f} "
                                f"bpp (header alone: {first.bits_header / (first.width * first.height):.4f} bpp)")
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
          f"encode {result.encode_s:.2f} s (CPU {result.encode_cpu_s:.2f} s)")
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
