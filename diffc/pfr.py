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

Splitting heavy entries: an entry whose expected KL exceeds a chunk's share cannot be coded well
by one chunk (its K candidates deliver a small part of its KL). Such an entry is sent as m parts:
x = mu_p + std * (z_1 + ... + z_m) / sqrt(m), each part with standardised shift u / sqrt(m), i.e.
q_i = N(u/m, 1/m) against p_i = N(0, 1/m), KL u^2 / (2m) each. The parts are independent, sum to
exactly N(u, 1) under q and N(0, 1) under p, and sum(log q_i/p_i) = log q/p of the entry, so
``delivered`` is unchanged by the split. Parts go to different chunks like any other entry.

Splitting heavy chunks (encoder-driven): the plan's weights are predictions, and a chunk's real
KL is heavy-tailed (edges of a real image). A chunk whose real KL exceeds ``split_above`` x
chunk_bits is sent as s = ceil(KL_c / chunk_bits) parts by the same construction applied to the
whole chunk: s chunks over the same entries, each with shift u_c / sqrt(s) (KL_c / s each), summed
and scaled by 1/sqrt(s). The encoder sends s (side information, ``diffc.entropy``); the decoder
rebuilds the same plan with ``ChunkPlan.split_chunks``.

The encoder is vectorised over all chunks and candidates of a step: one pass over blocks of
candidates computes every chunk's scores with a single scatter-add; no Python loop over chunks.
The PFR choice from the scores (``pfr_select``: arrival times, running argmin) is shared with the
sparse-sum candidates of ``diffc.sparse_sum``, which score a candidate from a table instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from .randomness import column_hashes, entry_hashes, hash_to_normal, row_hashes, uniforms

#: candidate-block size target: entries generated per block (memory ~ 12 bytes each); 2^19 measured
#: fastest on CPU (benchmarks/rcc_throughput.py block sweep: ~2x over 2^21, cache-resident blocks)
BLOCK_ENTRIES = 1 << 19
#: most parts a chunk is split into (bounds the side information's alphabet and the work per chunk)
MAX_PARTS = 256
#: splitting may multiply a step's positions (and the decoder's memory) by at most this factor
MAX_SPLIT_GROWTH = 16


