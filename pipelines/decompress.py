"""Decompress a .diffc file into a PNG.

    python -m pipelines.decompress input=kodim01.diffc output=kodim01.png

The backbone is the one named in the file's header, loaded once with the options of
``conf/model/<name>.yaml`` resolved for the header's parity (``project``, or ``reference`` for a
file a paper_* experiment wrote; ``parity=`` overrides it); ``options.*`` override the loading
options (a local weights path, the device). Every codec parameter, the channel's included
(``diffc.plugins``), comes from the header: nothing is guessed. A file written with other weights
or parameters is refused (fingerprint mismatch): the decoder could only produce garbage from it.
``max_pixels`` (default 2^24) refuses a file claiming a larger image before anything is allocated.

``options.*`` left unset (``???``) keep the model config's value; null is a value
(``options.refiner_hub_id=null``). The header does not say whether an SDXL file was encoded
with the refiner, its fingerprint does: the base is loaded without the refiner first, and the
refiner (``refiner_hub_id`` / ``refiner_path``) attached to it only when the base alone does not
match, so a file encoded with ``model.options.refiner_hub_id=null`` decodes where no refiner is installed.

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
from analysis.errors import describe
from diffc import format as fmt
from diffc.codec import DiffcCodec, params_from_header
from diffc.determinism import DESYNC_PSNR_DB, desynchronised, drift_psnr_db

from .common import (CONF_DIR, PARITY, PipelineError, atomic_write, check_writable, given_options, load_model,
                     model_config, one_line_errors, plain, png_bytes, require)
from .datasets import read_image, to_tensor, to_uint8


#: loading options of a part that ``matching_codec`` loads only when the file's fingerprint needs it
DEFERRED = {"refiner_hub_id": "hub_id", "refiner_revision": "revision", "refiner_path": "path"}


def decompress_keys(message: str) -> str:
    """A loader's message with decompress's option keys: the loaders name compress's ``model.options.X``,
    decompress takes ``options.X``."""
    return message.replace("model.options.", "options.")


def matching_codec(model: DictConfig, header: fmt.Header, cfg: DictConfig) -> DiffcCodec:
    """The codec of ``model`` with the command's options and the file's parameters (the header's, as
    one object); for SDXL with a refiner, loaded without it first and with it (``attach_refiner``)
    only when the base alone does not match the file's fingerprint. The caller checks the final
    fingerprint."""
    params = params_from_header(header)
    options = plain(model.options) | given_options(cfg.options)
    present = [k for k in DEFERRED if k in options]
    deferred = {DEFERRED[k]: options[k] for k in present}
    if deferred.get("hub_id") is None:  # no refiner: the options as given (the loader refuses a stray path)
        return DiffcCodec(load_model(model, options), params, deterministic=bool(cfg.deterministic))
    codec = DiffcCodec(load_model(model, options | dict.fromkeys(present)), params,
                       deterministic=bool(cfg.deterministic))
    if codec.fingerprint() != header.fingerprint:
        try:
            codec.backbone.attach_refiner(**deferred, compile=bool(options.get("compile")))
        except Exception as exc:  # missing weights, bad values: one line
            raise PipelineError(f"model {model.name}: {describe(exc)}") from exc
    return codec


def load_codec(header: fmt.Header, cfg: DictConfig) -> DiffcCodec:
    """The codec that decodes this file, with one backbone load: the backbone the header names, with
    the model config resolved for the header's parity (``cfg.parity`` null) or ``cfg.parity``;
    refused in one line when its fingerprint does not match the file's (naming what to pass)."""
    parity = cfg.parity or header.parity
    if parity not in PARITY:
        raise PipelineError(f"parity must be one of {', '.join(PARITY)} or null (the file's), got {parity!r}")
    try:
        codec = matching_codec(model_config(header.backbone, parity), header, cfg)
    except PipelineError as exc:  # the loaders name compress's keys
        raise PipelineError(decompress_keys(str(exc))) from exc
    if codec.fingerprint() == header.fingerprint:
        return codec
    raise PipelineError(f"{cfg.input}: file fingerprint {header.fingerprint.hex()} does not match "
                        f"{header.backbone!r} with its {parity} settings ({codec.fingerprint().hex()}): "
                        f"{mismatch_hint(codec.backbone)}")


def mismatch_hint(backbone) -> str:
    """What can differ for this backbone between the encoder's load and this one, and the option
    that decodes with the encoder's: the fingerprint hashes the backbone's ``config()``."""
    if backbone.name == "gaussian":  # config(): the prior file's sha256 and the beta schedule
        return (f"the file was encoded with another Gaussian prior than {backbone.params_path} (sha256 "
                f"{backbone.config()['params_sha256']}; a refit differs in its last bits): decode with "
                "options.params_path=F, the .npz it was compressed with (model.options.params_path=F), or with the "
                "beta schedule it used (+options.beta_schedule=, +options.beta_start=, +options.beta_end=)")
    refiner = (" options.refiner_hub_id=null (encoded without the refiner), options.refiner_path=DIR,"
               if backbone.name == "sdxl" else "")
    return ("the file was encoded with other weights or model options: decode with the encoder's: options.KEY=VALUE, "
            f"e.g. options.path=DIR (other local weights), options.revision=REV,{refiner} "
            "+options.KEY=VALUE for the model options conf/decompress.yaml does not list (e.g. +options.guidance=2)")


@one_line_errors
def decompress(cfg: DictConfig) -> None:
    require(cfg, "input", "output")
    check_writable(cfg.output)
    if cfg.latent_output:
        check_writable(cfg.latent_output, what="latent_output")
    data = Path(cfg.input).read_bytes()
    header, _ = fmt.read(data, cfg.max_pixels)
    codec = load_codec(header, cfg)
    result = codec.decode(data, progress=cfg.progress, max_pixels=cfg.max_pixels, recon=cfg.recon,
                          recon_steps=cfg.recon_steps, recon_grid=cfg.recon_grid, recon_guidance=cfg.recon_guidance)
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
    cli.main(decompress, "decompress", verbatim=("input", "output", "latent_output", "recon_reference", "options.path",
                                                "options.refiner_path", "options.vae_path", "options.params_path"),
             config_dir=CONF_DIR)
