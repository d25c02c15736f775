"""The commands users run, on an idle machine and beside one busy process (issue 24's timing lines).

- ``python -m pipelines.compress model=gaussian timestep=300`` on the central 256 x 256 crop of
  kodim23, its printed encode seconds: ``collapse`` = busy / idle (goal <= 2);
- the same with ``deterministic=false``, idle: ``deterministic_cost`` = deterministic / not - 1
  (goal <= 0.15);
- ``python -m pipelines.demo`` (a fresh ``root`` in a temporary directory each run, nothing
  resumed), idle and busy: wall seconds (goal < 60 s busy).

The commands run at their default threads (what users get; ``--threads N`` sets their
``OMP_NUM_THREADS``). Busy = one ``python -c 'while True: pass'`` started before and killed after
each busy run (``_common.busy``). Configurations are interleaved over ``--repeats`` runs (a load
change hits all alike) and the best run counts; CPU seconds are printed next to wall seconds.

    python benchmarks/contention.py [--quick] [--repeats N] [--no-demo]

--quick: one repeat. The last stdout line is one JSON object {"bench": "contention", ...}.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from . import _common as C  # type: ignore
    from .encode_cost import compress, tree_env  # type: ignore
except ImportError:
    import _common as C
    from encode_cost import compress, tree_env

TIMESTEP = 300
GOALS = {"collapse": 2.0, "deterministic_cost": 0.15, "demo_busy_s": 60.0}


def demo(root: Path, threads: int | None) -> float:
    """Wall seconds of ``python -m pipelines.demo root=ROOT`` from this checkout."""
    env = tree_env(C.ROOT, root.parent / "shim-demo")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pipelines.demo", f"root={root}"], cwd=C.ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"demo failed ({r.returncode}): {r.stderr.strip()[-400:] or r.stdout[-400:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = C.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=None, help="runs per configuration (default 2, quick 1)")
    ap.add_argument("--no-demo", action="store_true", help="leave out the demo's runs")
    args = ap.parse_args()
    t_start = time.perf_counter()
    repeats = args.repeats or (1 if args.quick else 2)
    from PIL import Image

    from pipelines.datasets import load_dataset

    img = dict(load_dataset("kodak", ids=["kodim23"]))["kodim23"]
    h0, w0 = (img.shape[0] - 256) // 2, (img.shape[1] - 256) // 2
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        tmp = Path(tmp)
        image = tmp / "kodim23-256.png"
        Image.fromarray(img[h0:h0 + 256, w0:w0 + 256]).save(image)
        runs = {  # name -> (busy, what runs)
            "compress_idle": (False, lambda out: compress(C.ROOT, image, out, TIMESTEP, args.threads)),
            "compress_busy": (True, lambda out: compress(C.ROOT, image, out, TIMESTEP, args.threads)),
            "compress_nondeterministic": (False, lambda out: compress(C.ROOT, image, out, TIMESTEP, args.threads,
                                                                      "deterministic=false")),
        }
        if not args.no_demo:
            runs["demo_idle"] = (False, lambda out: (demo(out, args.threads), float("nan"), float("nan")))
            runs["demo_busy"] = (True, lambda out: (demo(out, args.threads), float("nan"), float("nan")))
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
        C.log(f"contention: {repeats} repeat(s), threads {args.threads or 'default'}, load {os.getloadavg()[0]:.2f}")
        for i in range(repeats):
            for name, (on, run) in runs.items():
                with C.busy(on):
                    wall, cpu, _ = run(tmp / f"{name}-{i}")
                times[name].append((wall, cpu))
                C.log(f"  [{i + 1}/{repeats}] {name:26s} {wall:6.2f} s (CPU {cpu:.2f} s)")
    best = {k: min(w for w, _ in v) for k, v in times.items()}
    fig = {
        "image": "kodim23 central 256x256", "timestep": TIMESTEP, "threads": args.threads,
        "collapse": best["compress_busy"] / best["compress_idle"],
        "deterministic_cost": best["compress_idle"] / best["compress_nondeterministic"] - 1,
        "demo_idle_s": best.get("demo_idle"), "demo_busy_s": best.get("demo_busy"), "goals": GOALS,
        "runs": {k: [{"wall_s": w, "cpu_s": c} for w, c in v] for k, v in times.items()},
    }
    C.log(f"encode busy/idle {fig['collapse']:.2f}x (goal <= 2); deterministic cost {fig['deterministic_cost']:+.1%} "
          f"(goal <= 15%); demo {fig['demo_idle_s']} s idle, {fig['demo_busy_s']} s busy (goal < 60 s)")
    C.emit("contention", args, fig, t_start)


if __name__ == "__main__":
    main()
