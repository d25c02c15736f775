"""The device-sized search (diffc/rcc/pfr.py, diffc/rcc/sparse_sum.py): today's indices pinned, block sizes
that change nothing, no host read inside the search (it runs on the meta device, where any read
of a value raises), sync-free ``ChunkPlan.combine`` equal to the scatter-add it replaced, and the
opt-in ``torch.compile`` path bit-equal to eager on the CPU."""
from __future__ import annotations

import hashlib
import math

import pytest
import torch

import diffc.rcc.pfr as pfr
from diffc.rcc.pfr import ChunkPlan, codebook_scores, decode_chunks, encode_chunks, make_plan
from diffc.rcc.sparse_sum import SparseSum


def sha(*ts: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in ts:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def shift(n: int, kl_bits: float, seed: int, profile: bool = False) -> torch.Tensor:
    """float32 [n] with |u|^2 / 2 = kl_bits ln 2 (log-normal variance profile when ``profile``)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, generator=g, dtype=torch.float64)
    if profile:
        u = u * torch.randn(n, generator=g, dtype=torch.float64).exp()
    return (u * math.sqrt(2 * kl_bits * math.log(2)) / u.norm()).to(torch.float32)


def split_case(n: int, kl_bits: float) -> tuple[torch.Tensor, ChunkPlan]:
    """A weighted plan with split entries, every fifth chunk split in 3: (u coded, plan)."""
    u = shift(n, kl_bits, 7, True)
    plan = make_plan(n, math.ceil(kl_bits / 8), 11, u.double() ** 2 * 0.5 + 0.01)
    parts = torch.ones(plan.n_chunks, dtype=torch.int64)
    parts[::5] = 3
    plan = plan.split_chunks(parts)
    return plan.coded(u), plan


#: sha256 (16 hex digits) of the indices, candidates and combined latent of ``split_case``,
#: computed with the integer-exact generator (format 7; diffc/rcc/randomness.py)
BEFORE = {"iid": "971d3ad80ce2fd72", "sparse": "4ce42cb99462736e", "codebook": "185123b1bb4cca62"}


def test_indices_are_todays():
    """4,096 entries (5,751 positions after splits, 159 chunks), K = 2^12 i.i.d. and 2^14 sparse-sum
    candidates over many blocks, and a codebook of 2^8 codes: bit-identical to the pinned values
    (at 1 and 2 threads: the codebook's scores are sequential sums, no BLAS)."""
    u, plan = split_case(4096, 900.0)
    idx = encode_chunks(u, plan, 1 << 12, 5)
    z = decode_chunks(idx, plan, 5)
    assert sha(idx, z, plan.combine(z, 4096)) == BEFORE["iid"]
    gen = SparseSum(512, 8)
    idx2 = gen.encode_chunks(u, plan, 1 << 14, 6)
    assert sha(idx2, gen.decode_chunks(idx2, plan, 6), gen.projections(u, plan, 6)) == BEFORE["sparse"]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert sha(codebook_scores(shift(3000, 500.0, 3), 99, 256, 3000)) == BEFORE["codebook"]
    finally:
        torch.set_num_threads(before)


def test_block_size_changes_no_result(monkeypatch):
    """Candidate blocks of 1, 3 and all candidates, selection blocks of one or many candidate
    blocks: the same indices, i.i.d. and sparse-sum (and 1,000+ distinct indices: not trivial)."""
    u, plan = split_case(2000, 400.0)
    p, k = u.numel(), 1 << 10
    ref = encode_chunks(u, plan, k, 9)
    gen = SparseSum(256, 4)
    ref_s = gen.encode_chunks(u, plan, k, 9)
    assert ref.unique().numel() > 20
    for select in (1, 1 << 30):
        monkeypatch.setattr(pfr, "SELECT_ENTRIES", select)
        for entries in (p, 3 * p, k * p):
            assert torch.equal(encode_chunks(u, plan, k, 9, block_entries=entries), ref)
            assert torch.equal(gen.encode_chunks(u, plan, k, 9, block_entries=entries), ref_s)


def test_search_reads_nothing_back_on_the_device():
    """Plan, search and regeneration on the meta device (values never exist: any host read of a
    tensor raises), at an SD 1.5 latent's size: the search is a pure function of device tensors."""
    n, k = 4 * 64 * 96, 1 << 14
    plan = make_plan(n, 54, 3, device="meta")
    assert plan.src.device.type == "meta" and plan.offsets.device.type == "meta"
    u = plan.coded(torch.empty(n, device="meta"))
    idx = encode_chunks(u, plan, k, 4)
    z = decode_chunks(idx, plan, 4, "meta")
    assert idx.shape == (54,) and z.shape == (n,)
    gen = SparseSum(4096, 8)
    assert gen.decode_chunks(gen.encode_chunks(u, plan, k, 4), plan, 4, "meta").shape == (n,)
    assert codebook_scores(torch.empty(n, device="meta"), 4, 256, n).shape == (256,)
    with pytest.raises(Exception):
        int(idx[0])  # the check above can fail: a host read on meta does raise


def test_combine_equals_one_scatter_add_per_part_number():
    """combine (segment sums in (entry, part) order) = the previous combine (zeros, then one
    index_add_ per part number), bit for bit, on a plan with split entries and split chunks."""
    u, plan = split_case(3000, 600.0)
    z = torch.randn(plan.src.numel(), generator=torch.Generator().manual_seed(2))
    out = torch.zeros(3000)
    zs = z * plan.scale
    for p in range(int(plan.part.max()) + 1):
        sel = plan.part == p
        out.index_add_(0, plan.src[sel], zs[sel])
    assert int(plan.part.max()) >= 2
    assert torch.equal(plan.combine(z, 3000), out)


def test_plan_moves_once():
    """make_plan(device=...) = make_plan then .to(); .to() of a plan already there is the plan."""
    a = make_plan(500, 7, 3)
    assert a.to("cpu") is a
    b = make_plan(500, 7, 3, device="meta")
    assert b.src.device.type == "meta" and b.n_chunks == a.n_chunks
    assert a.offsets.tolist() == [0, 71, 143, 214, 286, 357, 429, 500]  # 71 or 72 entries per chunk
    assert torch.equal(a.offsets[1:] - a.offsets[:-1], torch.bincount(a.chunk_of))


def test_compiled_block_functions_are_bit_exact():
    """torch.compile of the per-block scorers (fast variant: one small compile each) gives the
    eager kernels' bits and the fused CPU kernel's: candidates (integer-exact normals: no opaque
    op needed), segment sums."""
    col_h, row_h = pfr.stream_hashes(5, 300, 40, "cpu")
    plan = make_plan(300, 9, 2)
    u = shift(300, 60.0, 1)[:, None]
    eager = pfr._iid_dots(col_h, row_h, u, plan.offsets)
    assert torch.equal(pfr.fused.iid_dots(col_h, row_h, u.flatten(), plan.offsets), eager)
    assert torch.equal(pfr.compiled(pfr._iid_dots)(col_h, row_h, u, plan.offsets), eager)


@pytest.mark.slow
def test_compiled_search_equals_eager():
    """compile=True: the same indices as eager for i.i.d. and sparse-sum candidates (several
    blocks, two plan shapes: one compilation), and the same codebook scores (measured ~90 s of
    compilation on 2 CPU cores)."""
    for n, c, key in ((600, 20, 3), (900, 31, 4)):
        u = shift(n, 8.0 * c, key)
        plan = make_plan(n, c, key)
        kw = dict(block_entries=n * 50)
        assert torch.equal(encode_chunks(u, plan, 256, key, compile=True, **kw), encode_chunks(u, plan, 256, key))
        gen = SparseSum(256, 4)
        assert torch.equal(gen.encode_chunks(u, plan, 512, key, compile=True, **kw),
                           gen.encode_chunks(u, plan, 512, key))
        assert torch.equal(codebook_scores(u, key, 128, n, compile=True), codebook_scores(u, key, 128, n))


def test_ops_per_step_on_a_gpu_do_not_regress() -> None:
    """benchmarks/gpu_readiness.py's count (aten ops dispatched by one coded step at the CUDA block
    size, on the meta device) for the SD 1.5 and SDXL latents: at most the figures of the fusion
    (72456cc: 364 and 488; the integer-exact normal had raised them to 498 and 728), one host read,
    and the wide form's workspace of 20 bytes per entry (peak under 2.7 GiB)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_readiness as gr

    from diffc.rcc.randomness import wide_tables

    wide_tables("meta")  # one copy per device and process, not per step
    for name, most in (("sd15", 364), ("sdxl", 488)):
        n, c, u = gr.step_inputs(name, "meta")
        got = gr.counted(gr.fused_step, n, c, u, 1 << 14)
        assert got["ops"] <= most and got["syncs"] == 1 and got["h2d"] <= 2, (name, got)
        assert got["peak_mib"] < 2.7 * 1024, (name, got)
