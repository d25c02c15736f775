"""What the compact container (format 8) buys over format 7, on identical encodes.

One encode per image gives every rate point; each point's file is priced twice, exactly:

- ``new``: the file as written (format 8: compact header, byte-granular payload);
- ``old``: the same encode in format 7's container: its header (4-byte magic, version, names in
  ASCII, 4-byte fingerprint, every codec field, 10 provenance bytes; ``v7_header_bytes``) and the
  payload in whole 32-bit words, 4 x ceil(new payload / 4) (format 8 only cuts the last word:
  ``diffc.rcc.entropy.PayloadEncoder``).

The symbols, x_t and reconstructions are the same (format 8 changed no symbol: the golden file's
x_t did not change), so only the rate axis moves. Reported: the BD-rate (PSNR, akima) of new against old per
image and of the mean curves, over the points in ``--bpp-range`` (default 0.002..0.05, the
ultra-low range: the gaussian backbone on full-size Kodak, schedule ``--schedule``: linspace-100
gives about 10 points there, the default geom-30 two), the header bytes and the share of the
file the container saves at each rate; and the smallest file each shipped backbone (``gaussian`` and
the tiny twins: random weights, real latent shapes and headers) writes for a Kodak image: its first
coded step (tiny-sd35-medium: a 128 x 128 crop, its positional embedding's limit).
"""
from __future__ import annotations

import math
import time
import zlib

try:
    from . import _common as C  # type: ignore
except ImportError:
    import _common as C

import numpy as np
import pandas as pd
import torch

from analysis.report import bd_rate
from diffc import format as fmt
from diffc.determinism import provenance_here
from diffc.rate import RateTarget
from pipelines.common import build_codec, compose
from pipelines.datasets import load_kodak, to_tensor

SHIPPED = ("gaussian", "tiny-sd15", "tiny-sdxl", "tiny-flux", "tiny-sd35-medium", "tiny-ddpm")
QUICK_IDS = ("kodim23",)
FULL_IDS = ("kodim23", "kodim05")
#: the crop a tiny twin codes when it cannot take a whole Kodak image
CROP = 128


def v7_header_bytes(h: fmt.Header, provenance: fmt.Provenance) -> int:
    """Bytes of format 7's header + CRC for the same fields (its layout: magic 4, version 1, backbone
    u8 + ASCII, fingerprint 4, width, height, seed varints, schedule u8 + ASCII, parity 1, channel
    u8 + ASCII, u8 + spec bytes, recon mode 1 + steps varint + grid + guidance, n_steps varint,
    device 1, dtype 1, threads and 6 version parts as varints, caption varint + zlib, CRC 4)."""
    v = lambda n: len(fmt.varint(n))
    cap = zlib.compress(h.caption.encode("utf-8"), 9) if h.caption else b""
    r = h.recon
    grid = 1 if isinstance(r.grid, str) else 1 + v(len(r.grid)) + sum(map(v, r.grid))
    recon = 1 + v(r.steps) + grid + v(0 if r.guidance is None else 1 + int(16 * r.guidance))
    versions = (*provenance.torch_version, *provenance.diffusers_version)
    return (4 + 1 + 1 + len(h.backbone) + 4 + v(h.width) + v(h.height) + v(h.seed) + 1 + len(h.schedule) + 1
            + 1 + len(h.channel) + 1 + len(h.channel_params) + recon + v(h.n_steps)
            + 2 + v(provenance.threads) + sum(map(v, versions)) + v(len(cap)) + len(cap) + 4)


def priced(point, provenance: fmt.Provenance) -> dict:
    """A rate point's file in both containers (bytes)."""
    header, payload = fmt.read(point.data)
    old_payload = 4 * math.ceil(len(payload) / 4)
    old_header = v7_header_bytes(header, provenance)
    return {"timestep": point.timestep, "steps": point.step_index, "new_bytes": len(point.data),
            "new_header": len(point.data) - len(payload), "payload": len(payload), "old_payload": old_payload,
            "old_header": old_header, "old_bytes": old_header + old_payload}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * math.log10(1 / mse)


def rd_rows(image_ids, bpp_range: tuple[float, float], schedule: str) -> list[dict]:
    """Every rate point of the gaussian backbone (default settings but ``schedule``) up to
    bpp_range[1] x 1.5, per image."""
    codec = build_codec(compose("compress", ["model=gaussian", f"codec.schedule={schedule}"]))
    prov = provenance_here("cpu", torch.float32, torch.get_num_threads())
    rows = []
    for image_id, img in load_kodak(list(image_ids)):
        x = to_tensor(img)
        h, w = x.shape[-2:]
        t0 = time.perf_counter()
        res = codec.encode(x, RateTarget(bpp=(1.5 * bpp_range[1],)))  # every step up to the first file over
        for p in res.points:
            q = psnr(codec.reconstruct(p.x_t, p.timestep, h, w), x)
            rows.append({"image": image_id, "pixels": h * w, "psnr": q, **priced(p, prov)})
        C.log(f"  {image_id}: {len(res.points)} points in {time.perf_counter() - t0:.0f} s")
    return rows


