"""Sparse-sum PFR candidates: cheap candidates from a shared bank of Gaussian atoms.

Per step, a bank of K_a atoms A_j in R^P (j = 0..K_a-1, P = positions of the step's coding
order, ``diffc.pfr.ChunkPlan``) is row j of the step's atom stream (``diffc.randomness``: atom =
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
entries, the same work as K_a i.i.d. candidates (``diffc.pfr.candidate_blocks``). Each candidate
then costs M hashes and M table look-ups per chunk instead of d_c hashed normals. The decoder
regenerates only the selected candidates: M atom entries per position.

Units: u in standard deviations of p (KL = |u|^2 / 2 nats); scores in nats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .pfr import ChunkPlan, block_size, candidate_blocks, pfr_select
from .randomness import column_hashes, entry_hashes, normals, row_hashes

#: most atoms per candidate (bounds the per-candidate work and the selection hash's columns)
MAX_M = 64
#: largest atom bank (rows of the atom stream; the projection table is 4 x C x K_a bytes)
MAX_ATOMS = 1 << 20
#: (candidate, chunk, atom) triples per encoder block: ~8 MiB of int32 hashes and scratch,
#: cache-friendly on CPU like ``diffc.pfr.BLOCK_ENTRIES``
BLOCK_TRIPLES = 1 << 20


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
        if not 1 <= self.m <= MAX_M:
            raise ValueError(f"sparse_m must be in 1..{MAX_M}, got {self.m}")
        g = self.atoms // self.m
        if not self.m <= self.atoms <= MAX_ATOMS or self.atoms != g * self.m or g & (g - 1):
            raise ValueError(f"atoms must be sparse_m ({self.m}) x a power of two, at most {MAX_ATOMS}, "
                             f"got {self.atoms}")

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

    def projections(self, u: torch.Tensor, plan: ChunkPlan, key: int) -> torch.Tensor:
        """P_{c,j} = u_c . A_j[I_c]: float32 [n_chunks, K_a], the atom bank in blocks of rows."""
        dev = u.device
        u_col = u.to(torch.float32)[:, None]
        chunk_of = plan.chunk_of.to(dev)
        out = torch.empty(plan.n_chunks, self.atoms, dtype=torch.float32, device=dev)
        dots = torch.empty(plan.n_chunks, block_size(u.numel(), self.atoms), dtype=torch.float32, device=dev)
        for rows, a in candidate_blocks(_atom_key(key), u.numel(), self.atoms, dev):
            d = dots[:, :rows.numel()].zero_().index_add_(0, chunk_of, a.mul_(u_col))  # [C, B]
            out[:, int(rows[0]):int(rows[-1]) + 1] = d
        return out

    def encode_chunks(self, u: torch.Tensor, plan: ChunkPlan, num_candidates: int, key: int,
                      arrivals: str = "poisson") -> torch.Tensor:
        """PFR-select one candidate index per chunk among ``num_candidates`` sparse-sum candidates
        (arguments, ``arrivals`` included, and result as ``diffc.pfr.encode_chunks``).

        Scores come from a signed copy of the projections, T[c, g, s, r] = (-1)^s P_{c, g G + r}
        (float32 [C, M, 2, G]): a candidate's score is M look-ups at (c, g, low b + 1 bits of its
        hash) and a sum. Blocks are [C, B, M] (chunk-major), so consecutive look-ups stay in one
        chunk's 8 K_a bytes of the table (cache-resident)."""
        dev = u.device
        c, m, grp = plan.n_chunks, self.m, self.group
        proj = self.projections(u, plan, key).view(c, m, 1, grp)
        table = torch.cat([proj, -proj], 2).flatten()
        wide = table.numel() > 1 << 31  # int64 look-up indices only for a table that large
        base = (torch.arange(c * m, dtype=torch.int64, device=dev) * (2 * grp)).view(c, 1, m)
        base = base if wide else base.to(torch.int32)
        chunks = torch.arange(c, dtype=torch.int32, device=dev)[:, None, None]  # [C, 1, 1]
        block = max(1, min(num_candidates, BLOCK_TRIPLES // (c * m)))
        h_buf, t_buf = torch.empty(2, c * block * m, dtype=torch.int32, device=dev)  # hashes, scratch
        v_buf = torch.empty(c * block * m, dtype=torch.float32, device=dev)  # looked-up values
        inv_sqrt_m = 1.0 / math.sqrt(m)

        def dot_blocks():
            for n0 in range(0, num_candidates, block):  # loop over candidate *blocks*
                rows = torch.arange(n0, min(n0 + block, num_candidates), dtype=torch.int32, device=dev)
                size = c * rows.numel() * m
                h = self.hashes(key, rows[None, :, None], chunks, h_buf[:size].view(c, -1, m),
                                t_buf[:size].view(c, -1, m))  # [C, B, M]
                h.bitwise_and_(2 * grp - 1)
                flat = h + base if wide else h.add_(base)  # [C, B, M]: index into the table
                vals = torch.index_select(table, 0, flat.view(-1), out=v_buf[:size])
                yield rows, vals.view(c, -1, m).sum(-1).mul_(inv_sqrt_m)  # [C, B]: z_n . u_c

        return pfr_select(dot_blocks(), c, key, dev, arrivals, num_candidates)

    def decode_chunks(self, indices: torch.Tensor, plan: ChunkPlan, key: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """The selected candidates, float32 [P] in coding order (as ``diffc.pfr.decode_chunks``):
        for each position, its chunk's M signed atom entries, summed in group order, / sqrt(M)."""
        chunk_of = plan.chunk_of.to(device)
        rows = indices.to(device)[chunk_of].to(torch.int32)
        j, neg = self.choices(key, rows, chunk_of)  # [P, M]
        pos = torch.arange(chunk_of.numel(), dtype=torch.int32, device=device)[:, None]
        a = normals(_atom_key(key), j, pos)  # [P, M]: A_j[p]
        return torch.where(neg, -a, a).sum(1).mul_(1.0 / math.sqrt(self.m))
