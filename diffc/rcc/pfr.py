"""Reverse-channel coding of one diffusion step by the Poisson functional representation (PFR).

Setting (per step): q = N(mu_q, var I), p = N(mu_p, var I), u = (mu_q - mu_p) / std, so
KL(q || p) = ||u||^2 / 2 nats. The latent entries are split into chunks (``ChunkPlan``); for a
chunk c with shift u_c, candidates z_n ~ N(0, I) (n = 0..K-1) come from shared randomness
(``diffc.rcc.randomness``: candidate = row n, latent entry = column) and arrival times
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
and scaled by 1/sqrt(s). The encoder sends s (side information, ``diffc.rcc.entropy``); the decoder
rebuilds the same plan with ``ChunkPlan.split_chunks``.

The encoder is vectorised over all chunks and candidates of a step: one pass over blocks of
candidates computes every chunk's scores with one segment sum (chunks are contiguous runs of the
coding order: ``torch.segment_reduce`` over ``ChunkPlan.offsets``, a sequential float32 sum per
chunk in position order, the same sum as the scatter-add it replaced); no Python loop over chunks.
The PFR choice from the scores (``pfr_search``: arrival times, running argmin) is shared with the
sparse-sum candidates of ``diffc.rcc.sparse_sum``, which score a candidate from a table instead, and
the codebook scorer of the DDCM peers (``codebook_scores``) uses the same candidate blocks.

Device residency. The search of a step is a pure function of device tensors (the plan, ``u``) and
the step key: loop invariants (column hashes, every candidate row's hash, the arrival stream's
hashes) are computed once per step, blocks are cut with Python ints, and nothing in it reads a
device value back to the host (no host sync). The block size only sets how much work one kernel
does (``block_entries``; defaults per device type, ``default_block_entries``): it changes no
result, since every candidate's score is computed alone and the arrival times are one sequential
cumulative sum whatever the blocks. On the CPU the scores come from the fused kernel
(``diffc.rcc.fused``: hash, normal and score in one pass, blocks of FUSED_ROWS candidates, the
chunks shared out to ``determinism.search_workers()`` threads that pull them as they finish) and
the rest of the search runs at ``determinism.SEARCH_THREADS`` threads, so a busy neighbour
process cannot stall it on a parallel region's barrier; the torch ops (CUDA, meta,
``compile``) give the same scores, in the wide form of ``diffc.rcc.randomness`` (int64 hashes,
the normal from float64 bits: ~23 ops per block into a 20-byte-per-entry ``_Workspace``; every
block of a step has the same shape, ``block_size``). Opt-in ``compile=True`` runs the per-block
functions through ``torch.compile``; the decoder never runs the search (it regenerates z_N alone), so a file is
decodable whatever rounding the encoder's scores had.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import fused
from ..determinism import search_threads, search_workers, sync_inductor
from .randomness import (column_hashes, entry_hashes, exact_log, hash_to_normal, hash_to_uniform, normals,
                         row_hashes, wide_normal_, wide_on, wide_tables)

#: candidate-block size target of the torch path on the CPU (``compile=True``): entries generated
#: per block; 2^19 measured fastest (cache-resident blocks)
BLOCK_ENTRIES = 1 << 19
#: candidates per block of the fused CPU kernels (``diffc.rcc.fused``), whatever the latent's size:
#: their loops over a block's candidates vectorise, and a chunk's B running sums stay in L1
#: (benchmarks/rcc_throughput.py: 64..1024 within 20%)
FUSED_ROWS = 256
#: the same on CUDA: blocks of 2^27 entries (2.5 GiB of workspace, ``_Workspace``) keep a Flux-size step
#: (2^18 entries x 2^14 candidates) at 32 blocks, i.e. ~10^3 kernel launches per step instead of
#: ~10^6 (benchmarks/gpu_readiness.py)
BLOCK_ENTRIES_CUDA = 1 << 27
#: (candidate, chunk) pairs per selection block (arrival times and running argmin, ~24 bytes each)
SELECT_ENTRIES = 1 << 22
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
    each entry 0, 1, ... Entries listed in ``prior`` have no position (the channel sets them to a
    sample of p from shared randomness; ``combine`` leaves them 0).
    """

    src: torch.Tensor  # int64 [P]
    chunk_of: torch.Tensor  # int64 [P]
    n_chunks: int
    scale: torch.Tensor | None = None  # float32 [P]
    part: torch.Tensor | None = None  # int64 [P]: which part of its entry a position is (0..m-1)
    prior: torch.Tensor | None = None  # int64 [D - coded]: entries sent as a prior sample (``coded_entries``)

    @property
    def device(self) -> torch.device:
        return self.src.device

    def to(self, device: torch.device | str) -> "ChunkPlan":
        """The plan with its tensors on ``device`` (self when already there): move a step's plan
        once, then every method runs there without copies. From the CPU to CUDA the copies go
        through pinned memory, non-blocking (a copy from pageable memory waits for the stream)."""
        device, here = torch.device(device), self.src.device
        if device.type == here.type and device.index in (None, here.index):
            return self
        pinned = self.device.type == "cpu" and device.type == "cuda"
        mv = lambda t: (None if t is None else t.pin_memory().to(device, non_blocking=True) if pinned
                        else t.to(device))
        return ChunkPlan(mv(self.src), mv(self.chunk_of), self.n_chunks, mv(self.scale), mv(self.part), mv(self.prior))

    @functools.cached_property
    def offsets(self) -> torch.Tensor:
        """int64 [n_chunks + 1] on the plan's device: chunk c holds positions offsets[c]..offsets[c+1]-1
        (``chunk_of`` is sorted; a binary search, no host sync)."""
        values = torch.arange(self.n_chunks + 1, dtype=self.chunk_of.dtype, device=self.device)
        return torch.searchsorted(self.chunk_of, values)

    def coded(self, u: torch.Tensor) -> torch.Tensor:
        """Latent-shaped values (flattened) -> per-position values in coding order (parts scaled)."""
        out = u.flatten()[self.src.to(u.device)]
        return out if self.scale is None else out * self.scale.to(u.device)

    def combine(self, z: torch.Tensor, n_dims: int) -> torch.Tensor:
        """Per-position candidates in coding order -> the latent's flattened z (parts summed, scaled).

        Deterministic on every device and free of host syncs: the positions sorted by (entry,
        part number), then one segment sum per entry, sequential from 0 in part order (the parts
        of an entry are added part 0 first, as by one scatter-add per part number).
        """
        dev = z.device
        src = self.src.to(dev)
        if self.scale is None:
            return torch.zeros(n_dims, dtype=z.dtype, device=dev).index_copy_(0, src, z)
        z = z * self.scale.to(dev)
        order = torch.argsort(self.part.to(dev), stable=True)
        order = order[torch.argsort(src[order], stable=True)]  # by entry, then by part number
        starts = torch.searchsorted(src[order], torch.arange(n_dims + 1, dtype=src.dtype, device=dev))
        return torch.segment_reduce(z[order], "sum", offsets=starts, unsafe=True)

    def split_chunks(self, parts: torch.Tensor) -> "ChunkPlan":
        """The plan with chunk c sent as ``parts[c]`` chunks over the same positions, each part
        scaled by 1/sqrt(parts[c]) (see the module docstring); parts of chunk c become consecutive
        chunks. ``parts``: int [n_chunks], values in 1..MAX_PARTS. All ones = this plan. Computed
        on the CPU (the parts are side information, on the host anyway), returned on the plan's
        device."""
        parts = parts.to("cpu", torch.int64)
        if parts.numel() != self.n_chunks:
            raise ValueError(f"parts has {parts.numel()} entries, expected {self.n_chunks}")
        if bool((parts == 1).all()):
            return self  # no split: the plan stays where it is, no copy
        if self.device.type != "cpu":
            return self.to("cpu").split_chunks(parts).to(self.device)
        if int(parts.min()) < 1 or int(parts.max()) > MAX_PARTS:
            raise ValueError(f"parts must be in 1..{MAX_PARTS}")
        dims = torch.bincount(self.chunk_of, minlength=self.n_chunks)  # positions per chunk
        if not _within_growth(parts, dims):
            raise ValueError(f"split parts would grow the plan more than {MAX_SPLIT_GROWTH}x")
        start = torch.cumsum(dims, 0) - dims
        parent = torch.repeat_interleave(torch.arange(self.n_chunks, device="cpu"), parts)  # new chunk -> old chunk
        new_dims = dims[parent]
        chunk_of = torch.repeat_interleave(torch.arange(parent.numel(), device="cpu"), new_dims)
        offset = torch.arange(chunk_of.numel(), device="cpu") - (torch.cumsum(new_dims, 0) - new_dims)[chunk_of]
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
        part[order] = torch.arange(src.numel(), device="cpu") - first
        return ChunkPlan(src, chunk_of, int(parent.numel()), scale, part, self.prior)


