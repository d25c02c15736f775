"""Compress one image into a .diffc file.

    python -m pipelines.compress model=gaussian input=kodim01.png output=kodim01.diffc timestep=300
    python -m pipelines.compress model=sd15 input=kodim01.png output=kodim01.diffc bpp=0.1

The bitrate is set by how far down the diffusion chain the encoder sends x_t: ``timestep=T``
stops at the largest schedule timestep <= T; ``bpp=B`` encodes once (progressively) and keeps the
highest-rate point whose real file is at most B bits per pixel. bpp = file bytes x 8 / (W x H) of
the original image: header, side information, indices and caption included.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from analysis import cli

from .common import PipelineError, atomic_write, build_codec, check_writable, one_line_errors, png_bytes, require

if TYPE_CHECKING:
    from diffc.codec import DiffcCodec, RatePoint


def stop_timesteps(codec: DiffcCodec, timestep: int | None, bpp: float | None) -> list[int]:
    """Timesteps to encode: the one asked for, or every step of the schedule (bpp mode: the
    encoder stops after the first step whose file exceeds the target)."""
    if (timestep is None) == (bpp is None):
        raise PipelineError("give exactly one of timestep=T (stop timestep) or bpp=B (target bits per pixel)")
    if bpp is not None:
        if not bpp > 0:
            raise PipelineError(f"bpp must be > 0, got {bpp}")
        return codec.timesteps[1:]
    if isinstance(timestep, bool) or not isinstance(timestep, int) and not str(timestep).lstrip("-").isdigit():
        raise PipelineError(f"timestep must be an integer stop timestep (e.g. timestep=300), got {timestep!r}")
    try:
        codec.stop_step_for(int(timestep))
    except ValueError as exc:
        raise PipelineError(str(exc)) from exc
    return [int(timestep)]


def choose_point(points: list[RatePoint], bpp: float | None) -> RatePoint:
    """The single requested point, or the highest-rate point within the target bpp."""
    if bpp is None:
        return points[-1]
    fits = [p for p in points if p.bpp <= bpp]
    if not fits:
        raise PipelineError(f"no rate point within {bpp:g} bpp: the smallest file is {points[0].bpp:.4f} bpp "
                            f"(header alone: {points[0].bits_header / (points[0].width * points[0].height):.4f} bpp)")
    return fits[-1]


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
    from .datasets import as_uint8, read_image, to_tensor, to_uint8

    image = read_image(cfg.input, cfg.alpha, cfg.frame, cfg.max_pixels)
    codec = build_codec(cfg.model, cfg.codec, deterministic=cfg.deterministic, parity=cfg.get("parity"))
    stops = stop_timesteps(codec, cfg.timestep, cfg.bpp)
    x = to_tensor(image)
    caption = resolve_caption(cfg.caption, as_uint8(image), cfg.get("captioner")) or None  # auto: a BLIP-2 caption
    try:
        max_bits = None if cfg.bpp is None else cfg.bpp * image.shape[0] * image.shape[1]
        result = codec.encode(x, stop_timesteps=stops, caption=caption, progress=cfg.progress, max_bits=max_bits)
    except ValueError as exc:  # image too large, bad caption...
        raise PipelineError(str(exc)) from exc
    point = choose_point(result.points, cfg.bpp)
    recon_png = None
    if cfg.recon_output:  # as the decoder reconstructs: in its deterministic context (DiffcCodec.decode)
        from diffc.determinism import deterministic
        from diffc.format import read

        h, w = image.shape[:2]
        with deterministic(codec.decode_threads(read(point.data)[0])):
            cond = codec.backbone.condition(caption)
            recon_png = png_bytes(to_uint8(codec.reconstruct(point.x_t, point.timestep, h, w, cond)))
    atomic_write(cfg.output, point.data)
    if recon_png is not None:
        atomic_write(cfg.recon_output, recon_png)
    if cfg.caption == "auto":
        print(f"caption (auto): {caption!r}")
    print(f"{Path(cfg.output)}: {describe(point, len(codec.timesteps) - 1)}; encode {result.encode_s:.1f} s")
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
                                            "model.options.params_path", "captioner.options.path"))
