"""Fused CPU kernels of the candidate search (numba): hash -> normal -> score in one pass.

The same numbers as ``diffc.rcc.randomness`` (lowbias32 entry hashes, the integer-exact inverse-CDF
normal), bit for bit, without a temporary: each kernel is one single-threaded loop nest that a
busy neighbour process cannot stall (torch's eager path runs ~12 integer passes per block, each an
OpenMP parallel region that ends on a barrier). Compiled on first use and cached on disk
(``cache=True``); ``nogil``: ``iid_dots`` runs one on several threads, each taking whole chunks.

Inputs are numpy views of the torch tensors (no copy): hashes as uint32, ``u`` float32, the
normal table int64 (``diffc.rcc.randomness.normal_table``).

Summation order (scores, not candidates: the decoder never recomputes a score): a chunk's score
z_n . u_c is one sequential float32 sum over the chunk's positions in coding order, each term
float32(z * u) -- the order of the torch path's segment sum, so both paths give the same scores.
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from .randomness import NORMAL_FRAC_BITS, ROW_SALT, normal_table

_M32 = np.uint64(0xFFFFFFFF)
_C1 = np.uint64(0x7FEB352D)
_C2 = np.uint64(0x846CA68B)
_SCALE = np.float32(2.0 ** -NORMAL_FRAC_BITS)
#: entries per block of ``stream_normals`` (its scratch stays in L1)
PAIR_BLOCK = 1024

#: tasks per thread of a parallel ``iid_dots``: the threads pull them as they finish, so one on a
#: core that another process holds takes fewer (one join per call, no barrier per pass)
TASKS_PER_WORKER = 4


@njit(inline="always")
def _hash32(x):
    """lowbias32 of x (uint64 < 2^32)."""
    x ^= x >> np.uint64(16)
    x = (x * _C1) & _M32
    x ^= x >> np.uint64(15)
    x = (x * _C2) & _M32
    return x ^ (x >> np.uint64(16))


@njit(inline="always")
def _octave(x, n, work):
    """The table slot of hash x (uint64 < 2^32) into column n of ``work`` (int64 [6, >= B]): the
    index, fraction, shift and sign of ``diffc.rcc.randomness.hash_to_normal``."""
    v = np.int64(x & np.uint64(0x7FFFFFFF))
    sh = np.int64(64) - np.int64(leading_zeros(np.uint64(v >> 9)))  # bit length of v >> 9
    work[0, n] = (sh << 8) + (v >> sh)
    work[1, n] = v & ((np.int64(1) << sh) - 1)
    work[2, n] = sh
    work[3, n] = np.int64(x >> np.uint64(31))


@njit(inline="always")
def _interpolate(b, table, work, z):
    """z[n] for the b slots in ``work`` (``_octave``): the look-ups alone in one loop (the gather
    keeps it scalar), the fixed-point interpolation in another that vectorises."""
    idx, frac, shift, sign, t0, dt = work[0], work[1], work[2], work[3], work[4], work[5]
    for n in range(b):
        a = table[idx[n]]
        t0[n] = a
        dt[n] = table[idx[n] + 1] - a
    for n in range(b):
        sh = shift[n]
        q = ((t0[n] << sh) + dt[n] * frac[n] + ((np.int64(1) << sh) >> 1)) >> sh
        s = sign[n]
        z[n] = np.float32(np.int32((q ^ -s) + s)) * _SCALE


@njit(inline="always")
def _row(p, row_h, table, work, z):
    """z[n] = ``diffc.rcc.randomness.hash_to_normal`` of h(p ^ row_h[n]) for every n (p, the column's
    hash, uint64 < 2^32; ``work`` int64 [6, >= B] scratch): three loops so that the two without a
    table look-up vectorise (hash, bit length, index; then the interpolation), the look-ups alone
    in the middle (measured 2.1x over one loop, which the gather keeps scalar)."""
    b = row_h.shape[0]
    for n in range(b):
        _octave(_hash32(p ^ np.uint64(row_h[n])), n, work)
    _interpolate(b, table, work, z)


@njit(cache=True, nogil=True)
def _entries(key, rows, cols, table, out):
    """out[i] = entry (rows[i], cols[i]) of the stream ``key`` (``diffc.rcc.randomness.normals``:
    column hash, row hash, entry hash, normal; ``rows`` of one element: that row for every i), in
    blocks of PAIR_BLOCK."""
    k, salt = np.uint64(key), np.uint64(ROW_SALT)
    work = np.empty((6, PAIR_BLOCK), np.int64)
    z = np.empty(PAIR_BLOCK, np.float32)
    one_row = rows.shape[0] == 1
    rh0 = _hash32(_hash32((np.uint64(rows[0]) + k) & _M32) ^ salt)  # the one row's hash, once
    n = cols.shape[0]
    for s in range(0, n, PAIR_BLOCK):
        b = min(PAIR_BLOCK, n - s)
        for j in range(b):
            rh = rh0 if one_row else _hash32(_hash32((np.uint64(rows[s + j]) + k) & _M32) ^ salt)
            ch = _hash32((np.uint64(cols[s + j]) + k) & _M32)
            _octave(_hash32(ch ^ rh), j, work)
        _interpolate(b, table, work, z)
        out[s:s + b] = z[:b]


@njit(cache=True, nogil=True)
def _dots(col_h, row_h, u, offsets, table, out):
    b = row_h.shape[0]
    work = np.empty((6, b), np.int64)
    z = np.empty(b, np.float32)
    for c in range(offsets.shape[0] - 1):
        acc = out[c]
        acc[:] = 0
        for d in range(offsets[c], offsets[c + 1]):
            _row(np.uint64(col_h[d]), row_h, table, work, z)
            ud = u[d]
            for n in range(b):
                acc[n] += z[n] * ud


@njit(cache=True, nogil=True)
def _normals(col_h, row_h, table, out):
    work = np.empty((6, row_h.shape[0]), np.int64)
    for d in range(col_h.shape[0]):
        _row(np.uint64(col_h[d]), row_h, table, work, out[d])


def _u32(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(-1).numpy().view(np.uint32)


@functools.lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="diffc-search")


os.register_at_fork(after_in_child=_pool.cache_clear)  # a forked child has none of the parent's threads


def chunk_ranges(offsets: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Consecutive chunk ranges [c0, c1) covering every chunk of ``offsets`` (positions of chunk c:
    offsets[c]..offsets[c+1]-1), at most ``parts`` of them, each about the same number of positions
    (a chunk is never split: its score stays one sequential sum)."""
    c = offsets.shape[0] - 1
    targets = np.linspace(0, offsets[-1], parts + 1)[1:-1]
    cuts = np.unique(np.concatenate([[0], np.searchsorted(offsets, targets), [c]]).clip(0, c))
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