@dataclass(frozen=True)
class ChunkPlan:
    """Assignment of the flattened latent entries (or their parts) to chunks, in coding order.

    Position j of the coding order carries latent entry ``src[j]`` (an entry split into m parts
    appears m times, each part scaled by ``scale[j]`` = 1/sqrt(m), times 1/sqrt(s) in a chunk split
    into s parts; ``scale`` None = no split, and ``src`` is then a permutation). The squared scales
    of an entry's positions sum to 1. Positions of one chunk are contiguous and ``chunk_of``
    (non-decreasing, consecutive) gives each position's chunk; ``part`` numbers the positions of
    each entry 0, 1, ...
    """

    src: torch.Tensor  # int64 [P]
    chunk_of: torch.Tensor  # int64 [P]
    n_chunks: int
    scale: torch.Tensor | None = None  # float32 [P]
    part: torch.Tensor | None = None  # int64 [P]: which part of its entry a position is (0..m-1)

    def coded(self, u: torch.Tensor) -> torch.Tensor:
        """Latent-shaped values (flattened) -> per-position values in coding order (parts scaled)."""
        out = u.flatten()[self.src.to(u.device)]
        return out if self.scale is None else out * self.scale.to(u.device)

    def combine(self, z: torch.Tensor, n_dims: int) -> torch.Tensor:
        """Per-position candidates in coding order -> the latent's flattened z (parts summed, scaled).

        Deterministic on every device: one ``index_add_`` per part number, each with distinct
        target indices (no two additions race), in a fixed order.
        """
        dev = z.device
        src = self.src.to(dev)
        out = torch.zeros(n_dims, dtype=z.dtype, device=dev)
        if self.scale is None:
            return out.index_copy_(0, src, z)
        z = z * self.scale.to(dev)
        part = self.part.to(dev)
        order = torch.argsort(part, stable=True)
        counts = torch.bincount(part).tolist()
        for sel in torch.split(order, counts):  # loop over part numbers (max parts of an entry)
            out.index_add_(0, src[sel], z[sel])
        return out

    def split_chunks(self, parts: torch.Tensor) -> "ChunkPlan":
        """The plan with chunk c sent as ``parts[c]`` chunks over the same positions, each part
        scaled by 1/sqrt(parts[c]) (see the module docstring); parts of chunk c become consecutive
        chunks. ``parts``: int [n_chunks], values in 1..MAX_PARTS. All ones = this plan."""
        parts = parts.to("cpu", torch.int64)
        if parts.numel() != self.n_chunks:
            raise ValueError(f"parts has {parts.numel()} entries, expected {self.n_chunks}")
        if bool((parts == 1).all()):
            return self
        if int(parts.min()) < 1 or int(parts.max()) > MAX_PARTS:
            raise ValueError(f"parts must be in 1..{MAX_PARTS}")
        dims = torch.bincount(self.chunk_of, minlength=self.n_chunks)  # positions per chunk
        if not _within_growth(parts, dims):
            raise ValueError(f"split parts would grow the plan more than {MAX_SPLIT_GROWTH}x")
        start = torch.cumsum(dims, 0) - dims
        parent = torch.repeat_interleave(torch.arange(self.n_chunks), parts)  # new chunk -> old chunk
        new_dims = dims[parent]
        chunk_of = torch.repeat_interleave(torch.arange(parent.numel()), new_dims)
        offset = torch.arange(chunk_of.numel()) - (torch.cumsum(new_dims, 0) - new_dims)[chunk_of]
        pos = start[parent][chunk_of] + offset  # old position each new position repeats
        scale = parts[parent][chunk_of].to(torch.float32).rsqrt()
        if self.scale is not None:
            scale = scale * self.scale[pos]
        src = self.src[pos]
        # part number = rank of each occurrence of a latent entry (distinct targets per part in combine)
        order = torch.argsort(src, stable=True)
        counts = torch.bincount(src)
        first = (torch.cumsum(counts, 0) - counts)[src[order]]
        part = torch.empty_like(src)
        part[order] = torch.arange(src.numel()) - first
        return ChunkPlan(src, chunk_of, int(parent.numel()), scale, part)


def split_parts(kl_bits: torch.Tensor, chunk_bits: int, split_above: float,
                dims: torch.Tensor | None = None) -> torch.Tensor:
    """Parts per chunk from the chunks' real KL (bits): ceil(KL_c / chunk_bits) where KL_c >
    split_above x chunk_bits, else 1; at most MAX_PARTS. ``split_above`` 0 = never split.
    ``dims`` (positions per chunk): if the split plan would exceed MAX_SPLIT_GROWTH x the
    positions, the step is not split at all (all ones; the decoder refuses such plans)."""
    ones = torch.ones(kl_bits.numel(), dtype=torch.int64)
    if split_above <= 0:
        return ones
    kl = kl_bits.detach().to("cpu", torch.float64)
    parts = torch.where(kl > split_above * chunk_bits, torch.ceil(kl / chunk_bits).clamp(1, MAX_PARTS).to(torch.int64), ones)
    return parts if dims is None or _within_growth(parts, dims.cpu()) else ones


def _within_growth(parts: torch.Tensor, dims: torch.Tensor) -> bool:
    """Chunks of ``dims`` positions split into ``parts`` stay within MAX_SPLIT_GROWTH x the positions."""
    return int((parts * dims).sum()) <= MAX_SPLIT_GROWTH * int(dims.sum())


