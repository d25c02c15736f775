"""Throughput of the PFR encoder: candidate entries per second of ``diffc.pfr.encode_chunks``
(vectorised over chunks and candidates) against a straightforward per-chunk Python loop.

Workload: real steps of the DiffC chain (Gaussian backbone, a kodak-small image, the codec's own
chunk plans and step keys); the chain's states come from exact sampling of q, which is cheap and
gives the same step statistics. A candidate entry = one (candidate, latent entry) pair, i.e. one
hashed normal: a step costs K x D entries whatever its chunk count.

The baseline uses the same shared randomness (``diffc.randomness``): for each chunk it generates
its K x d_c candidate matrix, scores every candidate and takes the argmin. Both must choose the
same index for every chunk (float32 sums in another order may flip an exact near-tie: such a
difference is accepted only when the two scores agree to 1e-4, and counted).
Timing: the two implementations alternate, ``--reps`` times each; the median is reported, at the
run's thread count, at 1 thread and at one thread per CPU. Then the vectorised encoder alone at
several candidate-block sizes (``pfr.BLOCK_ENTRIES``; 1 thread): the indices do not depend on it.
"""
from __future__ import annotations

import math
import os
import statistics
import time

try:
    from . import _common as C  # type: ignore
except ImportError:
    import _common as C

import torch

from diffc.backbone import load_backbone
from diffc.codec import CodecParams, DiffcCodec
import diffc.pfr as pfr
from diffc.pfr import ChunkPlan, _arrival_key, encode_chunks
from diffc.randomness import column_hashes, entry_hashes, hash_to_normal, row_hashes, uniforms


def encode_chunks_loop(u: torch.Tensor, plan: ChunkPlan, num_candidates: int, key: int) -> torch.Tensor:
    """Baseline: one chunk at a time, all K candidates of the chunk at once (same randomness)."""
    counts = torch.bincount(plan.chunk_of, minlength=plan.n_chunks).tolist()
    rows = torch.arange(num_candidates, dtype=torch.int32)
    row_h = row_hashes(key, rows)[None, :]
    akey = _arrival_key(key)
    out = torch.empty(plan.n_chunks, dtype=torch.int64)
    start = 0
    for c, n in enumerate(counts):  # positions of a chunk are contiguous in coding order
        cols = torch.arange(start, start + n, dtype=torch.int32)
        z = hash_to_normal(entry_hashes(column_hashes(key, cols)[:, None], row_h))  # [d_c, K]
        dots = (z * u[start:start + n, None]).sum(0)  # [K]
        s = torch.cumsum(-torch.log(uniforms(akey, rows, torch.tensor(c, dtype=torch.int32))), 0)
        out[c] = int(torch.argmin(torch.log(s) - dots.to(torch.float64)))
        start += n
    return out