def split_parts(kl_bits: torch.Tensor, chunk_bits: int, split_above: float,
                dims: torch.Tensor | None = None) -> torch.Tensor:
    """Parts per chunk from the chunks' real KL (bits): ceil(KL_c / chunk_bits) where KL_c >
    split_above x chunk_bits, else 1; at most MAX_PARTS. ``split_above`` 0 = never split.
    ``dims`` (positions per chunk): if the split plan would exceed MAX_SPLIT_GROWTH x the
    positions, the step is not split at all (all ones; the decoder refuses such plans)."""
    ones = torch.ones(kl_bits.numel(), dtype=torch.int64, device="cpu")
    if split_above <= 0:
        return ones
    kl = kl_bits.detach().to("cpu", torch.float64)
    parts = torch.where(kl > split_above * chunk_bits, torch.ceil(kl / chunk_bits).clamp(1, MAX_PARTS).to(torch.int64), ones)
    return parts if dims is None or _within_growth(parts, dims.cpu()) else ones


def _within_growth(parts: torch.Tensor, dims: torch.Tensor) -> bool:
    """Chunks of ``dims`` positions split into ``parts`` stay within MAX_SPLIT_GROWTH x the positions."""
    return int((parts * dims).sum()) <= MAX_SPLIT_GROWTH * int(dims.sum())


