"""Fuzz campaign of the .diffc reader and decoder: mutated, truncated, spliced and forged files.

Real files come from two tiny codecs (the gaussian backbone on a 12x20 image and tiny-sd15 on a
16x16 one, short schedules, captions); each case is one of
- ``flip``: 1-8 random bit flips (the CRC32 then catches them);
- ``flip_crc``: 1-4 random byte changes anywhere, CRC32 recomputed (reaches header checks and the decoder);
- ``indel_crc``: bytes inserted or deleted, CRC32 recomputed;
- ``truncate``: a random prefix;
- ``splice``: the head of one real file and the tail of another, CRC32 recomputed half the time;
- ``forge``: a well-formed file (``diffc.format.write``) with random fields, often the right
  fingerprint for its random codec parameters, and a random or degenerate payload.
Every case goes through ``diffc.format.read`` and, if that accepts it, ``DiffcCodec.decode``
(with reconstruction) on the codec of the backbone it names (gaussian for any other name, which
refuses it by name). Outcomes: ``refused`` (a ``DiffcFormatError`` subclass whose message is one
line with its kind's prefix once, ``refusal_message``), ``decoded`` (finite pixels of the declared
size), ``crash`` (anything else, another message, non-finite pixels, or a wrong size) and
``hang`` (over ``--hang-s`` seconds; SIGALRM). Goal: 0 crashes, 0 hangs. A file's decoding work
is bounded by its header (at most the schedule's steps plus 1000 ODE reconstruction steps at the
declared size, with the declared thread count): a forged tiny-sd15 file asking for
1000 ODE steps with 8 threads takes ~25 s on 2 busy cores, which is work, not a hang. So the
campaign reconstructs with at most ``MAX_RECON_STEPS`` ODE steps (the same code path), and a case
over 120 s is a hang.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import signal
import struct
import time
import zlib

try:
    from . import _common as C  # type: ignore
except ImportError:
    import _common as C

import numpy as np
import torch

from analysis.errors import describe
from diffc import format as fmt
from diffc.codec import CodecParams, DiffcCodec
from diffc.profiles import profile_params
from diffc.recon import Recon
from diffc.schedule import encoding_timesteps
from diffc.rcc.spec import PfrSpec
from pipelines.common import build_codec, compose

#: reconstructions run at most this many ODE steps (the same code as 1000 steps, a fraction of the work)
MAX_RECON_STEPS = 8
KINDS = ("flip", "flip_crc", "indel_crc", "truncate", "splice", "forge")
SCHEDULES = ("linspace-3", "linspace-6", "geom-4", "geom-12", "linspace-1", "geom-0", "paper-x", "paper")


class Hang(BaseException):
    """Raised by the alarm: a case ran past its time (BaseException: no ``except Exception`` eats it)."""


def _alarm(signum, frame):
    raise Hang()


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def base_codecs() -> dict[str, tuple[DiffcCodec, torch.Tensor]]:
    """The codecs under test and an image for each."""
    g = torch.Generator().manual_seed(0)
    small = ["codec.schedule=linspace-6", "codec.channel.chunk_bits=4", "codec.channel.padding_bits=1"]
    gauss = build_codec(compose("compress", ["model=gaussian", *small, "codec.recon.mode=denoise"]))
    sd = build_codec(compose("compress", ["model=tiny-sd15", *small, "codec.recon.mode=ode", "codec.recon.steps=3"]))
    return {"gaussian": (gauss, torch.rand(3, 12, 20, generator=g)), "tiny-sd15": (sd, torch.rand(3, 16, 16, generator=g))}


def real_files(codecs) -> list[bytes]:
    out = []
    for codec, img in codecs.values():
        for caption in (None, "a fuzzed caption"):
            res = codec.encode(img, stop_timesteps=codec.timesteps[1:], caption=caption)
            out += [p.data for p in res.points]
    return out


def forge(rng: np.random.Generator, codecs) -> bytes:
    """A well-formed file (``diffc.format.write``): random codec fields, or 30 % of the time the
    backbone's default profile (a header without codec fields), often the right fingerprint, a
    random or degenerate payload of any byte length, provenance recorded half the time."""
    name = str(rng.choice(list(codecs) + ["tiny-flux", "nope"]))
    schedule = str(rng.choice(SCHEDULES))
    cb, pb = int(rng.integers(1, 9)), int(rng.integers(0, 4))
    split = float(rng.choice([0, 1, 2, 2.25, 63.75]))
    skip = int(rng.choice([0, 30, 255]))
    seed = int(rng.integers(0, 4))
    recon = str(rng.choice(fmt.RECON_MODES))
    recon_steps = int(rng.choice([1, 2, 3, 1000]))
    parity = str(rng.choice(fmt.PARITIES)) if rng.random() < 0.2 else "project"
    try:
        params = profile_params(name, parity) if rng.random() < 0.3 else CodecParams(schedule, seed=seed, channel=PfrSpec(chunk_bits=cb, padding_bits=pb, split_above=split, skip_kl=skip / 1000), recon=Recon(mode=recon, steps=recon_steps), parity=parity)
        n_max = len(encoding_timesteps(params.schedule))
        fp = DiffcCodec(codecs[name][0].backbone, params).fingerprint() if name in codecs and rng.random() < 0.8 \
            else bytes(rng.integers(0, 256, fmt.FINGERPRINT_BYTES, dtype=np.uint8))
        channel_params = params.channel.to_bytes()
    except ValueError:  # invalid parameters: written anyway, the decoder's spec refuses them
        params = CodecParams(schedule=schedule if schedule in ("paper",) else "paper", seed=seed, parity=parity)
        n_max, fp, channel_params = 8, b"\0\0", bytes([cb, pb, int(4 * split), skip])
        schedule_name = schedule
    else:
        schedule_name = params.schedule
    kind = rng.integers(0, 3)
    n_bytes = int(rng.integers(0, 160))
    payload = (bytes(rng.integers(0, 256, n_bytes, dtype=np.uint8)) if kind == 0
               else bytes([int(rng.integers(0, 256))]) * n_bytes if kind == 1 else b"")
    threads = int(rng.integers(0, 9))
    prov = fmt.Provenance(str(rng.choice(fmt.DEVICE_TYPES)), str(rng.choice(fmt.DTYPES)), threads,
                          (2, int(rng.integers(0, 20)), 0), (0, int(rng.integers(0, 50)), 0)) \
        if rng.random() < 0.5 else fmt.Provenance(threads=threads)
    header = fmt.Header(backbone=name, fingerprint=fp, width=int(rng.integers(1, 48)), height=int(rng.integers(1, 48)),
                        seed=params.seed, schedule=schedule_name, channel=params.channel.name,
                        channel_params=channel_params, n_steps=int(rng.integers(0, n_max + 2)), recon=params.recon,
                        caption=None if rng.random() < 0.5 else "x" * int(rng.integers(1, 30)), provenance=prov,
                        parity=parity)
    return fmt.write(header, payload)


def make_case(rng: np.random.Generator, files: list[bytes], codecs) -> tuple[str, bytes]:
    kind = KINDS[int(rng.integers(0, len(KINDS)))]
    data = bytearray(files[int(rng.integers(0, len(files)))])
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, 8 * len(data)))
            data[i // 8] ^= 1 << (i % 8)
        return kind, bytes(data)
    if kind == "flip_crc":
        body = data[:-4]
        for _ in range(int(rng.integers(1, 5))):
            body[int(rng.integers(0, len(body)))] = int(rng.integers(0, 256))
        return kind, with_crc(bytes(body))
    if kind == "indel_crc":
        body = data[:-4]
        i = int(rng.integers(0, len(body)))
        if rng.random() < 0.5:
            del body[i:i + int(rng.integers(1, 9))]
        else:
            body[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        return kind, with_crc(bytes(body))
    if kind == "truncate":
        return kind, bytes(data[:int(rng.integers(0, len(data)))])
    if kind == "splice":
        other = files[int(rng.integers(0, len(files)))]
        out = bytes(data[:int(rng.integers(0, len(data)))]) + other[int(rng.integers(0, len(other))):]
        return kind, with_crc(out[:-4]) if rng.random() < 0.5 and len(out) > 4 else out
    return kind, forge(rng, codecs)


def refusal_message(e: fmt.DiffcFormatError) -> str | None:
    """What is wrong with a refusal's message, or None: it must be one line that starts with its
    kind's prefix and holds no other (``diffc.format.DiffcFormatError``: one prefix per kind)."""
    said, kinds, prefixes = str(e), [fmt.DiffcFormatError], set()
    while kinds:
        kind = kinds.pop()
        prefixes.add(kind.prefix)
        kinds += kind.__subclasses__()
    if "\n" in said or not said.startswith(e.prefix) or sum(said.count(p) for p in prefixes if p) != bool(e.prefix):
        return f"{type(e).__name__} message {said!r}"
    return None


