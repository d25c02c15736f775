"""Sparse-sum PFR candidates (diffc/rcc/sparse_sum.py): the law of the PFR-selected sample against
truncated PFR with i.i.d. candidates at the same candidate count, plain and split chunks; the
encoder's scores are the decoder's candidates; the codec round trip.

Each law test is a two-sample KS test at ALPHA (fixed seeds, so the outcome is deterministic) of
the selected sample's component along u and along a fixed direction orthogonal to u, sparse-sum
vs i.i.d.; each has a companion case where the same check fails (too small an atom bank, or a
deliberately biased selection).
"""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from diffc import format as fmt
from diffc.codec import CodecParams, DiffcCodec
from diffc.rcc.pfr import ArrivalGaps, ChunkPlan, chunk_sums, decode_chunks, encode_chunks
from diffc.rcc.sparse_sum import SparseSum
from diffc.codebook.spec import DdcmSpec
from diffc.rcc.spec import PfrSpec, SparseSumSpec
from diffc.recon import Recon

LN2 = math.log(2.0)
ALPHA = 1e-3
GOOD = SparseSum(atoms=4096, m=8)  # K_a >= N / 4 at every N below
TINY = SparseSum(atoms=16, m=1)  # 32 distinct candidates per chunk, whatever N


def contiguous_plan(n_chunks: int, dims: int) -> ChunkPlan:
    """n_chunks chunks of ``dims`` entries (trial i = chunk i)."""
    d = n_chunks * dims
    return ChunkPlan(torch.arange(d), torch.arange(d) // dims, n_chunks)


def directions(dims: int, kl_bits: float, key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u with |u|^2 / 2 = kl_bits ln 2 nats, float64 [dims]; a unit v orthogonal to u)."""
    g = torch.Generator().manual_seed(key)
    u, v = torch.randn(2, dims, generator=g, dtype=torch.float64)
    u = u / u.norm() * math.sqrt(2 * kl_bits * LN2)
    v = v - (v @ u) / (u @ u) * u
    return u, v / v.norm()


def selected(gen: SparseSum | None, plan: ChunkPlan, u_coded: torch.Tensor, num_candidates: int,
             key: int, gaps: ArrivalGaps | None = None) -> torch.Tensor:
    """The PFR-selected candidates (float32 [positions]) with i.i.d. (``gen`` None) or sparse-sum
    candidates, and the given arrival-time hook (``diffc.rcc.pfr.pfr_search``; None = Poisson)."""
    u32 = u_coded.to(torch.float32)
    if gen is None:
        return decode_chunks(encode_chunks(u32, plan, num_candidates, key, gaps=gaps), plan, key)
    return gen.decode_chunks(gen.encode_chunks(u32, plan, num_candidates, key, gaps=gaps), plan, key)


def components(gen: SparseSum | None, dims: int, kl_bits: float, num_candidates: int, n: int, key: int,
               bias: float = 0.0, gaps: ArrivalGaps | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n trials of one chunk (shift u): the selected sample's components along u/|u| and along v.
    ``bias`` > 0 selects with the shift u + bias v instead of u (a deliberately biased selection);
    ``gaps``: the arrival-time hook (None = Poisson)."""
    u, v = directions(dims, kl_bits, key)
    z = selected(gen, contiguous_plan(n, dims), (u + bias * v).repeat(n), num_candidates, key,
                 gaps).reshape(n, dims)
    z = z.double()
    return z @ (u / u.norm()), z @ v


def ks(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(stats.ks_2samp(a.numpy(), b.numpy()).pvalue)


@pytest.mark.parametrize("kl_bits,log2_n,n", [(8, 10, 2000), (12, 14, 600)])
def test_selected_sample_has_the_law_of_iid_pfr(kl_bits, log2_n, n):
    """Sparse-sum (K_a 4096, M 8) vs i.i.d. candidates, same N, same chunks: KS p >= ALPHA along u
    and orthogonal to it; the mean delivered information agrees within 0.25 bits."""
    par_i, ort_i = components(None, 8, kl_bits, 1 << log2_n, n, key=11)
    par_s, ort_s = components(GOOD, 8, kl_bits, 1 << log2_n, n, key=12)
    assert ks(par_s, par_i) >= ALPHA
    assert ks(ort_s, ort_i) >= ALPHA
    r = math.sqrt(2 * kl_bits * LN2)
    delivered = lambda par: float((par * r - r * r / 2).mean()) / LN2
    assert abs(delivered(par_s) - delivered(par_i)) < 0.25
    assert delivered(par_i) > 0.5 * kl_bits  # the test has something to see: the search did work


def test_law_test_fails_with_too_few_atoms():
    """Companion: 16 atoms, M = 1 (32 distinct candidates) at N = 2^10: the selected projection
    is far from i.i.d. PFR's and KS rejects it."""
    par_i, _ = components(None, 8, 8, 1 << 10, 2000, key=11)
    par_t, _ = components(TINY, 8, 8, 1 << 10, 2000, key=12)
    assert ks(par_t, par_i) < ALPHA


def test_law_test_fails_with_a_biased_selection():
    """Companion: selecting with the shift u + 0.5 v (the candidates are fine, the choice is not)
    moves the orthogonal component, and KS rejects it."""
    _, ort_i = components(None, 8, 8, 1 << 10, 2000, key=11)
    _, ort_b = components(GOOD, 8, 8, 1 << 10, 2000, key=12, bias=0.5)
    assert ks(ort_b, ort_i) < ALPHA


def split_components(gen: SparseSum | None, parts: int, n: int, key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n trials of a 24-bit chunk of 8 entries sent in ``parts`` split chunks of 8 bits each
    (``ChunkPlan.split_chunks``, 2^10 candidates each): the combined sample's components along u and v."""
    dims = 8
    u, v = directions(dims, 8 * parts, key)
    plan = contiguous_plan(n, dims).split_chunks(torch.full((n,), parts))
    z = plan.combine(selected(gen, plan, plan.coded(u.repeat(n)), 1 << 10, key), n * dims).reshape(n, dims)
    z = z.double()
    return z @ (u / u.norm()), z @ v


def test_split_chunks_have_the_law_of_iid_pfr():
    """The same check on chunks split in 3 parts (parts summed and scaled by 1/sqrt(3))."""
    par_i, ort_i = split_components(None, 3, 1000, key=21)
    par_s, ort_s = split_components(GOOD, 3, 1000, key=22)
    assert ks(par_s, par_i) >= ALPHA
    assert ks(ort_s, ort_i) >= ALPHA


def test_split_law_test_fails_with_too_few_atoms():
    """Companion for split chunks: the 16-atom bank fails the same check."""
    par_i, _ = split_components(None, 3, 1000, key=21)
    par_t, _ = split_components(TINY, 3, 1000, key=22)
    assert ks(par_t, par_i) < ALPHA


def test_candidates_are_standard_normal_and_scores_match_the_decoder():
    """Any candidate (not selected: indices 0..n-1) is N(0, I) entrywise, and the encoder's
    table score sum_g s P_{c,j} / sqrt(M) equals z . u_c of the candidate the decoder rebuilds."""
    gen, n, dims, key = SparseSum(atoms=512, m=4), 400, 16, 5
    plan = contiguous_plan(n, dims)
    u = torch.randn(n * dims, generator=torch.Generator().manual_seed(3))
    idx = torch.arange(n, dtype=torch.int64) * 7919 % 100003  # scattered candidate indices
    z = gen.decode_chunks(idx, plan, key)
    assert stats.kstest(z.double().numpy(), "norm").pvalue >= ALPHA
    proj = gen.projections(u, plan, key)  # [C, K_a]
    j, neg = gen.choices(key, idx, torch.arange(n))
    signed = torch.where(neg, -1.0, 1.0) * proj.gather(1, j)
    score = signed.double().sum(1) / math.sqrt(gen.m)
    torch.testing.assert_close(score, chunk_sums(z.double() * u.double(), plan), rtol=1e-4, atol=1e-4)
    # atoms of one candidate are distinct (one per group), so the sum has unit variance
    assert bool((j // gen.group == torch.arange(gen.m)).all())


def test_bad_banks_are_refused():
    with pytest.raises(ValueError):
        SparseSum(atoms=100, m=8)  # not a multiple
    with pytest.raises(ValueError):
        CodecParams(channel=SparseSumSpec(atoms=0, sparse_m=4))
    with pytest.raises(ValueError):
        SparseSumSpec(atoms=256, sparse_m=0)
    with pytest.raises(TypeError):  # DDCM has no atom bank
        DdcmSpec(codebook_bits=8, atoms=64, sparse_m=4)


def test_codec_round_trip_is_bit_identical(gaussian_backbone):
    """Gaussian backbone, candidates=sparse-sum: the decoder's x_t is the encoder's, bit for bit,
    at every stop; the header names the generator, so a codec built for i.i.d. candidates decodes
    the file too, and the sparse-sum codec an i.i.d. file."""
    img = torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(0))
    common = dict(schedule="linspace-6", seed=9, recon=Recon("denoise"))
    sparse = DiffcCodec(gaussian_backbone, CodecParams(**common, channel=SparseSumSpec(6, 2, atoms=256, sparse_m=4)))
    iid = DiffcCodec(gaussian_backbone, CodecParams(**common, channel=PfrSpec(6, 2)))
    res = sparse.encode(img, stop_timesteps=[sparse.timesteps[3], sparse.timesteps[-1]])
    assert len(res.points) == 2 and res.points[-1].delivered_bits > 0.3 * res.points[-1].kl_bits
    for p in res.points:
        d = sparse.decode(p.data, reconstruct=False)
        assert torch.equal(d.x_t, p.x_t)
    assert fmt.read(res.points[-1].data)[0].channel == "sparse-sum"
    assert torch.equal(iid.decode(res.points[-1].data, reconstruct=False).x_t, res.points[-1].x_t)
    p_iid = iid.encode(img).points[-1]
    assert not torch.equal(p_iid.x_t, res.points[-1].x_t)  # another generator, another chain
    assert torch.equal(sparse.decode(p_iid.data, reconstruct=False).x_t, p_iid.x_t)