def coded_entries(weights: torch.Tensor | None, skip: float) -> torch.Tensor | None:
    """The entries a step codes when the lightest ones, carrying at most a fraction ``skip`` of
    its total expected KL, are sent as a prior sample instead (zero bits, no search).

    ``weights``: decoder-known expected KL per entry (``Backbone.kl_weights``; None = uniform,
    and then nothing is skipped: every entry carries the same share). Entries are dropped by
    value, whole ties at a time: the largest threshold w* with sum(w_i, w_i <= w*) <= skip x
    sum(w) (float64 sums on the CPU, in ascending order), and the coded entries are those with
    w_i > w*. Returns their flat indices (int64, ascending) or None when nothing is skipped.
    A pure function of the weights and ``skip``, as the decoder's plan must be.
    """
    if not 0 <= skip < 1:
        raise ValueError(f"skip must be in [0, 1), got {skip}")
    if weights is None or skip == 0:
        return None
    w = weights.detach().flatten().to("cpu", torch.float64).clamp_min(0)
    ws = torch.sort(w).values
    cum = torch.cumsum(ws, 0)
    last_tie = torch.ones_like(ws, dtype=torch.bool)
    last_tie[:-1] = ws[1:] > ws[:-1]
    ok = torch.nonzero((cum <= skip * float(cum[-1])) & last_tie).flatten()
    if ok.numel() == 0:
        return None
    return torch.nonzero(w > ws[ok[-1]]).flatten()


