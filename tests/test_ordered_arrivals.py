"""Benchmark-only add-ons of the PFR search (benchmarks/ordered_arrivals.py: ordered random
coding's arrival times through ``diffc.rcc.pfr.pfr_search``'s ``gaps`` hook; benchmarks/index_pmf.py:
the tabulated index pmf). Neither is used by the codec; benchmarks/coding_efficiency.py measures
them. The law checks reuse the helpers of tests/test_sparse_sum.py (fixed seeds, false-alarm
rate ALPHA per KS test, each with a companion that fails)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ordered_arrivals  # noqa: E402
from index_pmf import index_bins, index_log2_table, table_index_bits  # noqa: E402
from test_sparse_sum import ALPHA, GOOD, LN2, components, ks  # noqa: E402

from diffc.rcc.entropy import zipf_probabilities  # noqa: E402
from diffc.rcc.pfr import ChunkPlan  # noqa: E402


def test_arrival_times_increase_in_n_for_both_constructions():
    """With 1-D chunks of no shift (scores all 0) the selected index is the argmin of the arrival
    times: always 0 at N = 4 for Poisson and ordered arrivals (both increase in n); N = 1 picks 0;
    an unknown construction is refused."""
    n = 500
    plan = ChunkPlan(torch.arange(n), torch.arange(n), n)
    for arrivals in ordered_arrivals.ARRIVALS:
        assert int(ordered_arrivals.encode(torch.zeros(n), plan, 4, 3, arrivals).max()) == 0
        assert int(ordered_arrivals.encode(torch.ones(n), plan, 1, 3, arrivals).max()) == 0
    with pytest.raises(ValueError):
        ordered_arrivals.encode(torch.zeros(n), plan, 4, 3, "sorted")
    with pytest.raises(ValueError):
        ordered_arrivals.ordered_gaps(0)


def test_ordered_arrivals_keep_the_law_of_iid_candidates():
    """Ordered random coding's arrival times (sorted exponentials): sparse-sum (K_a 4096, M 8) vs
    i.i.d. candidates with the same arrivals, 8-bit chunks, N = 2^10: KS p >= ALPHA along u and
    orthogonal to it, and the mean delivered information agrees within 0.25 bits."""
    gaps = ordered_arrivals.ordered_gaps(1 << 10)
    par_i, ort_i = components(None, 8, 8, 1 << 10, 2000, key=11, gaps=gaps)
    par_s, ort_s = components(GOOD, 8, 8, 1 << 10, 2000, key=12, gaps=gaps)
    assert ks(par_s, par_i) >= ALPHA
    assert ks(ort_s, ort_i) >= ALPHA
    r = math.sqrt(2 * 8 * LN2)
    assert abs(float((par_s - par_i).mean()) * r / LN2) < 0.25


def snis_projection(kl_bits: float, num_candidates: int, n: int, seed: int) -> torch.Tensor:
    """n draws of self-normalised importance sampling over N i.i.d. N(0, 1) projections with
    weights q/p = exp(r x - r^2 / 2), r = sqrt(2 kl_bits ln 2): the law ordered arrivals must give."""
    r = math.sqrt(2 * kl_bits * LN2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, num_candidates, generator=g, dtype=torch.float64)
    pick = torch.multinomial(torch.softmax(r * x, 1), 1, generator=g)
    return x.gather(1, pick)[:, 0]


@pytest.mark.parametrize("arrivals,same_law", [("ordered", True), ("poisson", False)])
def test_ordered_arrivals_give_importance_sampling(arrivals, same_law):
    """With ordered arrivals the selected sample is self-normalised importance sampling over the N
    candidates (Gumbel-max): at 6-bit chunks and N = 8 the selected projection passes KS against
    SNIS (measured p 0.64); truncated PFR's Poisson arrivals (the companion) give another law and
    fail it (p 9e-6)."""
    n, kl_bits, num = 10000, 6, 8
    gaps = ordered_arrivals.arrival_gaps(arrivals, num)
    par, _ = components(None, 4, kl_bits, num, n, key=31, gaps=gaps)
    assert (ks(par, snis_projection(kl_bits, num, n, 32)) >= ALPHA) == same_law


def test_tabulated_index_pmf_is_a_law_and_codes_fresh_indices_below_zipf():
    """The table (8-bit chunks, N = 2^10) is a pmf over 0..N-1 (masses sum to 1) on exact integer
    bins (sizes 1, 1, 1, 2, 2, 4, 4, ...); on 4000 fresh chunks (another key) it codes the indices
    in fewer bits than the shipped Zipf law for both arrival constructions (measured: 8.19 vs 8.23
    bits Poisson, 7.87 vs 7.90 ordered), and the table of the other construction costs more."""
    cb, k, n = 8, 1 << 10, 4000
    bins = index_bins(np.arange(k))
    assert bins[:12].tolist() == [1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 7]
    size = np.bincount(bins)
    r = math.sqrt(2 * cb * LN2)
    plan = ChunkPlan(torch.arange(n), torch.arange(n), n)
    zipf = -np.log2(zipf_probabilities(k, cb))
    for arrivals, other in (("poisson", "ordered"), ("ordered", "poisson")):
        table = index_log2_table(k, cb, arrivals)
        assert abs(float((size * np.exp2(table))[size > 0].sum()) - 1) < 1e-9
        idx = ordered_arrivals.encode(torch.full((n,), r), plan, k, 4242, arrivals).numpy()
        own = table_index_bits(idx, k, cb, arrivals)
        assert own < float(zipf[idx].sum())
        assert own < table_index_bits(idx, k, cb, other)