def run_case(data: bytes, codecs, hang_s: float) -> tuple[str, str]:
    """(outcome, detail) of one file."""
    signal.setitimer(signal.ITIMER_REAL, hang_s)
    try:
        header, _ = fmt.read(data)
        codec = codecs.get(header.backbone, codecs["gaussian"])[0]
        res = codec.decode(data, recon_steps=min(header.recon.steps, MAX_RECON_STEPS))
        ok = res.image is not None and tuple(res.image.shape) == (3, header.height, header.width) \
            and bool(torch.isfinite(res.image).all()) and bool(torch.isfinite(res.x_t).all())
        return ("decoded", "") if ok else ("crash", "non-finite or wrong-size image")
    except fmt.DiffcFormatError as e:
        wrong = refusal_message(e)
        return ("crash", wrong) if wrong else ("refused", type(e).__name__)
    except Hang:
        return "hang", ""
    except Exception as e:  # noqa: BLE001 (the point: anything else is a crash)
        return "crash", describe(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def run_shard(job: tuple[int, int, int, float]) -> dict:
    """Cases ``first``..``first + n - 1`` of the campaign (rng seeded by (seed, shard)) in this
    process: outcome counts, refusal types, crash/hang examples, the slowest case."""
    shard, n, seed, hang_s = job
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    logging.getLogger("diffc").setLevel(logging.ERROR)  # forged provenance: one warning per file otherwise
    codecs = base_codecs()
    files = real_files(codecs)
    rng = np.random.default_rng([seed, shard])
    out = {"by_kind": {k: collections.Counter() for k in KINDS}, "refusals": collections.Counter(),
           "crashes": [], "slowest": 0.0, "real_files": len(files), "backbones": list(codecs)}
    t_start = time.perf_counter()
    for i in range(n):
        kind, data = make_case(rng, files, codecs)
        t0 = time.perf_counter()
        outcome, detail = run_case(data, codecs, hang_s)
        out["slowest"] = max(out["slowest"], time.perf_counter() - t0)
        out["by_kind"][kind][outcome] += 1
        if outcome == "refused":
            out["refusals"][detail] += 1
        elif outcome in ("crash", "hang"):
            C.log(f"  {outcome} in shard {shard}, case {i} ({kind}): {detail} {data.hex()}")
            out["crashes"].append({"shard": shard, "case": i, "kind": kind, "outcome": outcome, "detail": detail,
                                   "hex": data.hex()})
        if (i + 1) % max(1, n // 5) == 0:
            done = sum(sum(c.values()) for c in out["by_kind"].values())
            C.log(f"  shard {shard}: {done} cases ({time.perf_counter() - t_start:.0f} s)")
    return out


def limit_file(case: str) -> tuple[DiffcCodec, bytes]:
    """A well-formed file (right fingerprint) whose header claims the limits, over a payload the
    range decoder refuses at step 1: what it costs is the work before the first payload byte."""
    name, w, h, n_steps, opts = LIMIT_CASES[case]
    schedule = "geom-12"
    codec = build_codec(compose("compress", [f"model={name}", f"codec.schedule={schedule}", *opts]))
    header = codec.header(w, h, min(n_steps, codec.chain.n_steps), None)
    return codec, fmt.write(header, b"\xff" * 8)


def run_limit_case(case: str) -> None:
    """Decode one limit case in this (fresh) process; print its outcome, seconds and peak RSS as JSON."""
    import json
    import resource

    torch.set_num_threads(1)
    logging.getLogger("diffc").setLevel(logging.ERROR)
    codec, data = limit_file(case)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        codec.decode(data, recon_steps=1)
        outcome = "decoded"
    except fmt.DiffcFormatError as e:
        outcome = f"refused: {type(e).__name__}: {str(e)[:90]}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"case": case, "outcome": outcome, "s": round(time.perf_counter() - t0, 2),
                      "peak_rss_mb": round(peak / 1024), "rss_before_mb": round(base / 1024)}))


