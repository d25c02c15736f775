"""Reverse-channel coding of one diffusion step by the Poisson functional representation (PFR).

Setting (per step): q = N(mu_q, var I), p = N(mu_p, var I), u = (mu_q - mu_p) / std, so
KL(q || p) = ||u||^2 / 2 nats. The latent entries are split into chunks (``ChunkPlan``); for a
chunk c with shift u_c, candidates z_n ~ N(0, I) (n = 0..K-1) come from shared randomness
(``diffc.randomness``: candidate = row n, latent entry = column) and arrival times
S_n = E_0 + ... + E_n, E ~ Exp(1). The encoder sends

    N_c = argmin_n [ log S_n - log q/p(z_n) ] = argmin_n [ log S_n - z_n . u_c ]

and both sides set x = mu_p + std * z_N. For K >> exp(KL_c) this is a sample of q; with a
truncated search it is biased toward p, and ``delivered`` = log q/p(z_N) measures how much of
the KL was actually transmitted.

The chunk plan is a pure function of what the decoder has: the step's chunk count (side
information), optional decoder-side weights (expected KL per entry) and the seed.
The encoder is vectorised over all chunks and candidates of a step: one pass over blocks of
candidates computes every chunk's scores with a single scatter-add; no Python loop over chunks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .randomness import column_hashes, entry_hashes, hash_to_normal, row_hashes, uniforms

#: candidate-block size target: entries generated per block (memory ~ 12 bytes each)
BLOCK_ENTRIES = 1 << 21


@dataclass(frozen=True)
class ChunkPlan:
    """Assignment of the flattened latent entries to chunks.

    ``perm[j]`` is the latent entry at position j of the coding order; positions of one chunk are
    contiguous and ``chunk_of`` (non-decreasing) gives each position's chunk.
    """

    perm: torch.Tensor  # int64 [D]
    chunk_of: torch.Tensor  # int64 [D]
    n_chunks: int


def make_plan(n_dims: int, n_chunks: int, key: int, weights: torch.Tensor | None = None) -> ChunkPlan:
    """Shuffle entries (seeded by ``key``) and cut the shuffled order into ``n_chunks`` runs of
    equal total weight (weights = decoder-known expected KL per entry; None = uniform).

    An entry heavier than a run's share cannot be split: it covers several cuts, and the runs
    left empty are dropped, so the plan may hold fewer than ``n_chunks`` chunks (every one
    non-empty; the decoder computes the same plan, so no index is spent on an empty chunk).
    """
    if not 1 <= n_chunks <= n_dims:
        raise ValueError(f"n_chunks must be in 1..{n_dims}, got {n_chunks}")
    gen = torch.Generator().manual_seed(key)
    perm = torch.randperm(n_dims, generator=gen)
    if weights is None:
        chunk_of = torch.arange(n_dims, dtype=torch.int64) * n_chunks // n_dims
    else:
        w = weights.detach().flatten().to("cpu", torch.float64).clamp_min(0)[perm]
        w = w + 1e-12 * w.sum().clamp_min(1e-300)  # no zero-weight entries: every chunk non-empty
        mid = torch.cumsum(w, 0) - 0.5 * w
        chunk_of = torch.floor(mid / w.sum() * n_chunks).to(torch.int64).clamp_(0, n_chunks - 1)
        _, chunk_of = torch.unique_consecutive(chunk_of, return_inverse=True)
    return ChunkPlan(perm, chunk_of, int(chunk_of[-1]) + 1)


def _arrival_key(key: int) -> int:
    return (key * 0x9E3779B1 + 0x632BE5AB) & 0x7FFFFFFF


def encode_chunks(u: torch.Tensor, plan: ChunkPlan, num_candidates: int, key: int) -> torch.Tensor:
    """PFR-select one candidate index per chunk.

    Args:
        u: float32 [D], the standardised shift (mu_q - mu_p) / std in *coding order* (u[perm]).
        plan: the chunk plan.
        num_candidates: K, candidates searched per chunk.
        key: stream key of this step.
    Returns:
        int64 [n_chunks] selected indices in 0..K-1.
    """
    d, c = u.numel(), plan.n_chunks
    dev = u.device
    col_h = column_hashes(key, torch.arange(d, dtype=torch.int32, device=dev))[:, None]  # [D, 1]
    u_col = u.to(torch.float32)[:, None]
    chunk_of = plan.chunk_of.to(dev)
    chunk_cols = torch.arange(c, dtype=torch.int32, device=dev)
    akey = _arrival_key(key)
    block = max(1, min(num_candidates, BLOCK_ENTRIES // max(d, 1)))
    best_score = torch.full((c,), math.inf, dtype=torch.float64, device=dev)
    best_idx = torch.zeros(c, dtype=torch.int64, device=dev)
    s_carry = torch.zeros(c, dtype=torch.float64, device=dev)
    for n0 in range(0, num_candidates, block):  # loop over candidate *blocks* (memory bound)
        rows = torch.arange(n0, min(n0 + block, num_candidates), dtype=torch.int32, device=dev)
        z = hash_to_normal(entry_hashes(col_h, row_hashes(key, rows)[None, :]))  # [D, B]
        dots = torch.zeros(c, rows.numel(), dtype=torch.float32, device=dev)
        dots.index_add_(0, chunk_of, z.mul_(u_col))  # [C, B]: z_n . u_c for every chunk
        exps = -torch.log(uniforms(akey, rows[:, None], chunk_cols[None, :]))  # [B, C] Exp(1)
        s = torch.cumsum(exps, 0) + s_carry
        s_carry = s[-1]
        score = torch.log(s) - dots.T.to(torch.float64)  # [B, C]
        bs, bi = score.min(0)
        better = bs < best_score
        best_score = torch.where(better, bs, best_score)
        best_idx = torch.where(better, bi.to(torch.int64) + n0, best_idx)
    return best_idx


def decode_chunks(indices: torch.Tensor, plan: ChunkPlan, key: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Regenerate the selected candidates: float32 [D] in coding order (chunk c's entries = z_{N_c}).

    Only the selected rows are generated (random access), one vectorised call for all chunks.
    """
    d = plan.perm.numel()
    cols = torch.arange(d, dtype=torch.int32, device=device)
    rows = indices.to(device)[plan.chunk_of.to(device)].to(torch.int32)
    return hash_to_normal(entry_hashes(column_hashes(key, cols), row_hashes(key, rows)))


def chunk_sums(values: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Sum of per-position values over each chunk (float64 [n_chunks])."""
    out = torch.zeros(plan.n_chunks, dtype=torch.float64, device=values.device)
    return out.index_add_(0, plan.chunk_of.to(values.device), values.to(torch.float64))
