"""Encode seconds of the command users run, against an older commit, side by side in one run.

The issue-24 check: ``python -m pipelines.compress model=gaussian input=kodim23.png timestep=700``
(the full 768 x 512 image, 3 coded steps, about 22 kbit of KL) timed as compress prints it, in
this checkout and in a baseline commit (default 60420f3, before the skip and the fused generator),
both run from the same venv. The baseline's tree is a ``git archive`` of the commit unpacked in a
temporary directory and run with ``PYTHONPATH`` pointing at it; it runs at 1 and at 2 threads
(``OMP_NUM_THREADS``) and the faster counts. This checkout runs at its default threads, and also
with ``codec.channel.skip_kl=0`` (no entries left to the prior), so the two factors show apart:

  speedup       = baseline / this checkout (the headline, goal >= 4)
  skip_factor   = this checkout without skipping / with it
  other_factor  = baseline / this checkout without skipping (the rest: the generator, threads)

Each configuration runs ``--repeats`` times, interleaved (a load change hits every configuration
alike), and its best encode time counts (wall seconds; CPU seconds are printed next to them: a
ratio far below the threads used says the machine was busy). The file this checkout writes is
decoded by ``pipelines.decompress``, and the decoded PNG must equal the encoder's
``recon_output`` byte for byte (``decodes_to_encoder_png``).

    python benchmarks/encode_cost.py [--quick] [--baseline REF] [--repeats N] [--timestep T]
                                     [--variant NAME=OVERRIDE[,OVERRIDE...] ...]

``--variant`` adds configurations of this checkout with their own overrides (e.g.
``skip_0.01=codec.channel.skip_kl=0.01``), timed in the same interleaved runs; each gets its
``speedup`` against the same baseline under ``variants``.

--quick: a 256 x 256 crop of kodim23 (about 9x less work), one repeat, the baseline at 1 thread. The last stdout line is one
JSON object {"bench": "encode_cost", ...}.
"""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

try:
    from . import _common as C  # type: ignore
except ImportError:
    import _common as C

BASELINE = "60420f3"
#: compress's printed encode time: "encode 12.6 s" (older commits) or "encode 3.1 s (CPU 2.9 s)"
ENCODE_RE = re.compile(r"encode (\d+(?:\.\d+)?) s(?: \(CPU (\d+(?:\.\d+)?) s\))?")


def unpack(ref: str, dest: Path) -> Path:
    """The tree of commit ``ref`` of this repository, unpacked under ``dest`` (``git archive``)."""
    tar = dest / "tree.tar"
    subprocess.run(["git", "-C", str(C.ROOT), "archive", "--format=tar", "-o", str(tar), ref], check=True)
    tree = dest / "tree"
    with tarfile.open(tar) as t:
        t.extractall(tree, filter="data")
    return tree


def tree_env(tree: Path, shim: Path) -> dict[str, str]:
    """The environment that runs ``tree``'s sources with ``tree``'s configs: its root on PYTHONPATH, and
    a ``diffc_conf`` link to its conf/ in ``shim`` before any installed ``diffc_conf`` (an editable
    install of another checkout would otherwise lend its configs, pipelines/common.py _conf_dir)."""
    shim.mkdir(parents=True, exist_ok=True)
    link = shim / "diffc_conf"
    if not link.exists():
        link.symlink_to(tree / "conf", target_is_directory=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(shim)])}


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished children so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def compress(tree: Path, image: Path, out: Path, timestep: int, threads: int | None,
             *extra: str) -> tuple[float, float, float]:
    """(encode wall s, encode CPU s or NaN, as ``pipelines.compress`` run from ``tree`` prints them;
    the whole process's CPU seconds, imports and setup included: the baseline prints no CPU time)."""
    env = tree_env(tree, out.parent / f"shim-{abs(hash(str(tree)))}")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "pipelines.compress", "model=gaussian", f"input={image}", f"output={out}",
           f"timestep={timestep}", "progress=false", *extra]
    c0 = children_cpu_s()
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    proc_cpu = children_cpu_s() - c0
    m = ENCODE_RE.search(r.stdout)
    if r.returncode or not m:
        raise RuntimeError(f"compress in {tree} failed ({r.returncode}): {r.stderr.strip()[-400:] or r.stdout[-400:]}")
    return float(m.group(1)), float(m.group(2)) if m.group(2) else float("nan"), proc_cpu