def work_ranges(offsets: torch.Tensor, workers: int) -> list[tuple[int, int]]:
    """The chunk ranges ``iid_dots`` hands to ``workers`` threads: TASKS_PER_WORKER per thread
    (``chunk_ranges``); all chunks in one at one thread."""
    c = offsets.numel() - 1
    return chunk_ranges(offsets.contiguous().numpy(), TASKS_PER_WORKER * workers) if workers > 1 and c > 1 else [(0, c)]


def iid_dots(col_h: torch.Tensor, row_h: torch.Tensor, u: torch.Tensor, offsets: torch.Tensor,
             out: torch.Tensor | None = None, workers: int = 1,
             ranges: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """z_n . u_c for the rows hashed in ``row_h`` (int32, B) and every chunk c (positions
    offsets[c]..offsets[c+1]-1 of ``col_h`` int32 [P], ``u`` float32 [P]): float32 [C, B] (into
    ``out``, contiguous, when given). CPU tensors. ``workers`` > 1: the chunks in ``ranges``
    (default ``work_ranges(offsets, workers)``; a caller scoring many blocks of one step computes
    them once) on that many threads; the same numbers whatever the count (each chunk's sum is
    computed by one thread, in position order)."""
    c, b = offsets.numel() - 1, row_h.numel()
    out = torch.empty(c, b, dtype=torch.float32, device="cpu") if out is None else out
    args = (_u32(col_h), _u32(row_h), u.contiguous().view(-1).numpy())
    offs, table, res = offsets.contiguous().numpy(), normal_table(), out.numpy()
    ranges = work_ranges(offsets, workers) if ranges is None else ranges
    if len(ranges) == 1:
        _dots(*args, offs, table, res)
    else:
        list(_pool(workers).map(lambda r: _dots(*args, offs[r[0]:r[1] + 1], table, res[r[0]:r[1]]), ranges))
    return out


def normals_block(col_h: torch.Tensor, row_h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Entries (row, col) for the columns hashed in ``col_h`` (int32, D) and the rows in ``row_h``
    (int32, B): float32 [D, B] (into ``out``, contiguous, when given). CPU tensors."""
    d, b = col_h.numel(), row_h.numel()
    out = torch.empty(d, b, dtype=torch.float32, device="cpu") if out is None else out
    _normals(_u32(col_h), _u32(row_h), normal_table(), out.numpy())
    return out


def stream_normals(key: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Entries (rows[i], cols[i]) of the stream ``key`` for every i (``rows`` of one element: that
    row throughout): float32 [len(cols)] from int32 CPU tensors of non-negative values, the same
    bits as ``diffc.rcc.randomness.normals`` of the pairs, the hashes included in one pass (no
    torch op: nothing to wait on a busy core)."""
    out = torch.empty(cols.numel(), dtype=torch.float32, device="cpu")
    _entries(int(key), _u32(rows), _u32(cols), normal_table(), out.numpy())
    return out
