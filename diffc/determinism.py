"""The determinism contract (README "Decode anywhere"; docs/design.md §5).

- **Bit-exact**: the decoder rebuilds the encoder's x_t bit for bit when both run the model on the
  same device type, with the same dtype, library versions (torch, diffusers) and intra-op thread
  count, with deterministic kernels. ``deterministic()`` sets the kernels and the thread count
  around every model call, and the thread count is the one the file records, so a receiver with
  another number of cores still matches -- as long as it has at least that many CPUs.
- **The file's thread count is a performance hint**: a receiver runs at most ``machine_threads()``
  threads (its CPUs), whatever a header asks (a forged ``threads=256`` would otherwise make a
  2-core decode 100x slower). With fewer CPUs than the encoder used, it decodes with its own count
  and says so (``check_provenance``: threads differ): bounded drift, below.
- **Bounded drift**: everything else (another GPU model, driver or library version, fp16 vs fp32,
  CPU vs GPU). The model's outputs then differ by rounding; the decoder's x_t follows the
  encoder's within a drift that ``benchmarks/decode_drift.py`` measures (>= 40 dB between the two
  reconstructions is the goal).
- **Never: desynchronisation.** Nothing the decoder derives to read the stream (chunk counts,
  chunk plans, split parts, candidates) depends on a model output: plans are functions of the
  seed, the step, the latent's shape and ``Backbone.kl_weights(shape, t, t')``; candidates come
  from counter-based hashing and an integer-exact normal (``diffc.rcc.randomness``): bit-identical on
  every device type and thread count (format 7), so a CPU file and a CUDA file share their
  candidates; the device, dtype, library versions and thread count above govern the model's
  float ops only. The channel's own torch ops run at ``SEARCH_THREADS`` on the CPU on both sides,
  whatever the file's count, and the encoder's fused kernels at ``search_workers()``
  (``search_threads``), whose results do not depend on it.

The .diffc header records the encoder's thread count (the decoder uses it), and on request
(``DiffcCodec(provenance=True)``, ``compress provenance=true``) the rest of its
``diffc.format.Provenance`` as information (not in the fingerprint: another receiver may decode,
with drift); ``check_provenance`` names what differs, in one line.

What ``deterministic()`` sets, and where each holds:

- ``torch.use_deterministic_algorithms(True, warn_only=True)``: ops with a nondeterministic default
  (on CUDA: scatter/index reductions, ``index_add_``, ``cumsum`` of older releases...) switch to
  their deterministic kernel. ``warn_only``: an op that has *no* deterministic kernel warns
  (``UserWarning: ... does not have a deterministic implementation``) instead of raising, so an
  encode never fails on a kernel; the model outputs may then round differently run to run, which
  the contract turns into bounded drift (never a desync: nothing the decoder reads depends on them).
  Measured: an encode and decode of every tiny twin on the CPU runs no op that warns
  (tests/test_determinism.py); on CUDA, ``benchmarks/gpu_check.sh`` records the ops that warn.
- ``torch.utils.deterministic.fill_uninitialized_memory = False``: ``use_deterministic_algorithms``
  turns it on, and it then fills every ``torch.empty`` with NaN -- measured +53% CPU seconds on a
  2-thread encode of a 128x128 crop (the fills are parallel regions), and deterministic mode at
  0.88-1.06x of ``deterministic=False`` without it. It only matters to code that reads memory it
  never wrote; the codec does not (the cross-process bit-exactness tests would show it).
- ``cudnn.benchmark = False`` (cuDNN picks the same algorithm every time).
- ``CUBLAS_WORKSPACE_CONFIG`` (cuBLAS's deterministic workspace): read once per process, when the
  first cuBLAS workspace is made, so PyTorch's notes ask for it before CUDA starts. Importing this module sets it
  (:func:`ensure_cublas_workspace`; ``pipelines/__init__.py`` also sets it before torch is imported);
  a process that started CUDA earlier without it gets one warning from ``deterministic()``: its
  matrix products may then differ run to run (drift, never desync).
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
from importlib import metadata
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

from .checks import checked_int
from .format import DEVICE_TYPES, DTYPES, MAX_THREADS, Provenance

#: a decoder whose reconstruction is further than this (PSNR, dB) from the encoder's has
#: desynchronised; rounding drift stays far above it (benchmarks/decode_drift.py)
DESYNC_PSNR_DB = 30.0

#: cuBLAS deterministic workspace (PyTorch's reproducibility notes); must be set before CUDA starts
CUBLAS_WORKSPACE = ":4096:8"
#: the values of CUBLAS_WORKSPACE_CONFIG that make cuBLAS deterministic (PyTorch's reproducibility notes)
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")

log = logging.getLogger("diffc")
_warned_late = False


def ensure_cublas_workspace() -> bool:
    """Put ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment if it is unset and CUDA has not
    started (a value the user set is kept). True when cuBLAS runs deterministically: a value of
    ``CUBLAS_DETERMINISTIC`` was in the environment before CUDA started. Called at import;
    ``deterministic()`` warns once when it is False."""
    global _before_cuda
    if not torch.cuda.is_initialized():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        _before_cuda = True
    return _before_cuda and os.environ.get("CUBLAS_WORKSPACE_CONFIG") in CUBLAS_DETERMINISTIC


#: the environment held the workspace setting before CUDA started: CUDA had not started when this
#: module was imported, or the value was already there (exported, or set by pipelines/__init__.py)
_before_cuda = os.environ.get("CUBLAS_WORKSPACE_CONFIG") in CUBLAS_DETERMINISTIC
ensure_cublas_workspace()


def _version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string ('2.13.0+cpu' -> (2, 13, 0)); missing parts 0."""
    nums = [int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums)))  # type: ignore[return-value]


