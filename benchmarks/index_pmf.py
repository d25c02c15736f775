"""A tabulated law of the PFR index per (chunk KL budget, candidate count): an opt-in alternative
to the truncated Zipf law of ``diffc.rcc.entropy`` (not used by the codec; measured by
benchmarks/coding_efficiency.py's frontier as ideal code lengths). Not a benchmark:
``python benchmarks/index_pmf.py`` does nothing.

The law of the index N selected by truncated PFR depends on a chunk only through its KL (its shift
|u|), on K and on the arrival times (``diffc.rcc.pfr.pfr_search``, benchmarks/ordered_arrivals.py). The table is that law for a chunk
of exactly ``chunk_bits`` of KL, estimated by running the codec's own search on TABLE_CHUNKS
one-dimensional chunks (shift r = sqrt(2 chunk_bits ln 2); PFR sees any chunk only through z . u,
``diffc.rcc.pfr``) with a fixed stream key, so every run derives the same table.

Bins: m = N + 1 in 1..K is binned by its octave and its top BIN_BITS bits after the leading one,
exactly in integers (m < 2^BIN_BITS: one bin per m). Within a bin the law is uniform. The bin
masses are the simulated frequencies mixed with the Zipf law's (weight ZIPF_MIX), so an index the
simulation never produced still costs at most the Zipf law's cost + log2(1 / ZIPF_MIX) bits.

A codec would have to ship the table (the bin counts, integers) as package data or re-derive it
from integer-exact arithmetic: the simulation uses float logs, so a platform whose libm rounds
differently could flip a rare argmin and change a count. Code lengths are in bits (log2).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from diffc.rcc.entropy import zipf_probabilities
from diffc.rcc.pfr import ChunkPlan

try:
    from . import ordered_arrivals  # type: ignore
except ImportError:
    import ordered_arrivals

#: sub-octave resolution of the bins: 2^BIN_BITS bins per octave of N + 1
BIN_BITS = 1
#: simulated chunks per table: TABLE_WORK / K, within [MIN_TABLE_CHUNKS, MAX_TABLE_CHUNKS]
TABLE_WORK = 1 << 28
MIN_TABLE_CHUNKS = 512
MAX_TABLE_CHUNKS = 4096
#: weight of the Zipf law in the table's mixture
ZIPF_MIX = 0.05
#: stream key of the simulation (fixed: the table is a constant of (chunk_bits, K, arrivals))
TABLE_KEY = 0x1D3C5A7


def index_bins(indices: np.ndarray) -> np.ndarray:
    """Bin of each index n (int64 array, n >= 0): m = n + 1 with octave o = floor(log2 m) (exact,
    ``np.frexp``); m itself when o <= BIN_BITS, else 2^BIN_BITS (o - BIN_BITS) + (m >> (o - BIN_BITS))."""
    m = np.asarray(indices, dtype=np.int64) + 1
    o = np.frexp(m.astype(np.float64))[1].astype(np.int64) - 1
    shift = np.maximum(o - BIN_BITS, 0)
    return np.where(o <= BIN_BITS, m, (shift << BIN_BITS) + (m >> shift))


@functools.lru_cache(maxsize=16)
def index_log2_table(num_candidates: int, chunk_bits: int, arrivals: str = "poisson") -> np.ndarray:
    """float64 [bins]: log2 P(N = n) of any index n of each bin (-inf for bins without indices)."""
    k = num_candidates
    n = int(min(MAX_TABLE_CHUNKS, max(MIN_TABLE_CHUNKS, TABLE_WORK // k)))
    r = math.sqrt(2 * chunk_bits * math.log(2))
    plan = ChunkPlan(torch.arange(n), torch.arange(n), n)
    key = (TABLE_KEY + 977 * chunk_bits + k.bit_length()) & 0x7FFFFFFF
    with torch.no_grad():
        idx = ordered_arrivals.encode(torch.full((n,), r, dtype=torch.float32), plan, k, key, arrivals).numpy()
    all_bins = index_bins(np.arange(k))
    size = np.bincount(all_bins).astype(np.float64)
    zipf = np.bincount(all_bins, weights=zipf_probabilities(k, chunk_bits), minlength=size.size)
    freq = np.bincount(index_bins(idx), minlength=size.size) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log2(((1 - ZIPF_MIX) * freq + ZIPF_MIX * zipf) / size)


def table_index_bits(indices: np.ndarray, num_candidates: int, chunk_bits: int, arrivals: str = "poisson") -> float:
    """Ideal code length (bits) of the indices under ``index_log2_table``."""
    return float(-index_log2_table(num_candidates, chunk_bits, arrivals)[index_bins(indices)].sum())


if __name__ == "__main__":  # not a benchmark (make bench runs benchmarks/*.py)
    pass
