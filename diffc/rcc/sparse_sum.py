"""Sparse-sum PFR candidates: cheap candidates from a shared bank of Gaussian atoms.

Per step, a bank of K_a atoms A_j in R^P (j = 0..K_a-1, P = positions of the step's coding
order, ``diffc.rcc.pfr.ChunkPlan``) is row j of the step's atom stream (``diffc.rcc.randomness``: atom =
row, position = column), so A_j[p] ~ N(0, 1) i.i.d. The bank is stratified into M groups of
G = K_a / M atoms. Candidate n of chunk c (positions I_c) takes one signed atom per group,

    z_{n,c} = sum_{g < M} s_{n,c,g} A_{j(n,c,g)}[I_c] / sqrt(M),   j(n,c,g) = g G + r_{n,c,g},

with r (uniform in 0..G-1, G a power of two) and the sign s (+-1) from the low bits of one
32-bit hash of (step, n, c, g) (the selection stream: row n, column c M + g). The M atoms are
distinct (one per group) and independent of the choice, so z_{n,c} ~ N(0, I) exactly, and chunks
with disjoint positions get independent candidates. Candidates of one chunk are *not*
independent of each other (they share atoms); tests/test_sparse_sum.py measures the law of the
PFR-selected sample against i.i.d. candidates.

Cost. PFR sees a candidate only through z_{n,c} . u_c = sum_g s P_{c,j} / sqrt(M) with the
projections P_{c,j} = u_c . A_j[I_c] (float32 [C, K_a]), computed once per step: K_a x P atom
entries, the same work as K_a i.i.d. candidates (``diffc.rcc.pfr.scorer``). Each candidate
then costs M hashes and M table look-ups per chunk instead of d_c hashed normals. The decoder
regenerates only the selected candidates: M atom entries per position.

Units: u in standard deviations of p (KL = |u|^2 / 2 nats); scores in nats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..determinism import search_threads
from .pfr import ArrivalGaps, ChunkPlan, compiled, default_block_entries, pfr_search, scorer
from .randomness import column_hashes, entry_hashes, normals, row_hashes
from .spec import check_bank

#: (candidate, chunk, atom) triples per encoder block, per entry of the device's candidate block
#: (``diffc.rcc.pfr.default_block_entries``): 2^20 triples on the CPU (~8 MiB of int32 hashes and
#: scratch, cache-friendly), 2^28 on CUDA
TRIPLES_PER_ENTRY = 2


def _atom_key(key: int) -> int:
    """The step's atom stream (another stream than its candidates' and arrivals')."""
    return (key * 0x2545F491 + 0x4F6CDD1D) & 0x7FFFFFFF


def _select_key(key: int) -> int:
    """The step's selection stream: which atoms and signs candidate n of chunk c takes."""
    return (key * 0x68E31DA4 + 0x1B56C4E9) & 0x7FFFFFFF


