"""The codec's parameters: one typed value, the same for the config, the header, the fingerprint
and the codec (``diffc.codec``).

``CodecParams`` = the chain's ``schedule`` (encoding timesteps, ``diffc.schedule``) and ``seed``
(shared randomness), the ``channel``'s spec (``diffc.plugins.ChannelSpec``: PFR by default,
``diffc.rcc.spec.PfrSpec``), the ``recon``struction (``diffc.recon.Recon``) and the ``parity``
the backbone's config was resolved with. Each part validates itself once, in its own
``__post_init__``; the commands build it from the composed ``codec`` config in one call
(``pipelines.codec_config.codec_params``), the decoder from a header (``diffc.codec.params_from_header``).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import format as fmt
from .checks import checked_int
from .plugins import ChannelSpec
from .rcc.spec import PfrSpec
from .recon import Recon


@dataclass(frozen=True)
class CodecParams:
    """Everything besides the backbone that the decoder needs (all of it goes in the header).

    ``schedule`` and ``seed`` (the chain's) and ``channel`` are in the fingerprint; ``recon`` (how a
    decoder reconstructs an image) and ``parity`` (which of the model config's settings the backbone
    was loaded with, ``project`` | ``reference``; the backbone's config covers what it changes) are in
    the header only."""

    schedule: str = "paper"
    seed: int = 0
    channel: ChannelSpec = PfrSpec()
    recon: Recon = Recon()
    parity: str = "project"

    def __post_init__(self):
        checked_int("seed", self.seed, 0, 2**32 - 1)
        if not isinstance(self.schedule, str):
            raise ValueError(f"schedule must be a schedule name, got {self.schedule!r}")
        if self.parity not in fmt.PARITIES:
            raise ValueError(f"parity must be one of {fmt.PARITIES}, got {self.parity!r}")
        if not isinstance(self.channel, ChannelSpec) or not isinstance(self.recon, Recon):
            raise TypeError("channel must be a ChannelSpec and recon a Recon")

    def fingerprint_fields(self) -> dict:
        """What the file fingerprint covers of these parameters: the chain's and the channel's (not
        the reconstruction, not the parity)."""
        return {"schedule": self.schedule, "seed": self.seed, "channel": self.channel.name,
                **self.channel.fingerprint_fields()}
