"""The built-in channels (``diffc.plugins``): DiffC's reverse-channel coder with i.i.d. or
sparse-sum candidates, and the DDCM peers. Each is a ``ChannelSpec`` (parameters, validation,
header bytes) and the channel it makes.

``PfrChannel`` is the codec's coder (docs/design.md §1): the step's KL sets a chunk count
n = ceil(KL / chunk_bits) (side information); the decoder-side plan (``Chain.plan``) cuts the
latent into n chunks; a chunk whose real KL exceeds ``split_above`` x chunk_bits is sent in
ceil(KL_c / chunk_bits) parts (``diffc.pfr``); each chunk's PFR index among
K = 2^(chunk_bits + padding_bits) candidates (i.i.d. hashed normals, ``PfrSpec``, or sparse sums of
a per-step atom bank, ``SparseSumSpec`` and ``diffc.sparse_sum``) is range-coded
(``diffc.entropy``). Both sides set x_t' = mu_p + std z with z regenerated from the indices by the
same function, so the decoder's state is bit-identical to the encoder's on the same platform.

Units: KL and code lengths in bits; ``delivered`` = log2 q/p(sent sample) in bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import constriction
import numpy as np
import torch

from . import format as fmt
from .chain import LN2, Chain, Step
from .entropy import PayloadEncoder, StepDecoder, StepEncoder, StepSymbols, StreamCost, count_bound, payload_decoder
from .pfr import ChunkPlan, chunk_sums, codebook_scores, decode_chunks, encode_chunks, split_parts
from .plugins import ChannelSpec, Search, StepRecord, register_channel
from .randomness import normals
from .sparse_sum import MAX_ATOMS as MAX_BANK, MAX_M, SparseSum


#: PFR candidate generators (the ``candidates`` option of ``codec=diffc``)
CANDIDATES = ("iid", "sparse-sum")
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
    no search (``diffc.pfr.coded_entries``; 0..0.255 in thousandths). Header: 4 bytes."""

    name: ClassVar[str] = "diffc"
    id: ClassVar[int] = 1
    extra_options: ClassVar[tuple[str, ...]] = ("candidates",)

    chunk_bits: int = 12
    padding_bits: int = 2
    split_above: float = 2.0
    skip_kl: float = field(default=0.0, kw_only=True)  # keyword-only: subclasses' positional fields stay put

    def __post_init__(self):
        if not 1 <= self.chunk_bits <= MAX_CANDIDATE_BITS or not 0 <= self.padding_bits <= MAX_PADDING_BITS:
            raise ValueError(f"chunk_bits must be in 1..{MAX_CANDIDATE_BITS} and padding_bits in 0..{MAX_PADDING_BITS}")
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

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ChannelSpec:
        """``candidates`` (iid | sparse-sum) picks this spec or ``SparseSumSpec``."""
        candidates = options.get("candidates") or "iid"
        if candidates not in CANDIDATES:
            raise ValueError(f"candidates must be one of {CANDIDATES}, got {candidates!r}")
        return (PfrSpec if candidates == "iid" else SparseSumSpec).from_fields(options)

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
        model's support (``diffc.entropy.count_bound``)."""
        return int(min(max(1, math.ceil(kl_bits / self.chunk_bits)), count_bound(n_dims)))

    def split(self, plan: ChunkPlan, u: torch.Tensor) -> tuple[torch.Tensor, ChunkPlan]:
        """The encoder's split of heavy chunks: (parts per chunk of ``plan``, the split plan on u's
        device), from each chunk's real KL = |u_c|^2 / 2 (``diffc.pfr.split_parts``). ``plan`` is on
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
    """PFR with sparse-sum candidates (``diffc.sparse_sum``): a bank of ``atoms`` = K_a Gaussian atoms
    per step, ``sparse_m`` = M signed atoms per candidate. Header: the 4 PFR bytes, K_a and M."""

    name: ClassVar[str] = "diffc-sparse-sum"
    id: ClassVar[int] = 2
    extra_options: ClassVar[tuple[str, ...]] = ()

    atoms: int = 0
    sparse_m: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ChannelSpec:
        return cls.from_fields(options)

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
                raise fmt.CorruptFile(f"corrupt .diffc file: {e}") from None

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
            raise fmt.CorruptFile(f"corrupt .diffc file: payload does not decode at step {step.k} ({e})") from None
        z = self.settings.decode(idx, plan, chain.step_key(step.k), step.x.device)
        return step.sample(self._z(chain, step, plan, z))


# ---- the peers: per-step Gaussian codebooks (docs/peers.md) -----------------------------------------
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
    """Base of the codebook channels: K = 2^codebook_bits shared noises per step. ``atoms``,
    ``candidates`` and ``sparse_m`` of a config apply to other channels: given with another value
    than a codebook channel's, they are refused."""

    codebook_bits: int = 10

    def __post_init__(self):
        if not 1 <= self.codebook_bits <= MAX_CODEBOOK_BITS:
            raise ValueError(f"codebook_bits must be in 1..{MAX_CODEBOOK_BITS} for {self.name}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ChannelSpec:
        if (options.get("candidates") or "iid") != "iid" or options.get("sparse_m"):
            raise ValueError(f"candidates / sparse_m apply to codec=diffc only, not {cls.name}")
        return cls.from_fields(options)

    @property
    def num_codes(self) -> int:
        return 1 << self.codebook_bits


@register_channel
@dataclass(frozen=True)
class DdcmSpec(CodebookSpec):
    """DDCM: one of K codes per step, log2 K bits. Header: codebook_bits (varint)."""

    name: ClassVar[str] = "ddcm"
    id: ClassVar[int] = 3
    extra_options: ClassVar[tuple[str, ...]] = ("atoms",)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ChannelSpec:
        if options.get("atoms") not in (None, 0, 1):
            raise ValueError("ddcm sends one codebook index per step: atoms must be 1 (or 0)")
        return super().from_options(options)

    @property
    def step_bits(self) -> float:
        return float(self.codebook_bits)

    def channel(self, n_dims: int, payload: bytes | None = None, search: Search = Search()) -> "DdcmChannel":
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
        if not 1 <= self.atoms <= min(MAX_ATOMS, self.num_codes):
            raise ValueError(f"atoms must be in 1..min({MAX_ATOMS}, 2^codebook_bits) for turbo-ddcm, got {self.atoms}")

    @property
    def step_bits(self) -> float:
        return float(rank_bits(self.num_codes, self.atoms) + self.atoms)

    def decode_entries(self, n_dims: int) -> int:
        return self.atoms * n_dims  # the M codes [D, M] regenerated per step

    def channel(self, n_dims: int, payload: bytes | None = None, search: Search = Search()) -> "TurboDdcmChannel":
        return TurboDdcmChannel(self, n_dims, payload, search)


@dataclass
class CodebookStepRecord(StepRecord):
    """What a codebook channel did at one step (bits)."""

    index_bits: float  # ideal bits of the step's symbols


def combination_rank(subset: list[int]) -> int:
    """Rank of an ascending subset of 0..K-1 in the combinatorial number system:
    sum_i C(s_i, i + 1), in 0..C(K, M) - 1."""
    return sum(math.comb(s, i + 1) for i, s in enumerate(subset))


def combination_unrank(rank: int, m: int) -> list[int]:
    """The ascending M-subset of ``combination_rank`` ``rank`` (greedy, binary search per element)."""
    out = []
    for i in range(m, 0, -1):
        lo, hi = i - 1, max(i - 1, 1)
        while math.comb(hi, i) <= rank:
            hi *= 2
        while hi - lo > 1:  # largest c with C(c, i) <= rank: in [lo, hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if math.comb(mid, i) <= rank else (lo, mid)
        out.append(lo)
        rank -= math.comb(lo, i)
    return out[::-1]


class CodebookChannel:
    """Base of DDCM-style channels: step k's codebook is K = 2^codebook_bits vectors C_n ~ N(0, I)
    over the whole latent, rows of the step's shared-randomness stream (``Chain.step_key``; not
    device ``randn``, so files decode on any device). A channel picks a noise z from the codebook
    using u (x_t' = mu_p + std z, DDIM with eta = 1 = the DDPM posterior step) and sends its
    choice with uniform codes. The chain no longer samples q exactly; every step costs a fixed rate."""

    def __init__(self, spec: CodebookSpec, n_dims: int, payload: bytes | None = None, search: Search = Search()):
        self.spec = spec
        self.options = search
        self.num_codes = spec.num_codes
        self.n_dims = n_dims
        self.records: list[CodebookStepRecord] = []
        self._enc = PayloadEncoder()
        self._bits = 0.0
        self._dec = None
        self._payload_bytes = 0 if payload is None else len(payload)
        if payload is not None:
            try:
                self._dec = payload_decoder(payload)
            except ValueError as e:
                raise fmt.CorruptFile(f"corrupt .diffc file: {e}") from None

    # ---- the codebook ------------------------------------------------------------------------
    def scores(self, u: torch.Tensor, key: int) -> torch.Tensor:
        """<C_n, u> for every code n (float64 [K] on u's device): K x D candidate entries, in blocks."""
        return codebook_scores(u, key, self.num_codes, self.n_dims, block_entries=self.options.block_entries,
                               compile=self.options.compile)

    def codes(self, key: int, idx: list[int], device: torch.device) -> torch.Tensor:
        """Codes ``idx`` of the step (float32 [D, len(idx)]), regenerated alone."""
        cols = torch.arange(self.n_dims, dtype=torch.int32, device=device)[:, None]
        return normals(key, torch.tensor(idx, dtype=torch.int32, device=device)[None, :], cols)

    # ---- symbols -------------------------------------------------------------------------------
    def _put(self, symbols: list[int], size: int) -> None:
        self._enc.encode(np.asarray(symbols, dtype=np.int32), constriction.stream.model.Uniform(size))
        self._bits += len(symbols) * math.log2(size)

    def _get(self, n: int, size: int, k: int) -> list[int]:
        if self._dec is None:
            raise TypeError("this channel was made for encoding (no payload)")
        try:
            symbols = [int(v) for v in self._dec.decode(constriction.stream.model.Uniform(size), n)]
        except (AssertionError, RuntimeError, ValueError) as e:
            raise fmt.CorruptFile(f"corrupt .diffc file: payload does not decode at step {k} ({e})") from None
        self._put(symbols, size)  # re-coded: ``stream()`` is the payload of the steps received
        if self._enc.min_bytes() > self._payload_bytes:
            raise fmt.CorruptFile(f"corrupt .diffc file: the {self._payload_bytes}-byte payload ends before step {k}")
        return symbols

    def stream(self) -> tuple[bytes, StreamCost]:
        """The range-coded payload of the steps sent so far (all of it index bits: no side info)."""
        return self._enc.sealed(), StreamCost(0.0, self._bits)

    # ---- one step ------------------------------------------------------------------------------
    def choose(self, u: torch.Tensor, key: int) -> torch.Tensor:
        """Encoder: pick and transmit the step's noise z (float32 [D])."""
        raise NotImplementedError

    def read(self, key: int, k: int, device: torch.device) -> torch.Tensor:
        """Decoder: the same z from the transmitted symbols."""
        raise NotImplementedError

    def send(self, chain: Chain, step: Step) -> torch.Tensor:
        bits0 = self._bits
        z = self.choose(step.u, chain.step_key(step.k))
        u = step.u.flatten().double()
        delivered = float((z.double() * u).sum() - 0.5 * (u * u).sum()) / LN2
        self.records.append(CodebookStepRecord(step.kl_bits, delivered, self._bits - bits0))
        return step.sample(z)

    def receive(self, chain: Chain, step: Step) -> torch.Tensor:
        return step.sample(self.read(chain.step_key(step.k), step.k, step.x.device))  # symbols before the prior


class DdcmChannel(CodebookChannel):
    """DDCM (Ohayon et al. 2025): z = C_n*, n* = argmax_n <C_n, x0 - x0_hat> (= argmax <C_n, u>);
    log2 K bits per step."""

    def choose(self, u: torch.Tensor, key: int) -> torch.Tensor:
        n = int(torch.argmax(self.scores(u, key)))
        self._put([n], self.num_codes)
        return self.codes(key, [n], u.device)[:, 0]

    def read(self, key: int, k: int, device: torch.device) -> torch.Tensor:
        return self.codes(key, self._get(1, self.num_codes, k), device)[:, 0]


class TurboDdcmChannel(CodebookChannel):
    """Turbo-DDCM (Vaisman et al. 2025): g = <C_n, u> for all n; S = the M codes of largest |g|;
    z = sum_{n in S} sign(g_n) C_n, scaled to unit standard deviation. Bits per step
    (``TurboDdcmSpec.step_bits``): ``rank_bits`` for the rank of S plus M sign bits."""

    def __init__(self, spec: TurboDdcmSpec, n_dims: int, payload: bytes | None = None, search: Search = Search()):
        super().__init__(spec, n_dims, payload, search)
        self.atoms = spec.atoms
        self.n_subsets = math.comb(self.num_codes, self.atoms)

    def _digits(self) -> list[int]:
        """Sizes of the range-coded digits of a subset's rank (16 bits each, the last one smaller)."""
        nbits = rank_bits(self.num_codes, self.atoms)
        sizes = [1 << RANK_DIGIT_BITS] * (nbits // RANK_DIGIT_BITS)
        return sizes + ([1 << (nbits % RANK_DIGIT_BITS)] if nbits % RANK_DIGIT_BITS else [])

    def _noise(self, key: int, subset: list[int], signs: list[int], device: torch.device) -> torch.Tensor:
        """sum of the signed codes, unit standard deviation (the same function on both sides)."""
        sign = torch.tensor(signs, dtype=torch.float32, device=device) * 2 - 1
        z = (self.codes(key, subset, device) * sign[None, :]).sum(1)
        return z / z.std()

    def choose(self, u: torch.Tensor, key: int) -> torch.Tensor:
        g = self.scores(u, key)
        top = torch.sort(torch.topk(g.abs(), self.atoms).indices).values
        subset, signs = torch.stack([top, (g[top] > 0).long()]).tolist()  # the step's one host sync
        rank = combination_rank(subset)
        for size in self._digits():
            self._put([rank % size], size)
            rank //= size
        self._put(signs, 2)
        return self._noise(key, subset, signs, u.device)

    def read(self, key: int, k: int, device: torch.device) -> torch.Tensor:
        rank, scale = 0, 1
        for size in self._digits():
            rank += self._get(1, size, k)[0] * scale
            scale *= size
        if rank >= self.n_subsets:
            raise fmt.CorruptFile(f"corrupt .diffc file: codebook subset rank out of range at step {k}")
        subset = combination_unrank(rank, self.atoms)
        return self._noise(key, subset, self._get(self.atoms, 2, k), device)