def limit_cases(hang_s: float) -> list[dict]:
    """Every LIMIT_CASES entry in a process of its own (peak RSS is per process)."""
    import json
    import subprocess
    import sys

    out = []
    for case in LIMIT_CASES:
        try:
            p = subprocess.run([sys.executable, __file__, "--limit-case", case], capture_output=True, text=True,
                               timeout=hang_s)
            row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
                {"case": case, "outcome": f"crash: {p.stderr.strip().splitlines()[-1:]}"}
        except subprocess.TimeoutExpired:
            row = {"case": case, "outcome": "hang", "s": hang_s}
        C.log(f"  limit {case}: {row}")
        out.append(row)
    return out


#: forged headers at the limits: (backbone, width, height, coded steps, codec options). The default
#: max_pixels (2^24) refuses the 8192^2 claims from the header; the 4096^2 claims decode up to the
#: payload's first symbols; turbo-ddcm's M x D entries per step are bounded (diffc.plugins.MAX_STEP_ENTRIES)
LIMIT_CASES = {
    "gaussian-8192x8192": ("gaussian", 8192, 8192, 12, []),
    "tiny-sd15-8192x8192": ("tiny-sd15", 8192, 8192, 12, []),
    "tiny-sdxl-8192x8192": ("tiny-sdxl", 8192, 8192, 12, []),
    "tiny-sd15-4096x4096": ("tiny-sd15", 4096, 4096, 12, []),
    "gaussian-2^23-candidates": ("gaussian", 64, 64, 12, ["codec.channel.chunk_bits=16",
                                                          "codec.channel.padding_bits=7"]),
    "gaussian-turbo-M4096-2048x2048": ("gaussian", 2048, 2048, 12, ["codec=turbo-ddcm", "codec.channel.codebook_bits=12",
                                                                     "codec.channel.atoms=4096"]),
    "gaussian-sparse-sum-2^20-atoms": ("gaussian", 64, 64, 12, ["codec=sparse-sum", f"codec.channel.atoms={1 << 20}",
                                                                "codec.channel.sparse_m=64"]),
}