def make_plan(n_dims: int, n_chunks: int, key: int, weights: torch.Tensor | None = None) -> ChunkPlan:
    """Shuffle entries (seeded by ``key``) and cut the shuffled order into ``n_chunks`` runs of
    equal total weight (weights = decoder-known expected KL per entry; None = uniform).

    An entry heavier than a run's share W / n_chunks is split into m = ceil(w / share) parts of
    weight w / m (see the module docstring), so no position outweighs a run: every run is
    non-empty and at most n_dims + n_chunks positions exist. Runs are relabelled consecutively.
    """
    if n_dims < 1 or n_chunks < 1:
        raise ValueError(f"need n_dims >= 1 and n_chunks >= 1, got {n_dims}, {n_chunks}")
    w = (torch.ones(n_dims, dtype=torch.float64) if weights is None
         else weights.detach().flatten().to("cpu", torch.float64).clamp_min(0))
    if w.numel() != n_dims:
        raise ValueError(f"weights have {w.numel()} entries, expected {n_dims}")
    w = w + 1e-12 * w.sum().clamp_min(1e-300)  # no zero-weight entries
    total = w.sum()
    m = torch.ceil(w / (total / n_chunks) * (1 - 1e-9)).clamp_min(1).to(torch.int64)
    gen = torch.Generator().manual_seed(key)
    split = bool((m > 1).any())
    if not split:
        src = torch.randperm(n_dims, generator=gen)
        vw = w[src]
        scale = part = None
    else:
        src0 = torch.repeat_interleave(torch.arange(n_dims), m)
        part0 = torch.arange(src0.numel()) - torch.repeat_interleave(torch.cumsum(m, 0) - m, m)
        perm = torch.randperm(src0.numel(), generator=gen)
        src, part = src0[perm], part0[perm]
        vw = (w / m)[src]
        scale = m[src].to(torch.float32).rsqrt()
    mid = torch.cumsum(vw, 0) - 0.5 * vw
    chunk_of = torch.floor(mid / total * n_chunks).to(torch.int64).clamp_(0, n_chunks - 1)
    _, chunk_of = torch.unique_consecutive(chunk_of, return_inverse=True)
    return ChunkPlan(src, chunk_of, int(chunk_of[-1]) + 1, scale, part)


def _arrival_key(key: int) -> int:
    return (key * 0x9E3779B1 + 0x632BE5AB) & 0x7FFFFFFF


