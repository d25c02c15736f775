"""The shipped backbones' codec defaults: a header's *profile* (``diffc.format``, docs/format.md).

A .diffc file whose codec parameters equal its backbone's profile writes none of them, so these
values are part of the format: the decoder reads them from here, never from a config file a user
may edit. ``conf/model/<name>.yaml`` ``codec:`` states the same values for the commands, and
``tests/test_format.py`` checks that the two agree for every backbone and parity. Changing a value
here changes what old default-profile files mean (the fingerprint refuses those whose x_t changes;
a changed reconstruction default needs a format version bump).
"""
from __future__ import annotations

_GAUSSIAN = {"schedule": "geom-30", "chunk_bits": 8, "padding_bits": 2, "skip_kl": 0.03,
             "recon": "denoise", "recon_steps": 20}
_REAL = {"schedule": "paper", "chunk_bits": 12, "padding_bits": 2, "recon": "ode", "recon_steps": 50}
_FLOW = _REAL | {"schedule": "paper-flux"}
_TINY = {"schedule": "geom-12", "chunk_bits": 8, "padding_bits": 2, "recon": "ode", "recon_steps": 4}

#: codec options (``CodecParams.of``) of each backbone with an id (``diffc.backbone.BACKBONE_IDS``)
PROFILES: dict[str, dict] = {
    "gaussian": _GAUSSIAN, "sd15": _REAL, "sd21": _REAL, "sdxl": _REAL, "flux-dev": _FLOW,
    "sd35-medium": _FLOW, "ddpm-church": _REAL, **{f"tiny-{n}": _TINY for n in ("sd15", "sd21", "sdxl", "flux",
                                                                                "sd35-medium", "ddpm")}}
#: the reconstruction grid per parity (docs/parity.md): the one option the parities change
RECON_GRID = {"project": "uniform", "reference": "reference"}


def profile_options(backbone: str, parity: str = "project") -> dict | None:
    """The codec options of ``backbone``'s profile under ``parity``; None for a backbone without one."""
    if backbone not in PROFILES:
        return None
    return PROFILES[backbone] | {"recon_grid": RECON_GRID[parity], "recon_guidance": None}
