"""Channels of one chain step (``diffc.chain.Channel``) that write real bitstreams: DiffC's
reverse-channel coder and the DDCM peers.

``PfrChannel`` is the codec's coder (docs/design.md §1): the step's KL sets a chunk count
n = ceil(KL / chunk_bits) (side information); the decoder-side plan (``Chain.plan``) cuts the
latent into n chunks; a chunk whose real KL exceeds ``split_above`` x chunk_bits is sent in
ceil(KL_c / chunk_bits) parts (``diffc.pfr``); each chunk's PFR index among
K = 2^(chunk_bits + padding_bits) candidates (i.i.d. hashed normals, or sparse sums of a per-step
atom bank, ``diffc.sparse_sum``) is range-coded (``diffc.entropy``). Both sides set
x_t' = mu_p + std z with z regenerated from the indices by the same function, so the decoder's
state is bit-identical to the encoder's on the same platform.

Units: KL and code lengths in bits; ``delivered`` = log2 q/p(sent sample) in bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from . import format as fmt
from .chain import LN2, Chain, Step
from .entropy import StepDecoder, StepEncoder, StepSymbols, StreamCost, count_bound, payload_decoder, sealed_payload
from .pfr import ChunkPlan, candidate_blocks, chunk_sums, decode_chunks, encode_chunks, split_parts
from .randomness import normals
from .sparse_sum import SparseSum


#: PFR candidate generators (``PfrSettings.candidates``)
CANDIDATES = ("iid", "sparse-sum")


@dataclass(frozen=True)
class PfrSettings:
    """The coder's parameters (in the .diffc header, except the candidate generator: format v5 has
    no field for it, the header's fingerprint covers it, ``diffc.codec.CodecParams``)."""

    chunk_bits: int
    padding_bits: int
    split_above: float  # 0 = never split
    #: candidate generator: "iid" (hashed normals, ``diffc.pfr``) or "sparse-sum" (``diffc.sparse_sum``:
    #: ``atoms`` = K_a atoms per step's bank, ``sparse_m`` = M atoms per candidate; both 0 for iid)
    candidates: str = "iid"
    atoms: int = 0
    sparse_m: int = 0

    @property
    def num_candidates(self) -> int:
        return 1 << (self.chunk_bits + self.padding_bits)

    @property
    def split_min(self) -> int:
        """Fewest parts of a split chunk (KL > split_above x chunk_bits): floor(split_above) + 1; 0 = off."""
        return int(self.split_above) + 1 if self.split_above else 0

    @property
    def generator(self) -> SparseSum | None:
        """The sparse-sum generator, None for i.i.d. candidates."""
        if self.candidates == "iid":
            return None
        if self.candidates not in CANDIDATES:
            raise ValueError(f"candidates must be one of {CANDIDATES}, got {self.candidates!r}")
        return SparseSum(self.atoms, self.sparse_m)

    def encode(self, u_coded: torch.Tensor, plan: ChunkPlan, key: int) -> torch.Tensor:
        """The PFR index of every chunk (int64 [chunks]) with this setting's candidates."""
        gen = self.generator
        if gen is None:
            return encode_chunks(u_coded, plan, self.num_candidates, key)
        return gen.encode_chunks(u_coded, plan, self.num_candidates, key)

    def decode(self, idx: torch.Tensor, plan: ChunkPlan, key: int, device: torch.device | str) -> torch.Tensor:
        """The selected candidates (float32 [positions] in coding order), regenerated alone."""
        gen = self.generator
        return decode_chunks(idx, plan, key, device) if gen is None else gen.decode_chunks(idx, plan, key, device)

    def chunk_count(self, kl_bits: float, n_dims: int) -> int:
        """Chunks of a step carrying ``kl_bits`` of KL: ceil(KL / chunk_bits), within the count
        model's support (``diffc.entropy.count_bound``)."""
        return int(min(max(1, math.ceil(kl_bits / self.chunk_bits)), count_bound(n_dims)))

    def split(self, plan: ChunkPlan, u: torch.Tensor) -> tuple[torch.Tensor, ChunkPlan]:
        """The encoder's split of heavy chunks: (parts per chunk of ``plan``, the split plan), from
        each chunk's real KL = |u_c|^2 / 2 (``diffc.pfr.split_parts``)."""
        u_coded = plan.coded(u)
        kl_bits = chunk_sums(0.5 * u_coded * u_coded, plan) / LN2
        parts = split_parts(kl_bits, self.chunk_bits, self.split_above,
                            torch.bincount(plan.chunk_of, minlength=plan.n_chunks))
        return parts, plan.split_chunks(parts)


