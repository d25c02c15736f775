"""The reverse-channel coder's specs (``diffc.plugins``): DiffC's PFR coder with i.i.d. hashed-normal
candidates (``PfrSpec``) or sparse sums of a per-step atom bank (``SparseSumSpec``): parameters,
their validation and their header bytes. Standard library only at import (no torch): the configs
(``pipelines.codec_config``) are built from these classes before any model is loaded; the channel
they make, ``diffc.rcc.channel.PfrChannel``, and the generators are imported when used.

Units: KL in bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .. import format as fmt
from ..checks import checked_int
from ..plugins import ChannelSpec, Search, register_channel

if TYPE_CHECKING:
    import torch

    from .channel import PfrChannel
    from .pfr import ChunkPlan

#: most candidates per chunk: 2^(chunk_bits + padding_bits) <= 2^MAX_CANDIDATE_BITS. The index model is a
#: constriction categorical with 24-bit probabilities: 2^24 symbols leave no room for their Zipf shape (it
#: refuses to build), 2^23 code (benchmarks/fuzz_format.py limit case)
MAX_CANDIDATE_BITS = 23
MAX_PADDING_BITS = 8
#: split_above is a header byte in quarters: 0 (never split) or 1..MAX_SPLIT_ABOVE
MAX_SPLIT_ABOVE = 63.75
#: skip_kl is a header byte in thousandths: 0..MAX_SKIP_KL
SKIP_KL_UNIT = 1000
MAX_SKIP_KL = 255 / SKIP_KL_UNIT
#: header bytes of the PFR parameters (chunk_bits, padding_bits, split_above, skip_kl)
PFR_BYTES = 4
#: most atoms per sparse-sum candidate (bounds the per-candidate work and the selection hash's columns)
MAX_M = 64
#: largest atom bank (rows of the atom stream; the projection table is 4 x C x K_a bytes)
MAX_ATOMS = 1 << 20


def check_bank(atoms: int, m: int) -> None:
    """A sparse-sum bank: M = ``m`` in 1..MAX_M atoms per candidate, K_a = ``atoms`` = M x G with G a
    power of two (an atom and its sign are the low bits of one hash), at most MAX_ATOMS; else ValueError."""
    checked_int("sparse_m", m, 1, MAX_M)
    g = atoms // m
    if not m <= atoms <= MAX_ATOMS or atoms != g * m or g & (g - 1):
        raise ValueError(f"atoms must be sparse_m ({m}) x a power of two, at most {MAX_ATOMS}, got {atoms}")




@register_channel
@dataclass(frozen=True)
class PfrSpec(ChannelSpec):
    """DiffC's PFR coder with i.i.d. hashed-normal candidates: chunks of about ``chunk_bits`` bits
    of KL, K = 2^(chunk_bits + padding_bits) candidates per chunk, heavy chunks split above
    ``split_above`` x chunk_bits (0 = never; 1..63.75 in quarters). ``skip_kl``: the lightest
    entries of a step, carrying at most this fraction of its expected KL (the backbone's
    ``kl_weights``; none skipped where those are uniform), are sent as a prior sample: zero bits,
    no search (``diffc.rcc.pfr.coded_entries``; 0..0.255 in thousandths). Header: 4 bytes."""

    name: ClassVar[str] = "pfr"
    id: ClassVar[int] = 1

    chunk_bits: int = 12
    padding_bits: int = 2
    split_above: float = 2.0
    skip_kl: float = field(default=0.0, kw_only=True)  # keyword-only: subclasses' positional fields stay put

    def __post_init__(self):
        checked_int("chunk_bits", self.chunk_bits, 1, MAX_CANDIDATE_BITS)
        checked_int("padding_bits", self.padding_bits, 0, MAX_PADDING_BITS)
        if self.chunk_bits + self.padding_bits > MAX_CANDIDATE_BITS:
            raise ValueError(f"chunk_bits + padding_bits must be <= {MAX_CANDIDATE_BITS} "
                             f"(2^{MAX_CANDIDATE_BITS} candidates per chunk)")
        if not (self.split_above == 0 or 1 <= self.split_above <= MAX_SPLIT_ABOVE) or (4 * self.split_above) % 1:
            raise ValueError(f"split_above must be 0 (never split) or in 1..{MAX_SPLIT_ABOVE} in steps of 0.25")
        object.__setattr__(self, "split_above", float(self.split_above))  # 2 and 2.0: one fingerprint
        q = self.skip_kl * SKIP_KL_UNIT
        if not 0 <= self.skip_kl <= MAX_SKIP_KL or abs(q - round(q)) > 1e-6:
            raise ValueError(f"skip_kl must be in 0..{MAX_SKIP_KL} in steps of {1 / SKIP_KL_UNIT}")
        object.__setattr__(self, "skip_kl", round(q) / SKIP_KL_UNIT)

    def to_bytes(self) -> bytes:
        return bytes([self.chunk_bits, self.padding_bits, int(4 * self.split_above),
                      round(self.skip_kl * SKIP_KL_UNIT)])

    @classmethod
    def from_bytes(cls, data: bytes) -> ChannelSpec:
        if len(data) < PFR_BYTES:
            raise ValueError(f"{cls.name} parameters are {PFR_BYTES} bytes, got {len(data)}")
        if len(data) > PFR_BYTES:
            raise ValueError(f"{len(data) - PFR_BYTES} stray bytes after the {cls.name} parameters")
        return PfrSpec(chunk_bits=data[0], padding_bits=data[1], split_above=data[2] / 4,
                       skip_kl=data[3] / SKIP_KL_UNIT)

    def channel(self, n_dims: int, payload: bytes | None = None, search: Search = Search()) -> "PfrChannel":
        from .channel import PfrChannel  # torch: loaded when a channel is made, not with the spec

        return PfrChannel(self, n_dims, payload, search)

    @property
    def num_candidates(self) -> int:
        return 1 << (self.chunk_bits + self.padding_bits)

    @property
    def split_min(self) -> int:
        """Fewest parts of a split chunk (KL > split_above x chunk_bits): floor(split_above) + 1; 0 = off."""
        return int(self.split_above) + 1 if self.split_above else 0

    @property
    def generator(self) -> Any:
        """The candidate generator: ``encode_chunks`` / ``decode_chunks`` of i.i.d. hashed normals
        (the module ``diffc.rcc.pfr``)."""
        from . import pfr

        return pfr

    def encode(self, u_coded: torch.Tensor, plan: ChunkPlan, key: int, search: Search = Search()) -> torch.Tensor:
        """The PFR index of every chunk (int64 [chunks], on u's device)."""
        return self.generator.encode_chunks(u_coded, plan, self.num_candidates, key,
                                            block_entries=search.block_entries, compile=search.compile)

    def decode(self, idx: torch.Tensor, plan: ChunkPlan, key: int, device: torch.device | str) -> torch.Tensor:
        """The selected candidates (float32 [positions] in coding order), regenerated alone."""
        return self.generator.decode_chunks(idx, plan, key, device)

    def chunk_count(self, kl_bits: float, n_dims: int) -> int:
        """Chunks of a step carrying ``kl_bits`` of KL: ceil(KL / chunk_bits), within the count
        model's support (``diffc.rcc.entropy.count_bound``)."""
        from .entropy import count_bound

        return int(min(max(1, math.ceil(kl_bits / self.chunk_bits)), count_bound(n_dims)))

    def split(self, plan: ChunkPlan, u: torch.Tensor) -> tuple[torch.Tensor, ChunkPlan]:
        """The encoder's split of heavy chunks: (parts per chunk of ``plan``, the split plan on u's
        device), from each chunk's real KL = |u_c|^2 / 2 (``diffc.rcc.pfr.split_parts``). ``plan`` is on
        the CPU, as ``Chain.plan`` makes it: it is copied to the device once (twice when chunks
        split: the split is made on the CPU), and the one host read is the chunks' KL."""
        import torch

        from ..chain import LN2
        from .pfr import chunk_sums, split_parts

        on_device = plan.to(u.device)
        u_coded = on_device.coded(u)
        kl_bits = chunk_sums(0.5 * u_coded * u_coded, on_device) / LN2
        parts = split_parts(kl_bits, self.chunk_bits, self.split_above,
                            torch.bincount(plan.chunk_of, minlength=plan.n_chunks))
        split = plan.split_chunks(parts)
        return parts, on_device if split is plan else split.to(u.device)


@register_channel
@dataclass(frozen=True)
class SparseSumSpec(PfrSpec):
    """PFR with sparse-sum candidates (``diffc.rcc.sparse_sum``): a bank of ``atoms`` = K_a Gaussian atoms
    per step, ``sparse_m`` = M signed atoms per candidate. Header: the 4 PFR bytes, K_a and M."""

    name: ClassVar[str] = "sparse-sum"
    id: ClassVar[int] = 2

    atoms: int = 256
    sparse_m: int = 8

    def __post_init__(self):
        super().__post_init__()
        check_bank(self.atoms, self.sparse_m)

    def to_bytes(self) -> bytes:
        return super().to_bytes() + fmt.varint(self.atoms) + fmt.varint(self.sparse_m)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChannelSpec:
        """The 4 PFR bytes, then K_a and M (varints)."""
        pfr = PfrSpec.from_bytes(data[:PFR_BYTES])
        r = fmt.Reader(data[PFR_BYTES:])
        atoms, sparse_m = r.varint("atom bank", MAX_ATOMS), r.varint("sparse_m", MAX_M)
        if r.pos != len(data) - PFR_BYTES:
            raise ValueError(f"{len(data) - PFR_BYTES - r.pos} stray bytes after the {cls.name} parameters")
        return cls(pfr.chunk_bits, pfr.padding_bits, pfr.split_above, atoms, sparse_m, skip_kl=pfr.skip_kl)

    @property
    def generator(self) -> Any:
        """The sparse-sum generator of this bank (``diffc.rcc.sparse_sum.SparseSum``)."""
        from .sparse_sum import SparseSum

        return SparseSum(self.atoms, self.sparse_m)

    def decode_entries(self, n_dims: int) -> int:
        return self.sparse_m * n_dims  # M atom entries per position