def make_plan(n_dims: int, n_chunks: int, key: int, weights: torch.Tensor | None = None,
              device: torch.device | str = "cpu", coded: torch.Tensor | None = None) -> ChunkPlan:
    """Shuffle entries (seeded by ``key``) and cut the shuffled order into ``n_chunks`` runs of
    equal total weight (weights = decoder-known expected KL per entry; None = uniform).

    ``coded``: the entries to plan (``coded_entries``; None = all); the others go to the plan's
    ``prior``. An entry heavier than a run's share W / n_chunks is split into m = ceil(w / share)
    parts of weight w / m (see the module docstring), so no position outweighs a run: every run
    is non-empty and at most n_dims + n_chunks positions exist. Runs are relabelled consecutively.
    Built on the CPU (the seeded ``randperm`` is the format's) and moved to ``device`` once.
    """
    if n_dims < 1 or n_chunks < 1:
        raise ValueError(f"need n_dims >= 1 and n_chunks >= 1, got {n_dims}, {n_chunks}")
    w = (torch.ones(n_dims, dtype=torch.float64, device="cpu") if weights is None
         else weights.detach().flatten().to("cpu", torch.float64).clamp_min(0))
    if w.numel() != n_dims:
        raise ValueError(f"weights have {w.numel()} entries, expected {n_dims}")
    prior = None
    if coded is not None:
        coded = coded.to("cpu", torch.int64)
        mask = torch.ones(n_dims, dtype=torch.bool, device="cpu")
        mask[coded] = False
        prior = torch.nonzero(mask).flatten()
        w = w[coded]
    n = w.numel()
    w = w + 1e-12 * w.sum().clamp_min(1e-300)  # no zero-weight entries
    total = w.sum()
    m = torch.ceil(w / (total / n_chunks) * (1 - 1e-9)).clamp_min(1).to(torch.int64)
    gen = torch.Generator().manual_seed(key)
    split = bool((m > 1).any())
    if not split:
        src = torch.randperm(n, generator=gen, device="cpu")
        vw = w[src]
        scale = part = None
    else:
        src0 = torch.repeat_interleave(torch.arange(n, device="cpu"), m)
        part0 = torch.arange(src0.numel(), device="cpu") - torch.repeat_interleave(torch.cumsum(m, 0) - m, m)
        perm = torch.randperm(src0.numel(), generator=gen, device="cpu")
        src, part = src0[perm], part0[perm]
        vw = (w / m)[src]
        scale = m[src].to(torch.float32).rsqrt()
    mid = torch.cumsum(vw, 0) - 0.5 * vw
    chunk_of = torch.floor(mid / total * n_chunks).to(torch.int64).clamp_(0, n_chunks - 1)
    _, chunk_of = torch.unique_consecutive(chunk_of, return_inverse=True)
    if coded is not None:
        src = coded[src]  # plan index -> latent entry
    return ChunkPlan(src, chunk_of, int(chunk_of[-1]) + 1, scale, part, prior).to(device)


def _arrival_key(key: int) -> int:
    return (key * 0x9E3779B1 + 0x632BE5AB) & 0x7FFFFFFF


#: hook of ``pfr_search`` on the arrival times: (rows int64 [B], Exp(1) draws float64 [B, C] of
#: those candidate rows) -> the gaps S_n - S_{n-1} to use (None = the draws: Poisson arrivals)
ArrivalGaps = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_block_entries(device: torch.device | str) -> int:
    """Entries per candidate block on ``device``: BLOCK_ENTRIES on the CPU, BLOCK_ENTRIES_CUDA on
    an accelerator (read at call time)."""
    return BLOCK_ENTRIES if torch.device(device).type == "cpu" else BLOCK_ENTRIES_CUDA


