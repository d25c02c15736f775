"""Reverse-channel coders of one chain step (``diffc.chain.Channel``) that write real bitstreams.

``PfrChannel`` is the codec's coder (docs/design.md §1): the step's KL sets a chunk count
n = ceil(KL / chunk_bits) (side information); the decoder-side plan (``Chain.plan``) cuts the
latent into n chunks; a chunk whose real KL exceeds ``split_above`` x chunk_bits is sent in
ceil(KL_c / chunk_bits) parts (``diffc.pfr``); each chunk's PFR index among
K = 2^(chunk_bits + padding_bits) candidates is range-coded (``diffc.entropy``). Both sides set
x_t' = mu_p + std z with z regenerated from the indices by the same function, so the decoder's
state is bit-identical to the encoder's on the same platform.

Units: KL and code lengths in bits; ``delivered`` = log2 q/p(sent sample) in bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import format as fmt
from .chain import LN2, Chain, Step
from .entropy import StepDecoder, StepEncoder, StepSymbols, StreamCost, count_bound
from .pfr import ChunkPlan, chunk_sums, decode_chunks, encode_chunks, split_parts


@dataclass(frozen=True)
class PfrSettings:
    """The coder's parameters (all in the .diffc header)."""

    chunk_bits: int
    padding_bits: int
    split_above: float  # 0 = never split

    @property
    def num_candidates(self) -> int:
        return 1 << (self.chunk_bits + self.padding_bits)

    @property
    def split_min(self) -> int:
        """Fewest parts of a split chunk (KL > split_above x chunk_bits): floor(split_above) + 1; 0 = off."""
        return int(self.split_above) + 1 if self.split_above else 0

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
    seals a copy of the running coder). Decoder: ``PfrChannel(settings, n_dims, payload)``."""

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
        idx = encode_chunks(u_coded, plan, self.settings.num_candidates, key)
        return idx, decode_chunks(idx, plan, key, u_coded.device)

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
            plan = chain.plan(step, dec.next_count(self.max_chunks))
            plan = plan.split_chunks(torch.from_numpy(dec.next_parts(plan.n_chunks, self.max_chunks)))
            idx = torch.from_numpy(dec.next_indices(plan.n_chunks))
        except (ValueError, RuntimeError) as e:
            raise fmt.CorruptFile(f"corrupt .diffc file: payload does not decode at step {step.k} ({e})") from None
        return self._state(step, plan, decode_chunks(idx, plan, chain.step_key(step.k), step.mu_p.device))
