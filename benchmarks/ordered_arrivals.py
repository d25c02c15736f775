"""Ordered random coding's arrival times (Theis & Yosri 2022): an opt-in experiment of
benchmarks/coding_efficiency.py, not the codec's (the codec's arrivals are Poisson).

The core search (``diffc.rcc.pfr.pfr_search``) takes an arrival-time hook ``gaps(rows, exps)``: the
Exp(1) draws E_n of candidates n (one per chunk) -> the gaps S_n - S_{n-1} it sums. Ordered
arrivals use S_n = sum_{k <= n} E_k / (K - k) with K = the candidate count, i.e. the order
statistics of K i.i.d. Exp(1) (Renyi's representation), so candidate n gets the n-th smallest of K
exponentials. The selected sample then has the law of self-normalised importance sampling over
the K candidates (Gumbel-max with the exponentials unsorted), and small indices are likelier than
with Poisson arrivals. Decoding is unchanged (the decoder never sees arrival times).

This module is not a benchmark: ``python benchmarks/ordered_arrivals.py`` does nothing.
"""
from __future__ import annotations

import torch

from diffc.rcc.pfr import ArrivalGaps, ChunkPlan, encode_chunks
from diffc.rcc.sparse_sum import SparseSum

#: arrival-time constructions: "poisson" (the codec's) and "ordered"
ARRIVALS = ("poisson", "ordered")


def ordered_gaps(num_candidates: int) -> ArrivalGaps:
    """The hook of ordered arrivals for K = ``num_candidates``: gap n = E_n / (K - n), the gap
    before the (n+1)-th smallest of K exponentials (an Exp of rate K - n)."""
    if num_candidates < 1:
        raise ValueError("ordered arrivals need num_candidates (K) >= 1")
    return lambda rows, exps: exps / (num_candidates - rows.to(torch.float64))[:, None]


def arrival_gaps(arrivals: str, num_candidates: int) -> ArrivalGaps | None:
    """The hook of an arrival construction (None = Poisson, the search's default)."""
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {ARRIVALS}, got {arrivals!r}")
    return ordered_gaps(num_candidates) if arrivals == "ordered" else None


def encode(u: torch.Tensor, plan: ChunkPlan, num_candidates: int, key: int, arrivals: str = "poisson",
           generator: SparseSum | None = None) -> torch.Tensor:
    """``diffc.rcc.pfr.encode_chunks`` (``generator`` None) or ``SparseSum.encode_chunks`` with the
    given arrival construction: int64 [chunks]."""
    gaps = arrival_gaps(arrivals, num_candidates)
    search = encode_chunks if generator is None else generator.encode_chunks
    return search(u, plan, num_candidates, key, gaps=gaps)


if __name__ == "__main__":  # not a benchmark (make bench runs benchmarks/*.py)
    pass