@dataclass
class PfrStepRecord:
    """What the encoder did at one step (bits; per-chunk arrays in coding order, after splitting)."""

    kl_bits: float
    delivered_bits: float
    n_chunks: int  # chunk count sent (side information)
    plan_chunks: int  # non-empty chunks of the plan before splitting
    symbols: StepSymbols
    chunk_kl_bits: torch.Tensor  # float64 [indices]
    chunk_delivered_bits: torch.Tensor  # float64 [indices]
    chunk_dims: torch.Tensor  # int64 [indices]: positions per chunk

    @property
    def n_indices(self) -> int:
        return int(self.symbols.indices.size)


class PfrChannel:
    """PFR over a decoder-side chunk plan. Encoder: ``PfrChannel(settings, n_dims)`` then
    ``send`` per step; ``stream()`` range-codes the steps sent so far (incrementally: each call
    seals a copy of the running coder). Decoder: ``PfrChannel(settings, n_dims, payload)``; it
    range-codes what it receives too, so ``stream()`` is the payload those steps make (the codec
    refuses a file whose payload is anything else: trailing data)."""

    def __init__(self, settings: PfrSettings, n_dims: int, payload: bytes | None = None):
        self.settings = settings
        self.max_chunks = count_bound(n_dims)
        self.records: list[PfrStepRecord] = []
        s = settings
        self._encoder = StepEncoder(s.num_candidates, s.chunk_bits, self.max_chunks, s.split_min)
        self._decoder = None
        if payload is not None:
            try:
                self._decoder = StepDecoder(payload, s.num_candidates, s.chunk_bits, s.split_min)
            except ValueError as e:
                raise fmt.CorruptFile(f"corrupt .diffc file: {e}") from None

    # ---- the search (overridable: benchmarks/coding_efficiency.py simulates it) ---------------
    def search(self, u_coded: torch.Tensor, plan: ChunkPlan, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices int64 [chunks], the chosen candidates float32 [positions] in coding order)."""
        idx = self.settings.encode(u_coded, plan, key)
        return idx, self.settings.decode(idx, plan, key, u_coded.device)

    @staticmethod
    def _state(step: Step, plan: ChunkPlan, z_coded: torch.Tensor) -> torch.Tensor:
        """x_t' = mu_p + std z, split parts summed (the same function on both sides: bit-identical)."""
        return step.sample(plan.combine(z_coded, step.mu_p.numel()))

    # ---- encoder ------------------------------------------------------------------------------
    def send(self, chain: Chain, step: Step) -> torch.Tensor:
        s = self.settings
        kl_bits = step.kl_bits
        n_chunks = s.chunk_count(kl_bits, step.x.numel())
        plan = chain.plan(step, n_chunks)
        plan_chunks = plan.n_chunks
        parts, plan = s.split(plan, step.u)
        u_coded = plan.coded(step.u)
        idx, z = self.search(u_coded, plan, chain.step_key(step.k))
        u64 = u_coded.double()
        chunk_kl = chunk_sums(0.5 * u64 * u64, plan) / LN2
        chunk_deliv = chunk_sums(z.double() * u64 - 0.5 * u64 * u64, plan) / LN2
        symbols = StepSymbols(n_chunks, idx.cpu().numpy().astype(np.int32),
                              parts.numpy().astype(np.int32) if s.split_min else None)
        self._encoder.push(symbols)
        self.records.append(PfrStepRecord(kl_bits, float(chunk_deliv.sum()), n_chunks, plan_chunks, symbols,
                                          chunk_kl, chunk_deliv, torch.bincount(plan.chunk_of, minlength=plan.n_chunks)))
        return self._state(step, plan, z)

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
            plan = chain.plan(step, n_chunks)
            parts = dec.next_parts(plan.n_chunks, self.max_chunks)
            plan = plan.split_chunks(torch.from_numpy(parts))
            idx = torch.from_numpy(dec.next_indices(plan.n_chunks))
            self._encoder.push(StepSymbols(n_chunks, idx.numpy().astype(np.int32),
                                           parts.astype(np.int32) if self.settings.split_min else None))
        except (ValueError, RuntimeError) as e:
            raise fmt.CorruptFile(f"corrupt .diffc file: payload does not decode at step {step.k} ({e})") from None
        return self._state(step, plan, self.settings.decode(idx, plan, chain.step_key(step.k), step.mu_p.device))