def block_size(n_positions: int, num_candidates: int) -> int:
    """Candidates per block: ~BLOCK_ENTRIES entries, at least 1, at most all."""
    return max(1, min(num_candidates, BLOCK_ENTRIES // max(n_positions, 1)))


def candidate_blocks(key: int, n_positions: int, num_candidates: int, device: torch.device | str = "cpu"):
    """Yield (rows int32 [B], z float32 [D, B]): candidates ``rows`` of the step's stream over its
    ``n_positions`` columns, in blocks of ~BLOCK_ENTRIES entries, all written into one workspace
    (each ``z`` is overwritten by the next block; the caller may modify it in place)."""
    d = n_positions
    col_h = column_hashes(key, torch.arange(d, dtype=torch.int32, device=device))[:, None]  # [D, 1]
    block = block_size(d, num_candidates)
    h_buf = torch.empty(d, block, dtype=torch.int32, device=device)  # hashes
    t_buf = torch.empty_like(h_buf)  # hash scratch
    z_buf = torch.empty(d, block, dtype=torch.float32, device=device)  # candidates
    for n0 in range(0, num_candidates, block):  # loop over candidate *blocks*
        rows = torch.arange(n0, min(n0 + block, num_candidates), dtype=torch.int32, device=device)
        b = rows.numel()
        h = entry_hashes(col_h, row_hashes(key, rows)[None, :], h_buf[:, :b], t_buf[:, :b])
        yield rows, hash_to_normal(h, out=z_buf[:, :b])


def encode_chunks(u: torch.Tensor, plan: ChunkPlan, num_candidates: int, key: int,
                  arrivals: str = "poisson") -> torch.Tensor:
    """PFR-select one candidate index per chunk.

    Args:
        u: float32 [P], the standardised shift (mu_q - mu_p) / std per position of the coding
            order (``plan.coded(u)``: entries gathered, split parts scaled).
        plan: the chunk plan.
        num_candidates: K, candidates searched per chunk.
        key: stream key of this step.
        arrivals: "poisson" (the codec's) or "ordered" (``pfr_select``).
    Returns:
        int64 [n_chunks] selected indices in 0..K-1.
    """
    d, c = u.numel(), plan.n_chunks
    dev = u.device
    u_col = u.to(torch.float32)[:, None]
    chunk_of = plan.chunk_of.to(dev)
    dots_buf = torch.empty(c, block_size(d, num_candidates), dtype=torch.float32, device=dev)  # reused

    def dot_blocks():
        for rows, z in candidate_blocks(key, d, num_candidates, dev):
            dots = dots_buf[:, :rows.numel()].zero_()
            yield rows, dots.index_add_(0, chunk_of, z.mul_(u_col))  # [C, B]: z_n . u_c for every chunk

    return pfr_select(dot_blocks(), c, key, dev, arrivals, num_candidates)


#: arrival-time constructions of ``pfr_select``
ARRIVALS = ("poisson", "ordered")


def pfr_select(dot_blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], n_chunks: int, key: int,
               device: torch.device | str, arrivals: str = "poisson", num_candidates: int = 0) -> torch.Tensor:
    """The PFR choice N_c = argmin_n [log S_n - z_n . u_c] of every chunk, from the candidates' scores.

    ``dot_blocks`` yields (rows int32 [B], dots float32 [n_chunks, B]): z_n . u_c (nats of
    log q/p up to a constant) for consecutive candidate rows n, from 0 up to K-1 in order. The
    arrival times S_n (cumulative Exp(1), ``uniforms`` of the step's arrival stream, one per
    (candidate, chunk)) are the same whatever made the candidates. Returns int64 [n_chunks].

    ``arrivals`` "ordered" (opt-in, not the codec's; ordered random coding, Theis & Yosri 2022):
    S_n = sum_{k <= n} E_k / (K - k) with K = ``num_candidates``, i.e. the order statistics of K
    i.i.d. Exp(1) (Renyi's representation), so candidate n gets the n-th smallest of K exponentials.
    The selected sample then has the law of self-normalised importance sampling over the K candidates
    (Gumbel-max with the exponentials unsorted), and small indices are likelier than under "poisson"."""
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {ARRIVALS}, got {arrivals!r}")
    if arrivals == "ordered" and num_candidates < 1:
        raise ValueError("ordered arrivals need num_candidates (K) >= 1")
    c = n_chunks
    chunk_cols = torch.arange(c, dtype=torch.int32, device=device)
    akey = _arrival_key(key)
    best_score = torch.full((c,), math.inf, dtype=torch.float64, device=device)
    best_idx = torch.zeros(c, dtype=torch.int64, device=device)
    s_carry = torch.zeros(c, dtype=torch.float64, device=device)
    for rows, dots in dot_blocks:
        exps = -torch.log(uniforms(akey, rows[:, None], chunk_cols[None, :]))  # [B, C] Exp(1)
        if arrivals == "ordered":  # gap before the (n+1)-th smallest of K exponentials: Exp(rate K - n)
            exps /= (num_candidates - rows.to(torch.float64))[:, None]
        s = torch.cumsum(exps, 0) + s_carry
        s_carry = s[-1]
        score = torch.log(s) - dots.T.to(torch.float64)  # [B, C]
        bs, bi = score.min(0)
        better = bs < best_score
        best_score = torch.where(better, bs, best_score)
        best_idx = torch.where(better, bi.to(torch.int64) + rows[0], best_idx)
    return best_idx


def decode_chunks(indices: torch.Tensor, plan: ChunkPlan, key: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Regenerate the selected candidates: float32 [P] in coding order (chunk c's entries = z_{N_c}).

    Only the selected rows are generated (random access), one vectorised call for all chunks.
    """
    d = plan.src.numel()
    cols = torch.arange(d, dtype=torch.int32, device=device)
    rows = indices.to(device)[plan.chunk_of.to(device)].to(torch.int32)
    return hash_to_normal(entry_hashes(column_hashes(key, cols), row_hashes(key, rows)))


def chunk_sums(values: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Sum of per-position values over each chunk (float64 [n_chunks])."""
    out = torch.zeros(plan.n_chunks, dtype=torch.float64, device=values.device)
    return out.index_add_(0, plan.chunk_of.to(values.device), values.to(torch.float64))
