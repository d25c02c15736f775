"""Shared plumbing of the benchmarks: argparse, machine info, sources, the final JSON line.

Every benchmark is ``python benchmarks/NAME.py [--quick]``: the one place the project uses argparse
flags instead of Hydra ``key=value`` overrides, because the benchmark contract (docs/design.md §2) fixes
the ``--quick`` flag. Progress and tables go to stdout,
and the LAST stdout line is one JSON object (``emit``) with the headline figures, ``bench``,
``quick`` and ``machine`` (docs/design.md §2). Speed is only ever reported as a ratio against a
baseline measured in the same run (absolute times on a shared machine are noise).

This module is not a benchmark: ``python benchmarks/_common.py`` does nothing (``make bench``
runs every ``benchmarks/*.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/X.py` from anywhere, installed or not
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DIFFC_CACHE", str(ROOT / ".cache" / "diffc"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffc.device import resolve_device  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the options every benchmark shares."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 CPU cores")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 with --quick, torch's default otherwise; on a "
                        "shared machine several threads per op can be several times slower than one)")
    p.add_argument("--device", default="cpu", help="torch device for the codec work (auto = cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic sources / simulations")
    return p


def setup(args: argparse.Namespace) -> None:
    """Apply the shared options (threads: 1 by default with --quick; ``--device auto`` resolved)."""
    args.device = str(resolve_device(args.device))
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    dev = resolve_device(device)
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(dev)
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)  # how shared the machine was
    except OSError:
        pass
    return info


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def table(rows: list[dict[str, Any]], cols: list[str] | None = None, fmt: str = "{:.4g}") -> None:
    """Print a list of dicts as an aligned text table."""
    if not rows:
        return
    cols = cols or list(rows[0])
    cell = lambda v: fmt.format(v) if isinstance(v, float) else str(v)
    cells = [[cell(r.get(c, "")) for c in cols] for r in rows]
    width = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    log("  ".join(c.rjust(w) for c, w in zip(cols, width)))
    for r in cells:
        log("  ".join(v.rjust(w) for v, w in zip(r, width)))


def _clean(obj: Any, digits: int = 6) -> Any:
    """JSON-safe: NaN/inf -> None, numpy/torch scalars -> Python, floats rounded."""
    if isinstance(obj, dict):
        return {str(k): _clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, digits) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist(), digits)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else float(f"{obj:.{digits}g}")
    return obj


def emit(bench: str, args: argparse.Namespace, figures: dict[str, Any], started: float | None = None) -> dict:
    """Print the benchmark's JSON line (must be the last stdout line) and return it."""
    out = {"bench": bench, "quick": bool(args.quick), **figures, "machine": machine_info(args.device),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if started is not None:
        out["wall_s"] = time.perf_counter() - started
        out["cpu_s"] = time.process_time()
    out = _clean(out)
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return out


@contextlib.contextmanager
def busy(on: bool = True) -> Iterator[None]:
    """One competing busy process (``python -c 'while True: pass'``) while inside, when ``on``:
    a neighbour holding a core, as on a shared node."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if on else None
    try:
        time.sleep(0.3 if on else 0)
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def kodak_small(quick: bool, quick_size: int = 32, size: int = 64) -> list[tuple[str, torch.Tensor]]:
    """The kodak-small images as [3, H, W] float tensors in [0, 1].

    --quick: the central ``quick_size`` square of each 64 x 64 crop (a quarter of the work).
    """
    from pipelines.datasets import load_dataset, to_tensor

    out = []
    for image_id, img in load_dataset("kodak-small", size=size):
        x = to_tensor(img)
        if quick and quick_size < size:
            o = (size - quick_size) // 2
            x = x[:, o:o + quick_size, o:o + quick_size].contiguous()
        out.append((image_id, x))
    return out


def kodak_crop(name: str, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` crop of a full Kodak image (e.g. "kodim23") as a [3, H, W]
    float tensor in [0, 1] (the dataset cache: pipelines.datasets)."""
    from pipelines.datasets import load_dataset, to_tensor

    for image_id, img in load_dataset("kodak"):
        if image_id == name:
            x = to_tensor(img)
            top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
            return x[:, top:top + size, left:left + size].contiguous()
    raise SystemExit(f"no Kodak image {name!r}")


if __name__ == "__main__":  # not a benchmark (make bench runs benchmarks/*.py)
    pass