@dataclass(frozen=True)
class SparseSum:
    """The sparse-sum generator: ``atoms`` = K_a (bank size), ``m`` = M atoms per candidate
    (K_a = M x G with G = 2^b atoms per group, a power of two so that an atom and its sign are
    the low b + 1 bits of one hash)."""

    atoms: int
    m: int

    def __post_init__(self):
        check_bank(self.atoms, self.m)

    @property
    def group(self) -> int:
        """G = K_a / M atoms per group (a power of two)."""
        return self.atoms // self.m

    def hashes(self, key: int, rows: torch.Tensor, cols: torch.Tensor, out: torch.Tensor | None = None,
               scratch: torch.Tensor | None = None) -> torch.Tensor:
        """The selection hashes of candidates ``rows`` in chunks ``cols`` (int tensors broadcasting
        to a shape S, each with a trailing axis of size 1): int32 [*S[:-1], M], one per (row,
        chunk, group); into ``out`` with ``scratch`` (int32, that shape) when given. Bits 0..b-1
        (G = 2^b) pick the atom within group g, bit b its sign (set = -1)."""
        g = torch.arange(self.m, dtype=torch.int32, device=rows.device)
        sel = _select_key(key)
        return entry_hashes(column_hashes(sel, cols.to(torch.int32) * self.m + g), row_hashes(sel, rows),
                            out, scratch)

    def choices(self, key: int, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Atoms and signs of candidates ``rows`` in chunks ``cols`` (same-shape int tensors S):
        (j int64 [*S, M] in 0..K_a-1, negative bool [*S, M] = sign -1)."""
        h = self.hashes(key, rows[..., None], cols[..., None])
        g = torch.arange(self.m, dtype=torch.int64, device=h.device)
        j = h.bitwise_and(self.group - 1).to(torch.int64) + g * self.group
        return j, h.bitwise_and_(self.group).bool()

    def projections(self, u: torch.Tensor, plan: ChunkPlan, key: int, *, block_entries: int | None = None,
                    compile: bool = False) -> torch.Tensor:
        """P_{c,j} = u_c . A_j[I_c]: float32 [n_chunks, K_a], the atom bank in blocks of rows (the
        i.i.d. candidates' scorer, ``diffc.rcc.pfr.scorer``, on the atom stream)."""
        dev = u.device
        plan = plan.to(dev)
        dots, block = scorer(u, plan.offsets, _atom_key(key), self.atoms, block_entries, compile)
        out = torch.empty(plan.n_chunks, self.atoms, dtype=torch.float32, device=dev)
        for n0 in range(0, self.atoms, block):  # loop over atom *blocks*
            n1 = min(n0 + block, self.atoms)
            out[:, n0:n1] = dots(n0, n1)
        return out

    def encode_chunks(self, u: torch.Tensor, plan: ChunkPlan, num_candidates: int, key: int, *,
                      gaps: ArrivalGaps | None = None, block_entries: int | None = None,
                      compile: bool = False) -> torch.Tensor:
        """PFR-select one candidate index per chunk among ``num_candidates`` sparse-sum candidates
        (arguments and result as ``diffc.rcc.pfr.encode_chunks``; ``block_entries`` sizes the atom
        blocks, and the candidate blocks hold TRIPLES_PER_ENTRY x as many triples; neither changes
        the result).

        Scores come from a signed copy of the projections, T[c, g, s, r] = (-1)^s P_{c, g G + r}
        (float32 [C, M, 2, G]): a candidate's score is M look-ups at (c, g, low b + 1 bits of its
        hash) and a sum. Blocks are [C, B, M] (chunk-major), so consecutive look-ups stay in one
        chunk's 8 K_a bytes of the table (cache-resident)."""
        with search_threads(u.device):  # the projections and the selection's hashes too
            return self._encode_chunks(u, plan, num_candidates, key, gaps, block_entries, compile)

    def _encode_chunks(self, u, plan, num_candidates, key, gaps, block_entries, compile) -> torch.Tensor:
        dev = u.device
        c, m, grp = plan.n_chunks, self.m, self.group
        proj = self.projections(u, plan, key, block_entries=block_entries, compile=compile).view(c, m, 1, grp)
        table = torch.cat([proj, -proj], 2).flatten()
        wide = table.numel() > 1 << 31  # int64 look-up indices only for a table that large
        base = (torch.arange(c * m, dtype=torch.int64, device=dev) * (2 * grp)).view(c, 1, m)
        base = base if wide else base.to(torch.int32)
        sel = _select_key(key)
        g = torch.arange(m, dtype=torch.int32, device=dev)
        col_h = column_hashes(sel, torch.arange(c, dtype=torch.int32, device=dev)[:, None, None] * m + g)  # [C, 1, M]
        row_h = row_hashes(sel, torch.arange(num_candidates, dtype=torch.int32, device=dev))[None, :, None]  # [1, K, 1]
        triples = TRIPLES_PER_ENTRY * (block_entries or default_block_entries(dev))
        block = max(1, min(num_candidates, triples // (c * m)))
        score = compiled(_sparse_dots) if compile else _sparse_dots
        bufs = None if compile else (torch.empty(2, c * block * m, dtype=torch.int32, device=dev),
                                     torch.empty(c * block * m, dtype=torch.float32, device=dev))
        dots = lambda n0, n1: score(col_h, row_h[:, n0:n1], table, base, 2 * grp - 1, 1.0 / math.sqrt(m), bufs)
        return pfr_search(dots, c, num_candidates, key, dev, block, gaps=gaps, compile=compile)

    def decode_chunks(self, indices: torch.Tensor, plan: ChunkPlan, key: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """The selected candidates, float32 [P] in coding order (as ``diffc.rcc.pfr.decode_chunks``):
        for each position, its chunk's M signed atom entries, summed in group order, / sqrt(M)."""
        chunk_of = plan.chunk_of.to(device)
        rows = indices.to(device)[chunk_of].to(torch.int32)
        j, neg = self.choices(key, rows, chunk_of)  # [P, M]
        pos = torch.arange(chunk_of.numel(), dtype=torch.int32, device=device)[:, None]
        a = normals(_atom_key(key), j, pos)  # [P, M]: A_j[p]
        return torch.where(neg, -a, a).sum(1).mul_(1.0 / math.sqrt(self.m))


def _sparse_dots(col_h: torch.Tensor, row_h: torch.Tensor, table: torch.Tensor, base: torch.Tensor, mask: int,
                 inv_sqrt_m: float, bufs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """z_n . u_c of a block's sparse-sum candidates: float32 [C, B]. ``col_h`` [C, 1, M] and
    ``row_h`` [1, B, 1] are the selection stream's hashes, ``table`` the signed projections
    (flat), ``base`` [C, 1, M] each (chunk, group)'s offset in it, ``mask`` = 2G - 1; ``bufs``
    (int32 [2, >= C B M], float32 [>= C B M]) an optional workspace."""
    shape = (col_h.shape[0], row_h.shape[1], col_h.shape[2])
    n = math.prod(shape)
    hs = (None, None) if bufs is None else (bufs[0][0, :n].view(shape), bufs[0][1, :n].view(shape))
    h = entry_hashes(col_h, row_h, *hs).bitwise_and_(mask)  # [C, B, M]
    flat = h + base if base.dtype != h.dtype else h.add_(base)  # index into the table
    vals = torch.index_select(table, 0, flat.view(-1), out=None if bufs is None else bufs[1][:n])
    return vals.view(shape).sum(-1).mul_(inv_sqrt_m)