# ---- the peers: per-step Gaussian codebooks (docs/peers.md) -----------------------------------------
@dataclass
class StepRecord:
    """What a codebook channel did at one step (bits)."""

    kl_bits: float
    delivered_bits: float
    index_bits: float  # ideal bits of the step's symbols


#: digits of a combinatorial rank are range-coded 16 bits at a time (constriction's uniform law
#: takes at most 2^24 symbols)
RANK_DIGIT_BITS = 16


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

    def __init__(self, codebook_bits: int, n_dims: int, payload: bytes | None = None):
        self.num_codes = 1 << codebook_bits
        self.n_dims = n_dims
        self.records: list[StepRecord] = []
        self._enc = constriction.stream.queue.RangeEncoder()
        self._bits = 0.0
        self._dec = None
        if payload is not None:
            try:
                self._dec = payload_decoder(payload)
            except ValueError as e:
                raise fmt.CorruptFile(f"corrupt .diffc file: {e}") from None

    # ---- the codebook ------------------------------------------------------------------------
    def scores(self, u: torch.Tensor, key: int) -> torch.Tensor:
        """<C_n, u> for every code n (float64 [K]): K x D candidate entries, in blocks."""
        g = torch.empty(self.num_codes, dtype=torch.float64, device=u.device)
        u_row = u.flatten().to(torch.float32)[None, :]
        for rows, z in candidate_blocks(key, self.n_dims, self.num_codes, u.device):
            g[rows.long()] = (u_row @ z)[0].to(torch.float64)
        return g

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
        return symbols

    def stream(self) -> tuple[bytes, StreamCost]:
        """The range-coded payload of the steps sent so far (all of it index bits: no side info)."""
        return sealed_payload(self._enc), StreamCost(0.0, self._bits)

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
        self.records.append(StepRecord(step.kl_bits, delivered, self._bits - bits0))
        return step.sample(z)

    def receive(self, chain: Chain, step: Step) -> torch.Tensor:
        return step.sample(self.read(chain.step_key(step.k), step.k, step.mu_p.device))


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
    z = sum_{n in S} sign(g_n) C_n, scaled to unit standard deviation. Bits per step:
    ceil(log2 C(K, M)) for the rank of S plus M sign bits."""

    def __init__(self, codebook_bits: int, atoms: int, n_dims: int, payload: bytes | None = None):
        super().__init__(codebook_bits, n_dims, payload)
        self.atoms = atoms
        self.n_subsets = math.comb(self.num_codes, atoms)

    def _digits(self) -> list[int]:
        """Sizes of the range-coded digits of a subset's rank (16 bits each, the last one smaller)."""
        nbits = max(1, (self.n_subsets - 1).bit_length())
        sizes = [1 << RANK_DIGIT_BITS] * (nbits // RANK_DIGIT_BITS)
        return sizes + ([1 << (nbits % RANK_DIGIT_BITS)] if nbits % RANK_DIGIT_BITS else [])

    def _noise(self, key: int, subset: list[int], signs: list[int], device: torch.device) -> torch.Tensor:
        """sum of the signed codes, unit standard deviation (the same function on both sides)."""
        sign = torch.tensor(signs, dtype=torch.float32, device=device) * 2 - 1
        z = (self.codes(key, subset, device) * sign[None, :]).sum(1)
        return z / z.std()

    def choose(self, u: torch.Tensor, key: int) -> torch.Tensor:
        g = self.scores(u, key)
        subset = sorted(torch.topk(g.abs(), self.atoms).indices.tolist())
        signs = [int(g[n] > 0) for n in subset]
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
