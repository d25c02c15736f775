"""What one coded step of the PFR search costs a GPU, measured by CPU proxies (and timed on CUDA).

Workload (per latent size: SD 1.5 on Kodak 4x64x96, SDXL 4x128x128, Flux at 1024^2 16x128x128):
the step of benchmarks/backbone_step.py's RCC part, i.e. a u with the reference's mean KL per step
(``REF_STEP_KL_BITS``: 646 / 1,333 / 9,718 bits), chunk_bits 12 + padding 2 (K = 2^14), a uniform
plan; the step = plan to the device, ``plan.coded``, ``encode_chunks``, ``decode_chunks``,
``plan.combine`` and one read of the indices for the entropy coder.

Figures per step:

- ``ops_per_step``: aten ops dispatched (a ``TorchDispatchMode`` counter; each is >= 1 kernel
  launch on a GPU), counted at the full K with the CUDA block size
  (``diffc.rcc.pfr.BLOCK_ENTRIES_CUDA``) by running the step on the ``meta`` device: shapes only, no
  arithmetic, so a Flux step counts in seconds. ``before``: the pre-fusion search (kept below as
  ``reference_step``: a scatter-add per block of 2^19 entries, per-block row hashes, the plan
  copied to the device by every call) counted the same way; with --quick at K/16 and K/8 and
  extrapolated to K linearly in its blocks (exact: every block dispatches the same ops).
- ``syncs_per_step``: host reads of device values: ``aten._local_scalar_dense`` (``.item()``,
  ``int()``, ``bool()``, ``float()`` of a tensor) on a non-CPU tensor and device-to-host copies,
  counted on the meta run (where a read of a value raises, so the search itself has none by
  construction) plus the entropy coder's one read of the indices. ``h2d_per_step``: host-to-device
  copies (the plan's tensors; pinned and non-blocking on CUDA in the new code, pageable in the old,
  where each waits for the stream).
- ``peak_mib``: a CPU proxy for the search's device memory: the largest sum of live tensor bytes
  allocated by the step's ops (outputs of non-view, non-in-place ops, released when their Python
  tensor dies), on the meta run at full K with the CUDA block size. On CUDA:
  ``torch.cuda.max_memory_allocated``.
- ``files_identical``: the indices and candidates of the step on the CPU (default CPU block and the
  CUDA block size) against their sha256 computed with the pre-fusion code before the change
  (``BEFORE``; --quick: K = 2^10, full: K = 2^14).

``--device cuda``: ms per step (eager; compiled with ``compile=True`` after a warm-up), the
pre-fusion step's ms (Flux at K/16, scaled), peak memory, synchronising CUDA calls
(``torch.cuda.set_sync_debug_mode``) and eager = compiled indices.
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings
import weakref

try:
    from . import _common as C  # type: ignore
    from .backbone_step import CHUNK_BITS, PADDING_BITS, QUICK_RCC_BITS, REF_STEP_KL_BITS  # type: ignore
except ImportError:
    import _common as C
    from backbone_step import CHUNK_BITS, PADDING_BITS, QUICK_RCC_BITS, REF_STEP_KL_BITS

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import diffc.rcc.pfr as pfr
from diffc.rcc.pfr import ChunkPlan, _arrival_key, decode_chunks, encode_chunks, make_plan
from diffc.rcc.randomness import column_hashes, entry_hashes, hash_to_normal, row_hashes, uniforms, wide_tables

LATENTS = {"sd15": (4, 64, 96), "sdxl": (4, 128, 128), "flux": (16, 128, 128)}
KL_BITS = {"sd15": REF_STEP_KL_BITS["sd15"], "sdxl": REF_STEP_KL_BITS["sdxl"], "flux": REF_STEP_KL_BITS["flux-dev"]}
PLAN_KEY, STEP_KEY = 3, 4  # as benchmarks/backbone_step.py's rcc_step
#: sha256[:16] of (indices, candidates) of ``step_inputs``: integer-exact candidates (format 7), the same
#: from the pre-fusion search below (``reference_step``), the torch search and the fused CPU kernels
BEFORE = {10: {"sd15": "d4ef2f83ced2845b", "sdxl": "ed3d345ab801c2fe", "flux": "39430806ce489fcb"},
          14: {"sd15": "55cb6a324de631cf", "sdxl": "dd70c449fd38c6e3", "flux": "ad92aee365136b2d"}}
#: before the change: the CPU block size served every device
OLD_BLOCK_ENTRIES = 1 << 19


class Counter(TorchDispatchMode):
    """Counts dispatched aten ops, host reads of device values, host-to-device copies and the peak
    of live bytes allocated by the ops (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.ops = self.syncs = self.h2d = 0
        self.live = self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense" and first is not None and first.device.type != "cpu":
            self.syncs += 1
        out = func(*args, **kwargs)
        if name in ("_to_copy", "copy_") and first is not None:
            src = (args[1] if name == "copy_" else first).device.type
            dst = (first if name == "copy_" else out).device.type
            self.syncs += int(src != "cpu" and dst == "cpu")
            self.h2d += int(src == "cpu" and dst != "cpu")
        if not func.is_view and not func._schema.is_mutable:
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    n = t.numel() * t.element_size()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, n)
        return out