def main() -> None:
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--limit-case":
        return run_limit_case(sys.argv[2])
    ap = C.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=None, help="number of cases (default 3000 quick, 100000 full)")
    ap.add_argument("--hang-s", type=float, default=120.0, help="seconds after which a case counts as a hang")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    args = ap.parse_args()
    C.setup(args)
    t_start = time.perf_counter()
    n = args.cases or (3000 if args.quick else 100_000)
    workers = max(1, min(args.workers or os.cpu_count() or 1, n))
    C.log(f"fuzz_format: {n} cases in {workers} processes; hang after {args.hang_s:g} s")
    jobs = [(w, n // workers + (w < n % workers), args.seed, args.hang_s) for w in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        shards = pool.map(run_shard, jobs)
    by_kind = {k: sum((s["by_kind"][k] for s in shards), collections.Counter()) for k in KINDS}
    counts = sum(by_kind.values(), collections.Counter())
    refusals = sum((s["refusals"] for s in shards), collections.Counter())
    crashes = [c for s in shards for c in s["crashes"]]
    C.table([{"kind": k, **{o: c[o] for o in ("refused", "decoded", "crash", "hang")}} for k, c in by_kind.items()])
    for c in crashes:
        C.log(f"  {c['outcome']} in shard {c['shard']}, case {c['case']} ({c['kind']}): {c['detail']}")
    limits = limit_cases(args.hang_s)
    C.emit("fuzz_format", args, {
        "limit_cases": limits, "limit_worst_s": max(r.get("s", 0) for r in limits),
        "limit_worst_rss_mb": max(r.get("peak_rss_mb", 0) for r in limits),
        "cases": sum(counts.values()), "crashes": counts["crash"], "hangs": counts["hang"],
        "refused": counts["refused"], "decoded": counts["decoded"], "by_kind": {k: dict(c) for k, c in by_kind.items()},
        "refused_by_error": dict(refusals), "slowest_case_s": max(s["slowest"] for s in shards),
        "examples": crashes[:5], "backbones": shards[0]["backbones"], "real_files": shards[0]["real_files"],
        "workers": workers, "max_recon_steps": MAX_RECON_STEPS,
    }, t_start)


if __name__ == "__main__":
    main()