def _diffusers_version() -> tuple[int, int, int]:
    """The installed diffusers' version, (0, 0, 0) without it: from the loaded module, else from the
    package's metadata (importing diffusers to read it took 0.8 s of every gaussian encode)."""
    loaded = sys.modules.get("diffusers")
    if loaded is not None:
        return _version(loaded.__version__)
    try:
        return _version(metadata.version("diffusers"))
    except metadata.PackageNotFoundError:
        return (0, 0, 0)


def provenance_here(device: torch.device | str, dtype: torch.dtype, threads: int | None) -> Provenance:
    """This process's setting for a model on ``device`` in ``dtype`` (``threads`` None = not fixed)."""
    dev = torch.device(device).type
    name = str(dtype).removeprefix("torch.")
    return Provenance(dev if dev in DEVICE_TYPES else "other", name if name in DTYPES else "other", threads or 0,
                      _version(torch.__version__), _diffusers_version())


def check_provenance(encoder: Provenance, receiver: Provenance) -> str | None:
    """One line naming what differs between the encoder's setting and the receiver's (None: the
    same as far as the file recorded it: the thread count always, the rest with the codec's
    ``provenance=True``); logged as a warning by the decoder."""
    fields = ("device_type", "dtype", "threads", "torch_version", "diffusers_version")
    diff = [f for f in fields if getattr(encoder, f) is not None and getattr(encoder, f) != getattr(receiver, f)]
    if not diff:
        return None
    return (f"decoding with {receiver.describe()}, the file was encoded with {encoder.describe()} "
            f"({', '.join(diff)} differ): x_t may drift from the encoder's (never desynchronise)")


