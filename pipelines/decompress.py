"""Decompress a .diffc file into a PNG.

    python -m pipelines.decompress input=kodim01.diffc output=kodim01.png

The backbone is the one named in the file's header, loaded with the options of
``conf/model/<name>.yaml`` (``options.*`` overrides them: a local weights path, the device);
every codec parameter comes from the header. A file written with other weights or parameters is
refused (fingerprint mismatch): the decoder could only produce garbage from it.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from omegaconf import DictConfig

from analysis import cli
from diffc import format as fmt
from diffc.codec import params_from_header

from .common import atomic_write, build_codec, model_config, one_line_errors, png_bytes, require
from .datasets import to_uint8


@one_line_errors
def decompress(cfg: DictConfig) -> None:
    require(cfg, "input", "output")
    data = Path(cfg.input).read_bytes()
    header, _ = fmt.read(data)
    params = params_from_header(header)
    codec = build_codec(model_config(header.backbone), vars(params), cfg.options)
    result = codec.decode(data, progress=cfg.progress, recon=cfg.recon, recon_steps=cfg.recon_steps)
    png = png_bytes(to_uint8(result.image))
    latent = None
    if cfg.latent_output:
        buf = io.BytesIO()
        torch.save(result.x_t.cpu(), buf)
        latent = buf.getvalue()
    atomic_write(cfg.output, png)
    if latent is not None:
        atomic_write(cfg.latent_output, latent)
    print(f"{Path(cfg.output)}: {header.width}x{header.height} from {header.backbone} at t={result.timestep} "
          f"({header.n_steps} steps, {len(data)} B = {len(data) * 8 / (header.width * header.height):.4f} bpp); "
          f"decode {result.decode_s:.1f} s")


if __name__ == "__main__":
    cli.main(decompress, "decompress", verbatim=("input", "output", "latent_output", "options.path"))