def block_size(n_positions: int, num_candidates: int, block_entries: int | None = None,
               device: torch.device | str = "cpu") -> int:
    """Candidates per block: at most ~``block_entries`` entries (None = the device's default), at
    least 1, at most all; the blocks a search needs at that size, made equal (one block shape per
    step: no ragged last block, whose views and work a step would pay apart)."""
    entries = block_entries or default_block_entries(device)
    most = max(1, min(num_candidates, entries // max(n_positions, 1)))
    return -(-num_candidates // -(-num_candidates // most))


def stream_hashes(key: int, n_cols: int, n_rows: int, device: torch.device | str,
                  wide: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop invariants of a step's stream: (P[col] [n_cols, 1], R[row] [1, n_rows]) for columns
    0..n_cols-1 and rows 0..n_rows-1 (``diffc.rcc.randomness``; int32, or int64 ``wide``), computed
    once per step."""
    cols = torch.arange(n_cols, dtype=torch.int32, device=device)
    rows = torch.arange(n_rows, dtype=torch.int32, device=device)
    return column_hashes(key, cols, wide)[:, None], row_hashes(key, rows, wide)[None, :]


class _Workspace:
    """Flat buffers of one candidate block of the torch search, reused by every block: the wide
    hashes (int64), their scratch, then the float64 bits and the table look-ups (int64), and the
    table index, then the block's float32 normals (int32): 20 bytes per entry
    (``randomness.wide_normal_``). The views of a block shape are made once per shape."""

    def __init__(self, n_positions: int, block: int, device: torch.device | str):
        n = n_positions * block
        self.x, self.bits = (torch.empty(n, dtype=torch.int64, device=device) for _ in range(2))
        self.index = torch.empty(n, dtype=torch.int32, device=device)
        self._views: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}

    def views(self, shape: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """(x, scratch) of ``shape``; x, bits, index, bits as float64, index as float32 (flat); the
        normals of ``shape`` (in index's bytes)."""
        v = self._views.get(shape)
        if v is None:
            n = shape[0] * shape[1]
            x, bits, index = self.x[:n], self.bits[:n], self.index[:n]
            z = index.view(torch.float32)
            v = self._views[shape] = (x.view(shape), bits.view(shape), x, bits, index, bits.view(torch.float64), z,
                                      z.view(shape))
        return v


def _normals_block(col_h: torch.Tensor, row_h: torch.Tensor, ws: _Workspace | None) -> torch.Tensor:
    """Candidates of the rows hashed in ``row_h`` ([1, B]) over the columns of ``col_h`` ([D, 1]),
    wide hashes: float32 [D, B], contiguous, in ``ws`` (overwritten) or freshly allocated (``compile``)."""
    if ws is None:
        return hash_to_normal(entry_hashes(col_h, row_h))
    x2, t2, x, bits, index, bits_f64, z, z2 = ws.views((col_h.shape[0], row_h.shape[1]))
    entry_hashes(col_h, row_h, x2, t2)
    wide_normal_(x, bits, index, bits_f64, z)
    return z2


def _iid_dots(col_h: torch.Tensor, row_h: torch.Tensor, u_col: torch.Tensor, offsets: torch.Tensor,
              ws: _Workspace | None = None) -> torch.Tensor:
    """z_n . u_c of the block's candidates for every chunk: float32 [C, B], one segment sum over
    the chunks' contiguous runs of positions (sequential float32 sums in position order; torch
    ops, the same numbers as ``diffc.rcc.fused.iid_dots``)."""
    z = _normals_block(col_h, row_h, ws).mul_(u_col)
    return torch.segment_reduce(z, "sum", offsets=offsets, axis=0, unsafe=True)


def scorer(u: torch.Tensor, offsets: torch.Tensor, key: int, num_rows: int, block_entries: int | None = None,
           compile: bool = False) -> tuple[Callable[[int, int], torch.Tensor], int]:
    """(dots, rows per block): ``dots(n0, n1)`` = z_n . u_c of rows n0..n1-1 of the stream ``key``
    over the positions of ``u`` (float32 [P], coding order) for every chunk c of ``offsets``:
    float32 [C, n1 - n0]. On the CPU (not ``compile``) by the fused kernel in blocks of
    FUSED_ROWS rows (``block_entries`` // P when given); elsewhere by ``_iid_dots`` in
    ``block_size`` blocks. The numbers are the same either way and whatever the blocks."""
    dev, p = u.device, u.numel()
    u32 = u.to(torch.float32)
    if dev.type == "cpu" and not compile:
        col_h, row_h = stream_hashes(key, p, num_rows, dev)
        rows = min(num_rows, FUSED_ROWS) if block_entries is None else block_size(p, num_rows, block_entries, dev)
        workers = search_workers()
        ranges = fused.work_ranges(offsets, workers)  # once per step, not per block
        return (lambda n0, n1: fused.iid_dots(col_h, row_h[:, n0:n1], u32, offsets, workers=workers,
                                              ranges=ranges)), rows
    col_h, row_h = stream_hashes(key, p, num_rows, dev, wide=True)
    wide_tables(dev)  # made before a compiled block reads them (tracing cannot run the numpy that makes them)
    block = block_size(p, num_rows, block_entries, dev)
    fn, ws = (compiled(_iid_dots), None) if compile else (_iid_dots, _Workspace(p, block, dev))
    u_col = u32[:, None]
    return (lambda n0, n1: fn(col_h, row_h[:, n0:n1], u_col, offsets, ws)), block


@functools.lru_cache(maxsize=None)
def compiled(fn: Callable) -> Callable:
    """``torch.compile`` of a per-block function (shape-generic: one compilation for all steps)."""
    fn = torch.compile(fn, dynamic=True)
    sync_inductor()
    return fn


def encode_chunks(u: torch.Tensor, plan: ChunkPlan, num_candidates: int, key: int, *,
                  gaps: ArrivalGaps | None = None, block_entries: int | None = None,
                  compile: bool = False) -> torch.Tensor:
    """PFR-select one candidate index per chunk.

    Args:
        u: float32 [P], the standardised shift (mu_q - mu_p) / std per position of the coding
            order (``plan.coded(u)``: entries gathered, split parts scaled).
        plan: the chunk plan (moved to u's device if it is not there).
        num_candidates: K, candidates searched per chunk.
        key: stream key of this step.
        gaps: arrival-time hook (``pfr_search``; None = the codec's Poisson arrivals).
        block_entries: candidate entries per block (None = ``default_block_entries``); no effect
            on the result.
        compile: run the per-block functions through ``torch.compile``.
    Returns:
        int64 [n_chunks] selected indices in 0..K-1, on u's device (no host sync).
    """
    dev = u.device
    plan = plan.to(dev)
    with search_threads(dev):  # the loop invariants (column and row hashes) too
        dots, block = scorer(u, plan.offsets, key, num_candidates, block_entries, compile)
        return pfr_search(dots, plan.n_chunks, num_candidates, key, dev, block, gaps=gaps, compile=compile)


def _select_block(dots: torch.Tensor, col_a: torch.Tensor, row_a: torch.Tensor, rows: torch.Tensor,
                  best_score: torch.Tensor, best_idx: torch.Tensor, carry: torch.Tensor,
                  gaps: ArrivalGaps | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One selection block: rows ``rows`` (int64 [B]) with scores ``dots`` (float32 [C, B]); the
    arrival stream's hashes ``col_a`` [1, C] and ``row_a`` [B, 1]; the running (best score, best
    index, S of the last row so far) -> the same after this block. S is one sequential sum from
    ``carry`` (the block's first gap is added to it), so the blocks change no S."""
    exps = -exact_log(hash_to_uniform(entry_hashes(col_a, row_a)))  # [B, C] Exp(1)
    if gaps is not None:
        exps = gaps(rows, exps)
    exps[0] += carry
    s = torch.cumsum(exps, 0)
    score = exact_log(s) - dots.T.to(torch.float64)  # [B, C]
    bs, bi = score.min(0)
    better = bs < best_score
    return torch.where(better, bs, best_score), torch.where(better, bi + rows[0], best_idx), s[-1]


def pfr_search(dots: Callable[[int, int], torch.Tensor], n_chunks: int, num_candidates: int, key: int,
               device: torch.device | str, rows_per_block: int, *, gaps: ArrivalGaps | None = None,
               compile: bool = False) -> torch.Tensor:
    """The PFR choice N_c = argmin_n [log S_n - z_n . u_c] of every chunk, from the candidates' scores.

    ``dots(n0, n1)`` returns float32 [n_chunks, n1 - n0]: z_n . u_c (nats of log q/p up to a
    constant) of candidates n0..n1-1, asked for consecutive runs of at most ``rows_per_block``
    rows from 0 up to K-1 in order. The arrival times S_n = E_0 + ... + E_n (E = -log of the
    ``uniforms`` of the step's arrival stream, one per (candidate, chunk)) are the same whatever
    made the candidates; ``gaps`` may replace each E_n by a function of (n, E_n) (an opt-in
    construction, benchmarks/ordered_arrivals.py). Scores are gathered into selection blocks of
    ~SELECT_ENTRIES (candidate, chunk) pairs. Ties go to the smallest index. Returns int64
    [n_chunks] on ``device``, without a host sync.
    """
    c, k = n_chunks, num_candidates
    akey = _arrival_key(key)
    wide = wide_on(device)
    col_a = column_hashes(akey, torch.arange(c, dtype=torch.int32, device=device), wide)[None, :]  # [1, C]
    row_a = row_hashes(akey, torch.arange(k, dtype=torch.int32, device=device), wide)[:, None]  # [K, 1]
    rows = torch.arange(k, dtype=torch.int64, device=device)
    state = (torch.full((c,), math.inf, dtype=torch.float64, device=device),
             torch.zeros(c, dtype=torch.int64, device=device), torch.zeros(c, dtype=torch.float64, device=device))
    step = compiled(_select_block) if compile else _select_block
    sel = min(k, rows_per_block * max(1, SELECT_ENTRIES // max(c * rows_per_block, 1)))
    buf = torch.empty(c, sel, dtype=torch.float32, device=device) if sel > rows_per_block else None
    with search_threads(device):
        for s0 in range(0, k, sel):  # loop over selection *blocks*
            s1 = min(s0 + sel, k)
            if buf is None:
                d = dots(s0, s1)
            else:
                d = buf[:, :s1 - s0]
                for n0 in range(s0, s1, rows_per_block):  # loop over candidate *blocks*
                    n1 = min(n0 + rows_per_block, s1)
                    d[:, n0 - s0:n1 - s0] = dots(n0, n1)
            state = step(d, col_a, row_a[s0:s1], rows[s0:s1], *state, gaps)
    return state[1]


def codebook_scores(u: torch.Tensor, key: int, num_codes: int, n_dims: int, *, block_entries: int | None = None,
                    compile: bool = False) -> torch.Tensor:
    """<C_n, u> for every code n of a step's codebook (float64 [num_codes] on u's device, no host
    sync): code n = row n of the step's stream over ``n_dims`` columns (the DDCM peers' codebook,
    ``diffc.codebook.channel.CodebookChannel``), K x D candidate entries: the i.i.d. scorer with one chunk
    (``scorer``: a sequential float32 sum in column order, the same on every device, thread count
    and block size)."""
    dev = u.device
    offsets = torch.tensor([0, n_dims], dtype=torch.int64, device=dev)
    g = torch.empty(num_codes, dtype=torch.float64, device=dev)
    with search_threads(dev):
        dots, block = scorer(u.flatten(), offsets, key, num_codes, block_entries, compile)
        for n0 in range(0, num_codes, block):  # loop over code *blocks*
            n1 = min(n0 + block, num_codes)
            g[n0:n1] = dots(n0, n1)[0]
    return g


def decode_chunks(indices: torch.Tensor, plan: ChunkPlan, key: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Regenerate the selected candidates: float32 [P] in coding order (chunk c's entries = z_{N_c}).

    Only the selected rows are generated (random access), one vectorised call for all chunks
    (``stream_entries``).
    """
    cols = torch.arange(plan.src.numel(), dtype=torch.int32, device=device)
    return stream_entries(key, indices.to(device)[plan.chunk_of.to(device)], cols)


def stream_entries(key: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Entries (rows[i], cols[i]) of the stream ``key`` (int tensors of one length, or ``rows`` of
    one element for every i): float32 [len(cols)] on their device, hashes included. On the CPU
    the fused kernel (one pass, no parallel region), elsewhere ``randomness.normals`` (the wide
    form); the same bits."""
    if wide_on(cols.device):
        return normals(key, rows, cols)
    return fused.stream_normals(key, rows.to(torch.int32), cols.to(torch.int32))


def chunk_sums(values: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Sum of per-position values over each chunk (float64 [n_chunks]; sequential in position order)."""
    offsets = plan.to(values.device).offsets
    return torch.segment_reduce(values.to(torch.float64), "sum", offsets=offsets, unsafe=True)
