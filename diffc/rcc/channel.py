"""DiffC's reverse-channel coder as a channel (``diffc.plugins``), with i.i.d. or sparse-sum
candidates: each is a ``ChannelSpec`` (parameters, validation, header bytes) and the channel it
makes. The DDCM peers are ``diffc.codebook``.

``PfrChannel`` is the codec's coder (docs/design.md §1): the step's KL sets a chunk count
n = ceil(KL / chunk_bits) (side information); the decoder-side plan (``Chain.plan``) cuts the
latent into n chunks; a chunk whose real KL exceeds ``split_above`` x chunk_bits is sent in
ceil(KL_c / chunk_bits) parts (``diffc.rcc.pfr``); each chunk's PFR index among
K = 2^(chunk_bits + padding_bits) candidates (i.i.d. hashed normals, ``PfrSpec``, or sparse sums of
a per-step atom bank, ``SparseSumSpec`` and ``diffc.rcc.sparse_sum``) is range-coded
(``diffc.rcc.entropy``). Both sides set x_t' = mu_p + std z with z regenerated from the indices by the
same function, so the decoder's state is bit-identical to the encoder's on the same platform.

Units: KL and code lengths in bits; ``delivered`` = log2 q/p(sent sample) in bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .. import format as fmt
from ..chain import LN2, Chain, Step
from ..checks import checked_int
from .entropy import StepDecoder, StepEncoder, StepSymbols, StreamCost, count_bound
from .pfr import ChunkPlan, chunk_sums, decode_chunks, encode_chunks, split_parts
from ..plugins import ChannelSpec, Search, StepRecord, register_channel
from .randomness import normals
from .sparse_sum import MAX_ATOMS as MAX_BANK, MAX_M, SparseSum


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
        return PfrChannel(self, n_dims, payload, search)

    @property
    def num_candidates(self) -> int:
        return 1 << (self.chunk_bits + self.padding_bits)

    @property
    def split_min(self) -> int:
        """Fewest parts of a split chunk (KL > split_above x chunk_bits): floor(split_above) + 1; 0 = off."""
        return int(self.split_above) + 1 if self.split_above else 0

    def encode(self, u_coded: torch.Tensor, plan: ChunkPlan, key: int, search: Search = Search()) -> torch.Tensor:
        """The PFR index of every chunk (int64 [chunks], on u's device)."""
        return encode_chunks(u_coded, plan, self.num_candidates, key, block_entries=search.block_entries,
                             compile=search.compile)

    def decode(self, idx: torch.Tensor, plan: ChunkPlan, key: int, device: torch.device | str) -> torch.Tensor:
        """The selected candidates (float32 [positions] in coding order), regenerated alone."""
        return decode_chunks(idx, plan, key, device)

    def chunk_count(self, kl_bits: float, n_dims: int) -> int:
        """Chunks of a step carrying ``kl_bits`` of KL: ceil(KL / chunk_bits), within the count
        model's support (``diffc.rcc.entropy.count_bound``)."""
        return int(min(max(1, math.ceil(kl_bits / self.chunk_bits)), count_bound(n_dims)))

    def split(self, plan: ChunkPlan, u: torch.Tensor) -> tuple[torch.Tensor, ChunkPlan]:
        """The encoder's split of heavy chunks: (parts per chunk of ``plan``, the split plan on u's
        device), from each chunk's real KL = |u_c|^2 / 2 (``diffc.rcc.pfr.split_parts``). ``plan`` is on
        the CPU, as ``Chain.plan`` makes it: it is copied to the device once (twice when chunks
        split: the split is made on the CPU), and the one host read is the chunks' KL."""
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
        self.generator  # noqa: B018  raises ValueError on a bad atom bank

    def to_bytes(self) -> bytes:
        return super().to_bytes() + fmt.varint(self.atoms) + fmt.varint(self.sparse_m)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChannelSpec:
        """The 4 PFR bytes, then K_a and M (varints)."""
        pfr = PfrSpec.from_bytes(data[:PFR_BYTES])
        r = fmt.Reader(data[PFR_BYTES:])
        atoms, sparse_m = r.varint("atom bank", MAX_BANK), r.varint("sparse_m", MAX_M)
        if r.pos != len(data) - PFR_BYTES:
            raise ValueError(f"{len(data) - PFR_BYTES - r.pos} stray bytes after the {cls.name} parameters")
        return cls(pfr.chunk_bits, pfr.padding_bits, pfr.split_above, atoms, sparse_m, skip_kl=pfr.skip_kl)

    @property
    def generator(self) -> SparseSum:
        return SparseSum(self.atoms, self.sparse_m)

    def decode_entries(self, n_dims: int) -> int:
        return self.sparse_m * n_dims  # M atom entries per position

    def encode(self, u_coded: torch.Tensor, plan: ChunkPlan, key: int, search: Search = Search()) -> torch.Tensor:
        return self.generator.encode_chunks(u_coded, plan, self.num_candidates, key,
                                            block_entries=search.block_entries, compile=search.compile)

    def decode(self, idx: torch.Tensor, plan: ChunkPlan, key: int, device: torch.device | str) -> torch.Tensor:
        return self.generator.decode_chunks(idx, plan, key, device)


@dataclass
class PfrStepRecord(StepRecord):
    """What the encoder did at one step (bits; per-chunk arrays in coding order, after splitting)."""

    n_chunks: int  # chunk count sent (side information)
    plan_chunks: int  # non-empty chunks of the plan before splitting
    symbols: StepSymbols
    chunk_kl_bits: torch.Tensor  # float64 [indices]
    chunk_delivered_bits: torch.Tensor  # float64 [indices]
    chunk_dims: torch.Tensor  # int64 [indices]: positions per chunk
    prior_kl_bits: float = 0.0  # KL of the entries sent as a prior sample (not transmitted)
    prior_delivered_bits: float = 0.0  # their log2 q/p (part of delivered_bits; -prior_kl_bits on average)

    @property
    def n_indices(self) -> int:
        return int(self.symbols.indices.size)


class PfrChannel:
    """PFR over a decoder-side chunk plan. Encoder: ``PfrChannel(spec, n_dims)`` then
    ``send`` per step; ``stream()`` range-codes the steps sent so far (incrementally: each call
    seals a copy of the running coder). Decoder: ``PfrChannel(spec, n_dims, payload)``; it
    range-codes what it receives too, so ``stream()`` is the payload those steps make (the codec
    refuses a file whose payload is anything else: trailing data)."""

    def __init__(self, settings: PfrSpec, n_dims: int, payload: bytes | None = None, search: Search = Search()):
        self.settings = settings
        self.options = search
        self.max_chunks = count_bound(n_dims)
        self.records: list[PfrStepRecord] = []
        s = settings
        self._encoder = StepEncoder(s.num_candidates, s.chunk_bits, self.max_chunks, s.split_min)
        self._decoder = None
        self._payload_bytes = 0 if payload is None else len(payload)
        if payload is not None:
            try:
                self._decoder = StepDecoder(payload, s.num_candidates, s.chunk_bits, s.split_min)
            except ValueError as e:
                raise fmt.CorruptFile(e) from None

    # ---- the search (overridable: benchmarks/coding_efficiency.py simulates it) ---------------
    def search(self, u_coded: torch.Tensor, plan: ChunkPlan, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices int64 [chunks], the chosen candidates float32 [positions] in coding order)."""
        idx = self.settings.encode(u_coded, plan, key, self.options)
        return idx, self.settings.decode(idx, plan, key, u_coded.device)

    @staticmethod
    def _z(chain: Chain, step: Step, plan: ChunkPlan, z_coded: torch.Tensor) -> torch.Tensor:
        """The step's flattened z: split parts summed, the plan's ``prior`` entries set to a sample
        of N(0, 1) from shared randomness (``Chain.prior_key``; the same function on both sides)."""
        z = plan.combine(z_coded, step.x.numel())
        if plan.prior is not None:
            cols = plan.prior.to(z.device, torch.int32)
            z[plan.prior.to(z.device)] = normals(chain.prior_key(step.k), torch.zeros(1, dtype=torch.int32,
                                                                                      device=z.device), cols)
        return z

    # ---- encoder ------------------------------------------------------------------------------
    def send(self, chain: Chain, step: Step) -> torch.Tensor:
        s = self.settings
        kl_bits = step.kl_bits
        coded = chain.coded_entries(step, s.skip_kl)
        u_flat = step.u.flatten()
        coded_kl = kl_bits if coded is None else float(u_flat[coded.to(u_flat.device)].double().square().sum()) / 2 / LN2
        n_chunks = s.chunk_count(coded_kl, step.x.numel())
        plan = chain.plan(step, n_chunks, coded)
        plan_chunks = plan.n_chunks
        parts, plan = s.split(plan, step.u)  # on the device from here: search, sums, combine
        u_coded = plan.coded(step.u)
        idx, z = self.search(u_coded, plan, chain.step_key(step.k))
        u64 = u_coded.double()
        chunk_kl = chunk_sums(0.5 * u64 * u64, plan) / LN2
        chunk_deliv = chunk_sums(z.double() * u64 - 0.5 * u64 * u64, plan) / LN2
        symbols = StepSymbols(n_chunks, idx.cpu().numpy().astype(np.int32),
                              parts.numpy().astype(np.int32) if s.split_min else None)
        self._encoder.push(symbols)
        z_full = self._z(chain, step, plan, z)
        prior_deliv = 0.0
        if plan.prior is not None:  # log q/p of the prior sample: its KL is not sent (-KL on average)
            pi = plan.prior.to(u_flat.device)
            up, zp = u_flat[pi].double(), z_full[pi].double()
            prior_deliv = float((zp * up - 0.5 * up * up).sum()) / LN2
        self.records.append(PfrStepRecord(kl_bits, float(chunk_deliv.sum()) + prior_deliv, n_chunks, plan_chunks,
                                          symbols, chunk_kl, chunk_deliv,
                                          torch.bincount(plan.chunk_of, minlength=plan.n_chunks),
                                          kl_bits - coded_kl, prior_deliv))
        return step.sample(z_full)

    def stream(self) -> tuple[bytes, StreamCost]:
        """The range-coded payload of the steps sent so far and its ideal cost split."""
        return self._encoder.seal()

    # ---- decoder ------------------------------------------------------------------------------
    def receive(self, chain: Chain, step: Step) -> torch.Tensor:
        if self._decoder is None:
            raise TypeError("this PfrChannel was made for encoding (no payload)")
        dec = self._decoder
        try:
            n_chunks = dec.next_count(self.max_chunks)
            plan = chain.plan(step, n_chunks, chain.coded_entries(step, self.settings.skip_kl))
            parts = dec.next_parts(plan.n_chunks, self.max_chunks)
            plan = plan.split_chunks(torch.from_numpy(parts)).to(step.x.device)  # split on the CPU, moved once
            idx = torch.from_numpy(dec.next_indices(plan.n_chunks))
            self._encoder.push(StepSymbols(n_chunks, idx.numpy().astype(np.int32),
                                           parts.astype(np.int32) if self.settings.split_min else None))
            if self._encoder.min_bytes() > self._payload_bytes:
                raise ValueError(f"the {self._payload_bytes}-byte payload ends before this step")
        except (ValueError, RuntimeError) as e:
            raise fmt.CorruptFile(f"payload does not decode at step {step.k} ({e})") from None
        z = self.settings.decode(idx, plan, chain.step_key(step.k), step.x.device)
        return step.sample(self._z(chain, step, plan, z))
