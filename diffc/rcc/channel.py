"""DiffC's reverse-channel coder as a channel (``diffc.plugins``): ``PfrChannel``, made by the
specs of ``diffc.rcc.spec`` (i.i.d. or sparse-sum candidates). The DDCM peers are ``diffc.codebook``.

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

from dataclasses import dataclass

import numpy as np
import torch

from .. import format as fmt
from ..chain import LN2, Chain, Step
from ..determinism import search_threads
from ..plugins import Search, StepRecord
from .entropy import StepDecoder, StepEncoder, StepSymbols, StreamCost, count_bound
from .pfr import ChunkPlan, chunk_sums, stream_entries
from .spec import PfrSpec


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
            z[plan.prior.to(z.device)] = stream_entries(chain.prior_key(step.k),
                                                        torch.zeros(1, dtype=torch.int32, device=z.device), cols)
        return z

    # ---- encoder ------------------------------------------------------------------------------
    def send(self, chain: Chain, step: Step) -> torch.Tensor:
        with search_threads(step.x.device):  # the encoder's prior (the model) is computed already (u)
            return self._send(chain, step)

    def _send(self, chain: Chain, step: Step) -> torch.Tensor:
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
        with search_threads(step.x.device):
            plan, idx = self._read(chain, step)
        step.mu_p  # the model, at the file's threads: after the step's symbols read (a forged payload never runs it)
        with search_threads(step.x.device):
            z = self.settings.decode(idx, plan, chain.step_key(step.k), step.x.device)
            return step.sample(self._z(chain, step, plan, z))

    def _read(self, chain: Chain, step: Step) -> tuple[ChunkPlan, torch.Tensor]:
        """The step's plan (split parts applied, on the latent's device) and chunk indices, read from
        the payload; a CorruptFile when they do not decode."""
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
        return plan, idx