def bd(rows: pd.DataFrame, bpp_range: tuple[float, float]) -> dict:
    """BD-rate (%) of new vs old per image and of the mean curves (points whose old bpp is in range)."""
    rows = rows.assign(new_bpp=8 * rows.new_bytes / rows.pixels, old_bpp=8 * rows.old_bytes / rows.pixels)
    sel = rows[(rows.old_bpp >= bpp_range[0]) & (rows.old_bpp <= bpp_range[1])]
    curve = lambda df, col: pd.DataFrame({"bpp": df[col], "value": df.psnr})
    per_image = {i: bd_rate(curve(g, "old_bpp"), curve(g, "new_bpp"), "psnr", "akima", 0.0)[0]
                 for i, g in sel.groupby("image")}
    mean = sel.groupby("steps")[["old_bpp", "new_bpp", "psnr"]].mean().reset_index()
    mean = mean[sel.groupby("steps").image.nunique().to_numpy() == sel.image.nunique()]
    return {"per_image": per_image, "mean_curve": bd_rate(curve(mean, "old_bpp"), curve(mean, "new_bpp"), "psnr",
                                                          "akima", 0.0)[0],
            "points_in_range": len(sel), "mean_points": mean.round(5).to_dict("records")}


def smallest_files(image_id: str) -> list[dict]:
    """The first coded step's file of each shipped backbone (default settings) on a Kodak image."""
    (_, img), = load_kodak([image_id])
    x = to_tensor(img)
    prov = provenance_here("cpu", torch.float32, torch.get_num_threads())
    out = []
    for name in SHIPPED:
        codec = build_codec(compose("compress", [f"model={name}"]))
        image = x
        try:
            p = codec.encode(image, stop_timesteps=[codec.timesteps[0]]).points[0]
        except ValueError:  # tiny-sd35-medium's positional embedding stops at 16 x 16 latent patches
            image = x[:, :CROP, :CROP].contiguous()
            p = codec.encode(image, stop_timesteps=[codec.timesteps[0]]).points[0]
        assert torch.equal(codec.decode(p.data, reconstruct=False).x_t, p.x_t)
        out.append({"backbone": name, "size": "x".join(map(str, image.shape[:0:-1])), "t": p.timestep,
                    **priced(p, prov)})
    return out


def main() -> None:
    ap = C.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--images", default=None, help="comma-separated Kodak ids (default: kodim23 quick, 4 images full)")
    ap.add_argument("--bpp-range", default="0.002,0.05", help="the BD-rate's rate range (bpp of the old container)")
    ap.add_argument("--schedule", default="linspace-100",
                    help="the BD-rate encodes' schedule (the default geom-30 has 2 stops in 0.002..0.05 bpp on Kodak; "
                         "a non-default schedule costs the new header 2 bytes)")
    args = ap.parse_args()
    C.setup(args)
    t_start = time.perf_counter()
    ids = args.images.split(",") if args.images else (QUICK_IDS if args.quick else FULL_IDS)
    lo, hi = map(float, args.bpp_range.split(","))
    rows = pd.DataFrame(rd_rows(ids, (lo, hi), args.schedule))
    result = bd(rows, (lo, hi))
    C.table(result["mean_points"])
    small = smallest_files(ids[0])
    C.table(small)
    in_range = rows[(8 * rows.old_bytes / rows.pixels).between(lo, hi)]
    C.emit("container_rate", args, {
        "images": list(ids), "bpp_range": [lo, hi], "schedule": args.schedule,
        "bd_rate_pct_mean_curve": result["mean_curve"],
        "bd_rate_pct_per_image": result["per_image"], "points_in_range": result["points_in_range"],
        "header_bytes_new": sorted(set(rows.new_header)), "header_bytes_old": sorted(set(rows.old_header)),
        "payload_bytes_saved_mean": float((rows.old_payload - rows.payload).mean()),
        "saved_share_of_old_file": {"min": float((1 - in_range.new_bytes / in_range.old_bytes).min()),
                                    "max": float((1 - in_range.new_bytes / in_range.old_bytes).max())},
        "mean_points": result["mean_points"], "smallest_files": small,
    }, t_start)


if __name__ == "__main__":
    main()
