"""Decompress a .diffc file into a PNG.

    python -m pipelines.decompress input=kodim01.diffc output=kodim01.png

The backbone is the one named in the file's header, loaded with the options of
``conf/model/<name>.yaml`` (``options.*`` overrides them: a local weights path, the device);
every codec parameter comes from the header. ``parity=auto`` (the default) loads the model's
project settings, or its reference settings (``parity=reference``, what paper_* experiments use)
when the file's fingerprint says so. A file written with other weights or parameters is
refused (fingerprint mismatch): the decoder could only produce garbage from it.

``recon_reference=ENCODER.png`` (the reconstruction the encoder's side made, e.g. a sweep's saved
PNG) reports the drift: the PSNR between it and this decode (inf = identical; below 30 dB the
decoder desynchronised, and the command fails after writing nothing).
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from analysis import cli
from diffc import format as fmt
from diffc.codec import params_from_header
from diffc.determinism import DESYNC_PSNR_DB, desynchronised, drift_psnr_db

from .common import (PARITY, PipelineError, atomic_write, build_codec, check_writable, model_config, one_line_errors,
                     png_bytes, require)
from .datasets import read_image, to_tensor, to_uint8


@one_line_errors
def decompress(cfg: DictConfig) -> None:
    require(cfg, "input", "output")
    check_writable(cfg.output)
    if cfg.latent_output:
        check_writable(cfg.latent_output, what="latent_output")
    data = Path(cfg.input).read_bytes()
    header, _ = fmt.read(data)
    params = params_from_header(header)
    # auto: the settings the file most likely comes from first (paper_* files reconstruct on the
    # reference grid), so a backbone is loaded twice only when the guess is wrong
    guess = sorted(PARITY, key=lambda p: p != ("reference" if header.recon_grid == "reference" else "project"))
    for parity in guess if cfg.parity == "auto" else (cfg.parity,):
        codec = build_codec(model_config(header.backbone, parity), vars(params), cfg.options, cfg.deterministic)
        if codec.fingerprint() == header.fingerprint:
            break  # else (auto): the file may come from the other settings
    result = codec.decode(data, progress=cfg.progress, recon=cfg.recon, recon_steps=cfg.recon_steps,
                          recon_grid=cfg.recon_grid)
    if result.drift_warning:  # the encoder's setting differs from this one: say so (decoding still syncs)
        print(f"note: {result.drift_warning}", file=sys.stderr)
    drift = None
    if cfg.recon_reference:
        ref = read_image(Path(cfg.recon_reference))
        if ref.shape[:2] != (header.height, header.width):
            raise PipelineError(f"recon_reference {cfg.recon_reference} is {ref.shape[1]}x{ref.shape[0]}, "
                                f"the file decodes to {header.width}x{header.height}")
        drift = drift_psnr_db(to_tensor(ref), to_tensor(to_uint8(result.image)))
        if desynchronised(drift):
            raise PipelineError(f"the decoder desynchronised: {drift:.1f} dB from {cfg.recon_reference} "
                                f"(below {DESYNC_PSNR_DB:g} dB)")
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
          f"decode {result.decode_s:.1f} s" + ("" if drift is None else f"; drift vs {cfg.recon_reference}: "
                                                f"{drift:.2f} dB PSNR (inf = identical)"))


if __name__ == "__main__":
    cli.main(decompress, "decompress", verbatim=("input", "output", "latent_output", "recon_reference", "options.path"))
