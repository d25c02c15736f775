"""Throughput of the candidate search inside ``DiffcCodec.encode``: candidate entries per second, at
1 and 2 intra-op threads, on an idle machine and with one competing busy process.

Workload: a real encode (Gaussian backbone, a Kodak crop, the codec's own plans, keys and
channel), stopped at ``--timestep``. The search is timed where the codec calls it
(``diffc.rcc.pfr.encode_chunks``, wrapped): a candidate entry = one (candidate, coding position)
pair, K x P per coded step. Wall and CPU seconds of the search and of the whole encode are both
reported, so that a loaded machine shows.

Baseline: the generator of commit 60420f3, kept here as a private copy (``old_scorer``): per
block of 2^19 entries, the lowbias32 hash as ~10 eager int32 torch passes, sqrt(2) erfinv(2u - 1),
a multiply and a segment sum -- every pass an OpenMP parallel region -- run at the codec's thread
count, as that commit did (no ``search_threads``). It is swapped in for ``pfr.scorer`` in the
same process, on the same image, so both are measured under the same conditions. Its candidates
are erfinv normals, not the integer-exact ones: the files differ, the work per entry is the one
that commit did. Busy = one ``python -c 'while True: pass'`` that the benchmark starts before and
kills after each busy measurement.
"""
from __future__ import annotations

import contextlib
import math
import time

try:
    from . import _common as C  # type: ignore
except ImportError:
    import _common as C

import torch

import diffc.rcc.channel as channel
import diffc.rcc.pfr as pfr
from diffc.backbone import load_backbone
from diffc.codec import CodecParams, DiffcCodec
from diffc.rcc.randomness import column_hashes, hash32_, row_hashes
from diffc.rcc.spec import PfrSpec
from diffc.recon import Recon

def _old_dots(col_h, row_h, u_col, offsets, h, t):
    """The old ``pfr._iid_dots``: hash, erfinv normal, multiply, segment sum (in a workspace)."""
    shape = (col_h.shape[0], row_h.shape[1])
    h, t = h[:math.prod(shape)].view(shape), t[:math.prod(shape)].view(shape)
    x = hash32_(torch.bitwise_xor(col_h, row_h, out=h), t)  # the hash is unchanged since 60420f3
    k = torch.bitwise_right_shift(x, 8, out=x).bitwise_and_(0xFFFFFF).mul_(2).add_(1 - (1 << 24))
    z = t.view(torch.float32).copy_(k).mul_(1.0 / (1 << 24)).erfinv_().mul_(math.sqrt(2.0))
    return torch.segment_reduce(z.mul_(u_col), "sum", offsets=offsets, axis=0, unsafe=True)