def main() -> None:
    ap = C.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=BASELINE, help="git ref of the baseline")
    ap.add_argument("--repeats", type=int, default=None, help="runs per configuration (default 2, quick 1)")
    ap.add_argument("--timestep", type=int, default=700)
    ap.add_argument("--baseline-threads", default=None,
                    help="thread counts the baseline runs at, the fastest counts (default 1,2; quick 1)")
    ap.add_argument("--now-threads", type=int, default=None,
                    help="OMP_NUM_THREADS of this checkout's runs (default: not set, what users get)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=OVERRIDE[,OVERRIDE...]: also time this checkout with these overrides")
    args = ap.parse_args()
    t_start = time.perf_counter()
    variants = {v.split("=", 1)[0]: tuple(v.split("=", 1)[1].split(",")) for v in args.variant}
    repeats = args.repeats or (1 if args.quick else 2)
    from PIL import Image

    from pipelines.datasets import load_dataset

    img = dict(load_dataset("kodak", ids=["kodim23"]))["kodim23"]
    with tempfile.TemporaryDirectory(prefix="encode_cost-") as tmp:
        tmp = Path(tmp)
        image = tmp / "kodim23.png"
        if args.quick:
            h0, w0 = (img.shape[0] - 256) // 2, (img.shape[1] - 256) // 2
            img = img[h0:h0 + 256, w0:w0 + 256]
        Image.fromarray(img).save(image)
        try:
            base_tree = unpack(args.baseline, tmp)
        except (subprocess.CalledProcessError, OSError) as exc:  # not a git checkout (an installed wheel)
            C.log(f"encode_cost: no baseline tree ({exc}): needs a git checkout holding {args.baseline}")
            C.emit("encode_cost", args, {"skipped": f"no git tree of {args.baseline}"}, t_start)
            return
        configs = {  # name -> (tree, threads, extra overrides)
            **{f"baseline_{n}t": (base_tree, n, ())
               for n in map(int, (args.baseline_threads or ("1" if args.quick else "1,2")).split(","))},
            "now": (C.ROOT, args.now_threads, ()),
            "now_no_skip": (C.ROOT, args.now_threads, ("codec.channel.skip_kl=0",)),
            **{name: (C.ROOT, args.now_threads, extra) for name, extra in variants.items()},
        }
        times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in configs}
        C.log(f"encode_cost: kodim23 {img.shape[1]}x{img.shape[0]} to t={args.timestep}, baseline {args.baseline}, "
              f"{repeats} repeat(s), load {os.getloadavg()[0]:.2f}")
        for i in range(repeats):
            for name, (tree, threads, extra) in configs.items():
                wall, cpu, proc = compress(tree, image, tmp / f"{name}.diffc", args.timestep, threads, *extra)
                times[name].append((wall, cpu, proc))
                C.log(f"  [{i + 1}/{repeats}] {name:12s} encode {wall:6.2f} s (CPU {cpu:.2f} s); "
                      f"whole process CPU {proc:.2f} s")
        # the file of this checkout decodes to the PNG the encoder reports
        recon, decoded, data = tmp / "encoder.png", tmp / "decoded.png", tmp / "check.diffc"
        compress(C.ROOT, image, data, args.timestep, None, f"recon_output={recon}")
        r = subprocess.run([sys.executable, "-m", "pipelines.decompress", f"input={data}", f"output={decoded}",
                            "progress=false"], cwd=C.ROOT, env=tree_env(C.ROOT, tmp / "shim-decode"),
                           capture_output=True, text=True)
        same = r.returncode == 0 and recon.read_bytes() == decoded.read_bytes()
        sizes = {k: (tmp / f"{k}.diffc").stat().st_size for k in configs}
    best = {k: min(v, key=lambda wc: wc[0]) for k, v in times.items()}
    base_name = min((k for k in best if k.startswith("baseline_")), key=lambda k: best[k][0])
    base, now, no_skip = best[base_name][0], best["now"][0], best["now_no_skip"][0]
    C.log(f"baseline ({base_name}) {base:.2f} s, now {now:.2f} s: speedup {base / now:.2f}x "
          f"(skip {no_skip / now:.2f}x, the rest {base / no_skip:.2f}x); decoded PNG "
          f"{'equals' if same else 'DIFFERS FROM'} the encoder's")
    C.emit("encode_cost", args, {
        "image": f"kodim23 {img.shape[1]}x{img.shape[0]}", "timestep": args.timestep, "baseline_ref": args.baseline,
        "baseline_threads": int(base_name.split("_")[1][:-1]), "baseline_encode_s": base, "encode_s": now,
        "now_threads": args.now_threads,
        "encode_cpu_s": best["now"][1], "no_skip_encode_s": no_skip, "speedup": base / now,
        "skip_factor": no_skip / now, "other_factor": base / no_skip, "goal_speedup": 4.0,
        "decodes_to_encoder_png": same, "file_bytes": sizes,
        "variants": {name: {"overrides": list(variants[name]), "encode_s": best[name][0], "speedup": base / best[name][0]}
                     for name in variants},
        "process_cpu_s": {k: min(p for _, _, p in v) for k, v in times.items()},
        "runs": {k: [{"wall_s": w, "cpu_s": c, "process_cpu_s": p} for w, c, p in v] for k, v in times.items()},
    }, t_start)
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
