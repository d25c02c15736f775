"""The DDCM peers as channels (docs/peers.md): per-step Gaussian codebooks of K = 2^codebook_bits
shared noises (``diffc.codebook.spec``), from the reverse-channel coder's shared randomness
(``diffc.rcc.randomness``) and range coder (``diffc.rcc.entropy``). Units: bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from .. import format as fmt
from ..chain import LN2, Chain, Step
from ..plugins import Search, StepRecord
from ..rcc.entropy import PayloadEncoder, StreamCost, payload_decoder
from ..rcc.pfr import codebook_scores
from ..rcc.randomness import normals
from .spec import RANK_DIGIT_BITS, CodebookSpec, TurboDdcmSpec, rank_bits


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
                raise fmt.CorruptFile(e) from None

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
            raise fmt.CorruptFile(f"payload does not decode at step {k} ({e})") from None
        self._put(symbols, size)  # re-coded: ``stream()`` is the payload of the steps received
        if self._enc.min_bytes() > self._payload_bytes:
            raise fmt.CorruptFile(f"the {self._payload_bytes}-byte payload ends before step {k}")
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
            raise fmt.CorruptFile(f"codebook subset rank out of range at step {k}")
        subset = combination_unrank(rank, self.atoms)
        return self._noise(key, subset, self._get(self.atoms, 2, k), device)