def step_inputs(name: str, device: torch.device | str) -> tuple[int, int, torch.Tensor]:
    """(latent entries, chunks, u float32 [entries] on ``device``) of a latent's step."""
    n = math.prod(LATENTS[name])
    kl = KL_BITS[name]
    g = torch.Generator().manual_seed(2)
    u = torch.randn(n, generator=g)
    u = u * math.sqrt(2 * kl * math.log(2)) / u.norm()
    return n, max(1, math.ceil(kl / CHUNK_BITS)), u.to(device)


def fused_step(n: int, c: int, u: torch.Tensor, k: int, block_entries: int | None = None,
               compile: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One coded step with today's code: (indices on the host, candidates in coding order)."""
    plan = make_plan(n, c, PLAN_KEY, device=u.device)
    idx = encode_chunks(plan.coded(u), plan, k, STEP_KEY, block_entries=block_entries, compile=compile)
    z = decode_chunks(idx, plan, STEP_KEY, u.device)
    plan.combine(z, n)
    return (idx if u.device.type == "meta" else idx.cpu()), z  # the entropy coder's one read


# ---- the pre-fusion search, kept as the baseline (diffc/rcc/pfr.py before this benchmark) -------------
def _reference_blocks(key: int, d: int, k: int, device):
    col_h = column_hashes(key, torch.arange(d, dtype=torch.int32, device=device))[:, None]
    block = max(1, min(k, OLD_BLOCK_ENTRIES // max(d, 1)))
    h_buf = torch.empty(d, block, dtype=torch.int32, device=device)
    t_buf = torch.empty_like(h_buf)
    z_buf = torch.empty(d, block, dtype=torch.float32, device=device)
    for n0 in range(0, k, block):
        rows = torch.arange(n0, min(n0 + block, k), dtype=torch.int32, device=device)
        b = rows.numel()
        h = entry_hashes(col_h, row_hashes(key, rows)[None, :], h_buf[:, :b], t_buf[:, :b])
        yield rows, hash_to_normal(h, out=z_buf[:, :b])


def reference_encode(u: torch.Tensor, plan: ChunkPlan, k: int, key: int) -> torch.Tensor:
    d, c, dev = u.numel(), plan.n_chunks, u.device
    u_col = u.to(torch.float32)[:, None]
    chunk_of = plan.chunk_of.to(dev)
    dots_buf = torch.empty(c, max(1, min(k, OLD_BLOCK_ENTRIES // d)), dtype=torch.float32, device=dev)
    chunk_cols = torch.arange(c, dtype=torch.int32, device=dev)
    best_score = torch.full((c,), math.inf, dtype=torch.float64, device=dev)
    best_idx = torch.zeros(c, dtype=torch.int64, device=dev)
    s_carry = torch.zeros(c, dtype=torch.float64, device=dev)
    for rows, z in _reference_blocks(key, d, k, dev):
        dots = dots_buf[:, :rows.numel()].zero_().index_add_(0, chunk_of, z.mul_(u_col))
        exps = -torch.log(uniforms(_arrival_key(key), rows[:, None], chunk_cols[None, :]))
        s = torch.cumsum(exps, 0) + s_carry
        s_carry = s[-1]
        score = torch.log(s) - dots.T.to(torch.float64)
        bs, bi = score.min(0)
        better = bs < best_score
        best_score = torch.where(better, bs, best_score)
        best_idx = torch.where(better, bi.to(torch.int64) + rows[0], best_idx)
    return best_idx


def reference_step(n: int, c: int, u: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same step before the change: a CPU plan, copied to the device by each call."""
    dev = u.device
    plan = make_plan(n, c, PLAN_KEY)
    u_coded = u.flatten()[plan.src.to(dev)]
    idx = reference_encode(u_coded, plan, k, STEP_KEY)
    rows = idx.to(dev)[plan.chunk_of.to(dev)].to(torch.int32)
    cols = torch.arange(plan.src.numel(), dtype=torch.int32, device=dev)
    z = hash_to_normal(entry_hashes(column_hashes(STEP_KEY, cols), row_hashes(STEP_KEY, rows)))
    torch.zeros(n, dtype=z.dtype, device=dev).index_copy_(0, plan.src.to(dev), z)
    return (idx if dev.type == "meta" else idx.cpu()), z


def counted(fn, *args, **kwargs) -> dict:
    """Ops, host reads, H2D copies and peak live MiB of fn(*args) (meta tensors in, see top)."""
    with Counter() as cnt:
        fn(*args, **kwargs)
    syncs = cnt.syncs + 1  # + the entropy coder's read of the indices (skipped on meta)
    return {"ops": cnt.ops, "syncs": syncs, "h2d": cnt.h2d, "peak_mib": cnt.peak / 2**20}


def counted_before(n: int, c: int, u: torch.Tensor, k: int, quick: bool) -> dict:
    """``counted(reference_step)`` at K; quick: its ops at K/16 and K/8, extrapolated in blocks."""
    if not quick:
        return counted(reference_step, n, c, u, k)
    block = max(1, min(k, OLD_BLOCK_ENTRIES // n))
    (k1, a), (k2, b) = ((kk, counted(reference_step, n, c, u, kk)) for kk in (k // 16, k // 8))
    per_block = (b["ops"] - a["ops"]) / (math.ceil(k2 / block) - math.ceil(k1 / block))
    return {**b, "ops": round(b["ops"] + per_block * (math.ceil(k / block) - math.ceil(k2 / block)))}


def digest(idx: torch.Tensor, z: torch.Tensor) -> str:
    return hashlib.sha256(idx.cpu().numpy().tobytes() + z.cpu().numpy().tobytes()).hexdigest()[:16]


def cuda_figures(name: str, k: int, device: torch.device) -> dict:
    """ms per step (eager, compiled, pre-fusion), peak MiB, synchronising calls, eager = compiled."""
    n, c, u = step_inputs(name, device)

    def ms(fn, *a, reps=3, **kw):
        fn(*a, **kw)  # warm-up (and compilation)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*a, **kw)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps * 1e3, out

    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    eager_ms, (idx, _) = ms(fused_step, n, c, u, k)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fused_step(n, c, u, k)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sync_calls = sum("synchroniz" in str(w.message) for w in caught)
    compiled_ms, (idx_c, _) = ms(fused_step, n, c, u, k, compile=True)
    k_ref = k if name != "flux" else k // 16  # the pre-fusion Flux step: ~10^6 launches, scaled
    ref_ms, (idx_r, _) = ms(reference_step, n, c, u, k_ref, reps=1)
    ref_ms *= k / k_ref
    small = pfr.block_size(n, k, 1 << 24, device)
    return {"ms_eager": eager_ms, "ms_compiled": compiled_ms, "ms_before": ref_ms, "speedup": ref_ms / eager_ms,
            "peak_mib": peak, "sync_calls": sync_calls, "compiled_equals_eager": bool(torch.equal(idx, idx_c)),
            "block_invariant": bool(torch.equal(idx, fused_step(n, c, u, k, block_entries=small * n)[0])),
            "before_equals": bool(torch.equal(idx, idx_r)) if k_ref == k else None}


def main() -> None:
    ap = C.parser(__doc__.split("\n\n")[0])
    args = ap.parse_args()
    C.setup(args)
    t_start = time.perf_counter()
    k_full = 1 << (CHUNK_BITS + PADDING_BITS)
    k_run = 1 << (QUICK_RCC_BITS if args.quick else CHUNK_BITS + PADDING_BITS)
    C.log(f"gpu_readiness: K = {k_full} (CPU identity checks at K = {k_run}), CUDA block "
          f"{pfr.BLOCK_ENTRIES_CUDA} entries, CPU block {pfr.BLOCK_ENTRIES}, {torch.get_num_threads()} threads")
    rows, identical = [], True
    wide_tables("meta")  # the normal's tables: one host-to-device copy per device and process, not per step
    for name in LATENTS:
        n, c, u_meta = step_inputs(name, "meta")
        after = counted(fused_step, n, c, u_meta, k_full)
        before = counted_before(n, c, u_meta, k_full, args.quick)
        _, _, u = step_inputs(name, "cpu")
        same = {}
        for label, entries in (("cpu_block", None), ("cuda_block", min(pfr.BLOCK_ENTRIES_CUDA, 1 << 24))):
            t0 = time.perf_counter()
            same[label] = digest(*fused_step(n, c, u, k_run, block_entries=entries)) == BEFORE[QUICK_RCC_BITS if args.quick else 14][name]
            same[label + "_s"] = time.perf_counter() - t0
        identical &= same["cpu_block"] and same["cuda_block"]
        rows.append({"latent": name, "entries": n, "chunks": c, "ops": after["ops"], "ops_before": before["ops"],
                     "syncs": after["syncs"], "syncs_before": before["syncs"], "h2d": after["h2d"],
                     "h2d_before": before["h2d"], "peak_mib": after["peak_mib"], "peak_mib_before": before["peak_mib"],
                     "identical": same["cpu_block"] and same["cuda_block"], "cpu_s": same["cpu_block_s"]})
        C.log(f"  {name}: {after['ops']} ops/step (before {before['ops']}), files identical {rows[-1]['identical']}")
    C.table(rows)
    figures = {"ops_per_step": {r["latent"]: r["ops"] for r in rows},
               "ops_per_step_before": {r["latent"]: r["ops_before"] for r in rows},
               "syncs_per_step": max(r["syncs"] for r in rows),
               "syncs_per_step_before": max(r["syncs_before"] for r in rows),
               "h2d_per_step": {r["latent"]: r["h2d"] for r in rows},
               "h2d_per_step_before": {r["latent"]: r["h2d_before"] for r in rows},
               "peak_mib": {r["latent"]: r["peak_mib"] for r in rows},
               "peak_mib_before": {r["latent"]: r["peak_mib_before"] for r in rows},
               "files_identical": identical,
               "goals": {"ops_per_step_flux": 2000, "ops_per_step_sd15": 500, "syncs_per_step": 4},
               "workload": {"candidates": k_full, "candidates_identity_check": k_run, "chunk_bits": CHUNK_BITS,
                            "padding_bits": PADDING_BITS, "kl_bits_per_step": KL_BITS,
                            "block_entries_cuda": pfr.BLOCK_ENTRIES_CUDA, "block_entries_cpu": pfr.BLOCK_ENTRIES}}
    if torch.device(args.device).type == "cuda":
        dev = torch.device(args.device)
        cuda = {name: cuda_figures(name, k_full, dev) for name in LATENTS}
        for name, f in cuda.items():
            C.log(f"  cuda {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in f.items()))
        figures["cuda"] = cuda
    C.emit("gpu_readiness", args, figures, t_start)


if __name__ == "__main__":
    main()
