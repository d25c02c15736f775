"""The DDCM peers' specs (``diffc.plugins``, docs/peers.md): K = 2^codebook_bits shared noises per
step; DDCM sends one (log2 K bits), Turbo-DDCM M signed ones (ceil(log2 C(K, M)) + M bits).
Standard library only at import (no torch): the configs are built from these classes; the
channels they make are ``diffc.codebook.channel``. Units: bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..checks import checked_int
from ..plugins import ChannelSpec, Search, register_channel

if TYPE_CHECKING:
    from .channel import DdcmChannel, TurboDdcmChannel

#: largest codebook: K = 2^MAX_CODEBOOK_BITS noises per step
MAX_CODEBOOK_BITS = 24
#: most atoms Turbo-DDCM sends per step
MAX_ATOMS = 4096
#: digits of a combinatorial rank are range-coded 16 bits at a time (constriction's uniform law
#: takes at most 2^24 symbols)
RANK_DIGIT_BITS = 16


def rank_bits(num_codes: int, atoms: int) -> int:
    """Bits of the rank of an M-subset of K codes: ceil(log2 C(K, M)) (at least 1)."""
    return max(1, (math.comb(num_codes, atoms) - 1).bit_length())


@dataclass(frozen=True)
class CodebookSpec(ChannelSpec):
    """Base of the codebook channels: K = 2^codebook_bits shared noises per step."""

    codebook_bits: int = 10

    def __post_init__(self):
        checked_int(f"{self.name}.codebook_bits", self.codebook_bits, 1, MAX_CODEBOOK_BITS)

    @property
    def num_codes(self) -> int:
        return 1 << self.codebook_bits


@register_channel
@dataclass(frozen=True)
class DdcmSpec(CodebookSpec):
    """DDCM: one of K codes per step, log2 K bits. Header: codebook_bits (varint)."""

    name: ClassVar[str] = "ddcm"
    id: ClassVar[int] = 3

    @property
    def step_bits(self) -> float:
        return float(self.codebook_bits)

    def channel(self, n_dims: int, payload: bytes | None = None, search: Search = Search()) -> "DdcmChannel":
        from .channel import DdcmChannel  # torch: loaded when a channel is made, not with the spec

        return DdcmChannel(self, n_dims, payload, search)


@register_channel
@dataclass(frozen=True)
class TurboDdcmSpec(CodebookSpec):
    """Turbo-DDCM: M = ``atoms`` signed codes of K per step, ceil(log2 C(K, M)) + M bits.
    Header: codebook_bits, atoms (varints)."""

    name: ClassVar[str] = "turbo-ddcm"
    id: ClassVar[int] = 4

    atoms: int = 1

    def __post_init__(self):
        super().__post_init__()
        checked_int("turbo-ddcm.atoms", self.atoms, 1, min(MAX_ATOMS, self.num_codes))

    @property
    def step_bits(self) -> float:
        return float(rank_bits(self.num_codes, self.atoms) + self.atoms)

    def decode_entries(self, n_dims: int) -> int:
        return self.atoms * n_dims  # the M codes [D, M] regenerated per step

    def channel(self, n_dims: int, payload: bytes | None = None, search: Search = Search()) -> "TurboDdcmChannel":
        from .channel import TurboDdcmChannel

        return TurboDdcmChannel(self, n_dims, payload, search)