def old_scorer(u, offsets, key, num_rows, block_entries=None, compile=False):
    """``pfr.scorer``'s contract with the generator of commit 60420f3 (CPU, eager)."""
    p = u.numel()
    cols = torch.arange(p, dtype=torch.int32)
    col_h = column_hashes(key, cols)[:, None]
    row_h = row_hashes(key, torch.arange(num_rows, dtype=torch.int32))[None, :]
    block = max(1, min(num_rows, (1 << 19) // max(p, 1)))
    h, t = (torch.empty(p * block, dtype=torch.int32) for _ in range(2))
    u_col = u.to(torch.float32)[:, None]
    return (lambda n0, n1: _old_dots(col_h, row_h[:, n0:n1], u_col, offsets, h, t)), block


@contextlib.contextmanager
def generator(old: bool):
    """The codec's search with the old generator (baseline) or as it is."""
    saved = pfr.scorer, pfr.search_threads, channel.search_threads
    if old:  # that commit ran the search and the channel at the codec's threads
        pfr.scorer, pfr.search_threads, channel.search_threads = (old_scorer, lambda device: contextlib.nullcontext(),
                                                                  lambda device: contextlib.nullcontext())
    try:
        yield
    finally:
        pfr.scorer, pfr.search_threads, channel.search_threads = saved


def measure(codec: DiffcCodec, image: torch.Tensor, stop: int, threads: int) -> dict:
    """One encode at ``threads``: entries searched, search wall/CPU seconds, encode wall/CPU seconds."""
    acc = {"entries": 0, "search_s": 0.0, "search_cpu_s": 0.0}
    real = pfr.encode_chunks

    def timed(u, plan, num_candidates, key, **kw):
        w, c = time.perf_counter(), time.process_time()
        out = real(u, plan, num_candidates, key, **kw)
        acc["search_s"] += time.perf_counter() - w
        acc["search_cpu_s"] += time.process_time() - c
        acc["entries"] += u.numel() * num_candidates
        return out

    prev = torch.get_num_threads()
    pfr.encode_chunks = timed
    torch.set_num_threads(threads)
    try:
        w, c = time.perf_counter(), time.process_time()
        codec.encode(image, stop_timesteps=[stop])
        acc["encode_s"], acc["encode_cpu_s"] = time.perf_counter() - w, time.process_time() - c
    finally:
        pfr.encode_chunks = real
        torch.set_num_threads(prev)
    acc["entries_per_s"] = acc["entries"] / acc["search_s"]
    return acc


def main() -> None:
    ap = C.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=None, help="crop side (default 128 quick, 256 full)")
    ap.add_argument("--timestep", type=int, default=None, help="stop timestep (default 700 quick, 300 full)")
    ap.add_argument("--image", default="kodim23")
    args = ap.parse_args()
    C.setup(args)
    t_start = time.perf_counter()
    size = args.size or (128 if args.quick else 256)
    stop = args.timestep or (700 if args.quick else 300)
    image = C.kodak_crop(args.image, size)
    codec = DiffcCodec(load_backbone("gaussian"), CodecParams("geom-30", seed=args.seed, channel=PfrSpec(chunk_bits=8, padding_bits=2), recon=Recon(mode="denoise")))
    for old in (False, True):  # compile the fused kernels, warm both paths
        with generator(old):
            codec.encode(image[:, :32, :32], stop_timesteps=[stop])
    C.log(f"rcc_throughput: gaussian on {args.image} crop {size}x{size}, stop t={stop}, geom-30, 8/2 "
          f"(K = {codec.params.channel.num_candidates}); search entries/s inside DiffcCodec.encode")
    rows, fig = [], {}
    for load in ("idle", "busy"):
        for threads in (1, 2):
            for name, old in (("fused", False), ("baseline", True)):
                with C.busy(load == "busy"), generator(old):
                    r = measure(codec, image, stop, threads)
                fig[f"{name}_{threads}t_{load}"] = r
                rows.append({"generator": name, "threads": threads, "load": load, **r})
    C.table(rows)
    new, base = fig["fused_1t_idle"], max((fig["baseline_1t_idle"], fig["baseline_2t_idle"]),
                                          key=lambda r: r["entries_per_s"])
    busy_worst = min(fig[f"fused_{t}t_busy"]["entries_per_s"] for t in (1, 2))
    C.log(f"  fused {new['entries_per_s']:.3g} entries/s vs baseline {base['entries_per_s']:.3g} (its faster thread "
          f"count, idle): {new['entries_per_s'] / base['entries_per_s']:.2f}x; busy/idle encode seconds: fused "
          f"{fig['fused_1t_busy']['encode_s'] / new['encode_s']:.2f}x at 1 thread, "
          f"{fig['fused_2t_busy']['encode_s'] / fig['fused_2t_idle']['encode_s']:.2f}x at 2; baseline "
          f"{fig['baseline_2t_busy']['encode_s'] / fig['baseline_2t_idle']['encode_s']:.2f}x at 2")
    C.emit("rcc_throughput", args, {
        "entries_per_s": new["entries_per_s"],
        "baseline_entries_per_s": base["entries_per_s"],
        "speedup": new["entries_per_s"] / base["entries_per_s"],
        "busy_worst_entries_per_s": busy_worst,
        "by_setting": {k: {f: v[f] for f in ("entries_per_s", "search_s", "search_cpu_s", "encode_s", "encode_cpu_s")}
                       for k, v in fig.items()},
        "busy_over_idle_encode_s": {k.removesuffix("_busy"): v["encode_s"] / fig[k.replace("busy", "idle")]["encode_s"]
                                    for k, v in fig.items() if k.endswith("_busy")},
        "workload": {"backbone": "gaussian", "image": args.image, "crop": size, "stop_timestep": stop,
                     "entries_per_encode": new["entries"], "candidates": codec.params.channel.num_candidates},
    }, t_start)


if __name__ == "__main__":
    main()