def generate_only(plan: ChunkPlan, num_candidates: int, key: int) -> None:
    """The candidates alone: every K x D entry generated in the encoder's blocks and workspace, not
    scored. No encoder using this shared randomness can be faster than this on the device."""
    d = plan.src.numel()
    col_h = column_hashes(key, torch.arange(d, dtype=torch.int32))[:, None]
    block = max(1, min(num_candidates, pfr.BLOCK_ENTRIES // d))
    h, t = torch.empty(d, block, dtype=torch.int32), torch.empty(d, block, dtype=torch.int32)
    z = torch.empty(d, block)
    for n0 in range(0, num_candidates, block):
        rows = torch.arange(n0, min(n0 + block, num_candidates), dtype=torch.int32)
        b = rows.numel()
        hash_to_normal(entry_hashes(col_h, row_hashes(key, rows)[None, :], h[:, :b], t[:, :b]), out=z[:, :b])


def exact_scores(u: torch.Tensor, plan: ChunkPlan, key: int, c: int, idx: list[int]) -> list[float]:
    """float64 scores of candidates ``idx`` of chunk c (to judge a near-tie)."""
    start = int((plan.chunk_of < c).sum())
    n = int((plan.chunk_of == c).sum())
    cols = torch.arange(start, start + n, dtype=torch.int32)
    rows = torch.tensor(idx, dtype=torch.int32)
    z = hash_to_normal(entry_hashes(column_hashes(key, cols)[:, None], row_hashes(key, rows)[None, :]), torch.float64)
    dots = (z * u[start:start + n, None].double()).sum(0)
    m = max(idx) + 1
    s = torch.cumsum(-torch.log(uniforms(_arrival_key(key), torch.arange(m, dtype=torch.int32),
                                         torch.tensor(c, dtype=torch.int32))), 0)
    return (torch.log(s[rows.long()]) - dots).tolist()


@torch.no_grad()
def workloads(codec: DiffcCodec, image: torch.Tensor, steps: list[int], seed: int):
    """(k, u in coding order, plan, key) for the chosen steps of an exact-q chain."""
    b = codec.backbone
    x0 = b.encode(image.to(b.device, torch.float32)).to(torch.float32)
    x = codec._start(tuple(x0.shape))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(1, max(steps) + 1):
        x0_hat, mu_p, pc = codec._prior(x, k, None)
        u = (pc.c0 / pc.std) * (x0 - x0_hat)
        if k in steps:
            kl_bits = float((u.double() ** 2).sum()) / 2 / math.log(2)
            n_chunks = codec.chunk_count(kl_bits, x.numel())
            plan = codec._plan(x, k, n_chunks)
            out.append((k, plan.coded(u).contiguous(), plan, codec._step_key(k)))
        mu_q = pc.c0 * x0 + pc.ct * x
        x = mu_q + pc.std * torch.randn(x.shape, generator=gen)
    return out


def main() -> None:
    ap = C.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--chunk-bits", type=int, default=8)
    ap.add_argument("--padding-bits", type=int, default=2)
    ap.add_argument("--schedule", default="geom-30")
    ap.add_argument("--reps", type=int, default=None, help="timing repetitions (default 2 quick, 3 full)")
    args = ap.parse_args()
    C.setup(args)
    t_start = time.perf_counter()
    reps = args.reps or (2 if args.quick else 3)
    backbone = load_backbone("gaussian")
    codec = DiffcCodec(backbone, CodecParams(schedule=args.schedule, chunk_bits=args.chunk_bits,
                                             padding_bits=args.padding_bits, seed=args.seed, recon="denoise"))
    n_steps = len(codec.timesteps) - 1
    steps = [n_steps // 3, 2 * n_steps // 3, n_steps] if args.quick else list(range(3, n_steps + 1, 3))
    image_id, image = C.kodak_small(False)[0]  # 64 x 64 x 3: D = 12288 latent entries
    work = workloads(codec, image, steps, args.seed)
    K = codec.params.num_candidates
    D = image.numel()
    C.log(f"rcc_throughput: gaussian on {image_id} {tuple(image.shape)} (D = {D}), {args.schedule}, "
          f"chunk_bits {args.chunk_bits} + padding {args.padding_bits} (K = {K}), steps {steps}, "
          f"{reps} reps, {torch.get_num_threads()} threads")

    agree = {"chunks": 0, "identical": 0, "near_tie": 0}

    def check(pairs) -> None:
        """Both implementations chose the same index for every chunk (or an exact float near-tie)."""
        for (k, u, plan, key), (a, b) in zip(work, pairs):
            agree["chunks"] += plan.n_chunks
            agree["identical"] += int((a == b).sum())
            for c in torch.nonzero(a != b).flatten().tolist():
                sa, sb = exact_scores(u, plan, key, c, [int(a[c]), int(b[c])])
                assert abs(sa - sb) < 1e-4, \
                    f"step {k} chunk {c}: vectorised picked {int(a[c])}, loop {int(b[c])} ({sa} vs {sb})"
                agree["near_tie"] += 1
        assert agree["identical"] + agree["near_tie"] == agree["chunks"]

    def timed(threads: int) -> tuple[list[dict], float, float, float]:
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        rows = [{"step": k, "t": codec.timesteps[k], "chunks": plan.n_chunks, "dims/chunk": D / plan.n_chunks,
                 "vec_s": [], "loop_s": [], "gen_s": []} for k, _, plan, _ in work]
        try:
            for _ in range(reps):
                for row, (k, u, plan, key) in zip(rows, work):
                    t0 = time.perf_counter()
                    row["vec_idx"] = encode_chunks(u, plan, K, key)
                    t1 = time.perf_counter()
                    row["loop_idx"] = encode_chunks_loop(u, plan, K, key)
                    row["vec_s"].append(t1 - t0)
                    row["loop_s"].append(time.perf_counter() - t1)
                    t2 = time.perf_counter()
                    generate_only(plan, K, key)
                    row["gen_s"].append(time.perf_counter() - t2)
        finally:
            torch.set_num_threads(prev)
        for row in rows:
            row["vec_s"] = statistics.median(row["vec_s"])
            row["loop_s"] = statistics.median(row["loop_s"])
            row["gen_s"] = statistics.median(row["gen_s"])
            row["speedup"] = row["loop_s"] / row["vec_s"]
        check([(r.pop("vec_idx"), r.pop("loop_idx")) for r in rows])
        return (rows, sum(r["vec_s"] for r in rows), sum(r["loop_s"] for r in rows),
                sum(r["gen_s"] for r in rows))

    entries = K * D * len(work)
    results = {}
    for threads in sorted({torch.get_num_threads(), 1, os.cpu_count() or 1}, reverse=True):
        rows, vec, loop, gen = timed(threads)
        results[threads] = (rows, vec, loop, gen)
        C.log(f"\n  {threads} thread(s):")
        C.table(rows)
        C.log(f"  vectorised {entries / vec:.3g} entries/s, per-chunk loop {entries / loop:.3g} entries/s, "
              f"speedup {loop / vec:.2f}x (goal >= 20x); generating the candidates alone {entries / gen:.3g} "
              f"entries/s: no encoder of these candidates can beat the loop by more than {loop / gen:.2f}x here")
    C.log(f"  indices: {agree['identical']}/{agree['chunks']} identical, {agree['near_tie']} float near-ties "
          f"(checked on every timed call)")
    rows, vec, loop, gen = results[torch.get_num_threads()]
    _, vec1, loop1, gen1 = results[1]

    # sensitivity of the vectorised encoder to its candidate-block size (pfr.BLOCK_ENTRIES), 1 thread
    default_block = pfr.BLOCK_ENTRIES
    block_rows = []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for be in sorted({1 << 17, 1 << 18, default_block, 1 << 21, 1 << 23}):
            pfr.BLOCK_ENTRIES = be
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                for (k, u, plan, key), row in zip(work, rows):
                    encode_chunks(u, plan, K, key)
                ts.append(time.perf_counter() - t0)
            block_rows.append({"block_entries": be, "entries_per_s": entries / statistics.median(ts)})
    finally:
        pfr.BLOCK_ENTRIES = default_block
        torch.set_num_threads(prev_threads)
    ref = next(r["entries_per_s"] for r in block_rows if r["block_entries"] == default_block)
    for r in block_rows:
        r["rel_to_default"] = r["entries_per_s"] / ref
        r["speedup_vs_loop_1thread"] = r["entries_per_s"] / (entries / loop1)
    C.log(f"\n  vectorised encoder vs candidate-block size (1 thread; default BLOCK_ENTRIES = {default_block}):")
    C.table(block_rows)
    C.emit("rcc_throughput", args, {
        "entries_per_s": entries / vec,
        "baseline_entries_per_s": entries / loop,
        "speedup": loop / vec,
        "goal_speedup": 20,
        # generation alone (hash + normal transform of every K x D entry, no scoring): the
        # speedup over the loop that an encoder of these same candidates could reach at best
        "generate_only_entries_per_s": entries / gen,
        "speedup_bound_same_candidates": loop / gen,
        "one_thread": {"entries_per_s": entries / vec1, "baseline_entries_per_s": entries / loop1,
                       "speedup": loop1 / vec1, "speedup_bound_same_candidates": loop1 / gen1},
        "by_threads": {str(t): {"entries_per_s": entries / v, "baseline_entries_per_s": entries / l, "speedup": l / v,
                                "speedup_bound_same_candidates": l / g}
                       for t, (_, v, l, g) in results.items()},
        "block_entries_sweep_1thread": block_rows,
        "per_step": [{k: r[k] for k in ("step", "t", "chunks", "dims/chunk", "speedup")} for r in rows],
        "indices_identical": agree["identical"], "indices_near_tie": agree["near_tie"], "chunks": agree["chunks"],
        "workload": {"backbone": "gaussian", "image": image_id, "latent_entries": D, "candidates": K,
                     "chunk_bits": args.chunk_bits, "padding_bits": args.padding_bits,
                     "schedule": args.schedule, "steps": steps, "reps": reps},
    }, t_start)


if __name__ == "__main__":
    main()
