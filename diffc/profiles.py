"""The shipped backbones' codec defaults: a header's *profile* (``diffc.format``, docs/format.md).

A .diffc file whose codec parameters equal its backbone's profile writes none of them, so these
values are part of the format: the decoder reads them from here, never from a config file a user
may edit. The configs state the same values for the commands (``conf/codec/profile/*.yaml`` and
``conf/codec/tune/*.yaml``, picked by each ``conf/model/<name>.yaml``), and ``tests/test_configs.py``
checks that the composed ``codec`` of every model and parity equals its profile here. Changing a
value changes what old default-profile files mean (the fingerprint refuses those whose x_t
changes; a changed reconstruction default needs a format version bump).
"""
from __future__ import annotations

from dataclasses import replace

from .params import CodecParams
from .rcc.spec import PfrSpec
from .recon import Recon

_GAUSSIAN = CodecParams("geom-30", channel=PfrSpec(8, 2, skip_kl=0.001), recon=Recon("denoise", 20))
_REAL = CodecParams("paper", channel=PfrSpec(12, 2), recon=Recon("ode", 50))
_FLOW = replace(_REAL, schedule="paper-flux")
_TINY = CodecParams("geom-12", channel=PfrSpec(8, 2), recon=Recon("ode", 4))

#: the codec defaults of each backbone with an id (``diffc.backbone.BACKBONE_IDS``), project parity
PROFILES: dict[str, CodecParams] = {
    "gaussian": _GAUSSIAN, "sd15": _REAL, "sd21": _REAL, "sdxl": _REAL, "flux-dev": _FLOW,
    "sd35-medium": _FLOW, "ddpm-church": _REAL, **{f"tiny-{n}": _TINY for n in ("sd15", "sd21", "sdxl", "flux",
                                                                                "sd35-medium", "ddpm")}}
#: the reconstruction grid per parity (docs/parity.md): the one codec default the parities change
RECON_GRID = {"project": "uniform", "reference": "reference"}


def profile_params(backbone: str, parity: str = "project") -> CodecParams:
    """``backbone``'s profile under ``parity``; ``CodecParams(parity=parity)`` for a backbone without one."""
    p = PROFILES.get(backbone)
    if p is None:
        return CodecParams(parity=parity)
    return replace(p, recon=replace(p.recon, grid=RECON_GRID[parity]), parity=parity)