def drift_psnr_db(encoder_image: torch.Tensor, decoder_image: torch.Tensor) -> float:
    """PSNR (dB, peak 1) between the encoder-side and the decoder-side reconstructions of one file
    (images in [0, 1]): inf when equal, -inf when the decoder's is not finite."""
    dec = decoder_image.detach().double().cpu()
    if not bool(torch.isfinite(dec).all()):
        return -math.inf
    mse = float(((encoder_image.detach().double().cpu() - dec) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def desynchronised(drift_db: float, min_db: float = DESYNC_PSNR_DB) -> bool:
    """A decode counts as desynchronised (not rounding drift) below ``min_db`` or when non-finite."""
    return not drift_db >= min_db


def machine_threads() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """The thread count an encoder fixes by default: this process's torch intra-op threads."""
    return max(1, min(torch.get_num_threads(), MAX_THREADS))


#: intra-op threads on the CPU of the channel's own torch ops, on both sides (the plan, the search's
#: arrival times and selection, sparse-sum look-ups, chunk sums, x_t' = mu_p + std z; the model
#: stays at the file's count: ``diffc.rcc.channel``). Measured (benchmarks/rcc_throughput.py): one thread is as
#: fast as two on an idle 2-core machine and does not collapse when another process holds a core
#: (each parallel region ends on a barrier that waits for a time slice).
SEARCH_THREADS = 1

#: threads of the fused CPU kernels (``diffc.rcc.fused``) inside ``search_threads``: the torch
#: intra-op thread count outside it (a multirun job's share, pipelines/evaluate.py ``job_threads``)
_FUSED_WORKERS: ContextVar[int | None] = ContextVar("diffc_fused_workers", default=None)


def search_workers() -> int:
    """Threads the fused CPU search kernels may use here: inside ``search_threads`` the process's
    torch intra-op threads outside it, at most ``machine_threads()``; 1 elsewhere. The kernels
    hand each thread whole chunks and pull the work dynamically (no barrier but the last), so a
    thread on a core another process holds takes less of it; no result depends on the count."""
    return _FUSED_WORKERS.get() or 1


@contextmanager
def search_threads(device: torch.device | str) -> Iterator[None]:
    """SEARCH_THREADS intra-op threads inside when ``device`` is the CPU (restored on exit), and
    ``search_workers()`` set from the thread count outside (kept when nested); nothing changes for
    an accelerator."""
    if torch.device(device).type != "cpu":
        yield
        return
    prev = torch.get_num_threads()
    token = _FUSED_WORKERS.set(max(1, min(prev, machine_threads()))) if _FUSED_WORKERS.get() is None else None
    torch.set_num_threads(SEARCH_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
        if token is not None:
            _FUSED_WORKERS.reset(token)


def use_deterministic_algorithms(mode: bool, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms``, without importing torch's compiler: the public call
    imports ``torch._inductor`` to set its ``deterministic`` flag (1.2 s of every command on the
    CPU). Until something imports it (``torch.compile`` does), only the kernel flag is set;
    ``sync_inductor`` carries the flag into a compiler loaded inside ``deterministic()``."""
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def sync_inductor() -> None:
    """Give torch's compiler the current deterministic-algorithms flag (call after ``torch.compile``
    inside ``deterministic()``, where the compiler may have been imported after the flag was set)."""
    torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled(),
                                       warn_only=torch.is_deterministic_algorithms_warn_only_enabled())


@contextmanager
def deterministic(threads: int | None) -> Iterator[None]:
    """Deterministic kernels and ``threads`` intra-op threads inside; ``None`` = leave everything
    as it is (the speed opt-out). Restores the previous settings on exit.

    Sets ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an op without a
    deterministic kernel warns instead of raising: the module docstring says why) without its
    ``fill_uninitialized_memory`` (module docstring: measured cost, no use here),
    ``cudnn.benchmark = False``, and checks that cuBLAS's deterministic workspace was set before
    CUDA started (:func:`ensure_cublas_workspace`; one warning per process when too late)."""
    global _warned_late
    if threads is None:
        yield
        return
    checked_int("threads", threads, 1, MAX_THREADS)
    if not ensure_cublas_workspace() and not _warned_late:
        _warned_late = True
        log.warning("cuBLAS is not deterministic: CUDA started before CUBLAS_WORKSPACE_CONFIG=%s was in the "
                    "environment (now %r; import diffc before any CUDA call, or export it): matrix products may "
                    "round differently run to run (drift, never desync)", CUBLAS_WORKSPACE,
                    os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    fill = torch.utils.deterministic
    prev = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
            fill.fill_uninitialized_memory)
    torch.set_num_threads(threads)
    use_deterministic_algorithms(True, warn_only=True)
    fill.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(prev[0])
        use_deterministic_algorithms(prev[1], warn_only=prev[2])
        torch.backends.cudnn.benchmark = prev[3]
        fill.fill_uninitialized_memory = prev[4]
