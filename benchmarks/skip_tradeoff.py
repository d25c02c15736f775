"""What cutting the search costs: bits per delivered bit and BD-rate of the settings that search less.

Issue 24 asks for three things at once from the gaussian backbone's default: an encode >= 4x faster
than commit 60420f3 (benchmarks/encode_cost.py), bits per delivered bit no worse than 1.77 (the
figure of ``coding_efficiency --quick`` without skipping) and a BD-rate within +-1 %. This script
measures the two coder figures for each setting that cuts the search, with the real codec
(``DiffcCodec.encode``: no simulation, every candidate searched), on two sources:

- kodak-small (``--quick``: the 32 x 32 centres, as ``coding_efficiency --quick``);
- the central 256 x 256 crops of Kodak images (``--crops``, the images of coding_efficiency's
  ``CROP_IDS``).

Per setting and source (sums over the images; schedule geom-30, 8/2, split at 2, denoise, seed 0,
i.e. conf/model/gaussian.yaml with the setting's overrides):

- ``bits_over_delivered``: file bits / sum of log2 q/p(sent sample), the delivered bits counting
  the skipped entries' prior sample (its log q/p is -KL on average), as coding_efficiency does;
- ``bits_over_delivered_coded``: the same with the skipped entries' log q/p left out;
- ``bd_rate_psnr_pct``: BD-rate (PSNR, akima, the mean curve over the images at the stops
  codec.timesteps[7:]) against the first setting (i.i.d. candidates, skip_kl 0); negative = fewer
  bits at equal PSNR;
- ``encode_s``: seconds of the encodes (one thread; read ratios only, the machine is shared).

The settings (``SETTINGS``): skip_kl 0, 0.001, 0.002, 0.005, 0.01, 0.03 with i.i.d. candidates, and
sparse-sum candidates (``diffc.rcc.sparse_sum``) with 256 atoms / M = 8 and 512 atoms / M = 8, skip 0.

    python benchmarks/skip_tradeoff.py [--quick] [--crops N] [--only LABEL;LABEL...]
"""
from __future__ import annotations

import dataclasses
import time

try:
    from . import _common as C  # type: ignore
    from .coding_efficiency import default_params, kodak_crops  # type: ignore
except ImportError:
    import _common as C
    from coding_efficiency import default_params, kodak_crops

import numpy as np
import pandas as pd
import torch

from analysis.report import bd_rate
from diffc.backbone import load_backbone
from diffc.codec import CodecParams, DiffcCodec
from diffc.rcc.spec import SparseSumSpec

#: label -> the channel's fields over the default setting's (coding_efficiency.default_params); an
#: atom bank makes it sparse-sum candidates
SETTINGS = {
    "iid skip 0": {"skip_kl": 0.0},
    "iid skip 0.001": {"skip_kl": 0.001},
    "iid skip 0.002": {"skip_kl": 0.002},
    "iid skip 0.005": {"skip_kl": 0.005},
    "iid skip 0.01": {"skip_kl": 0.01},
    "iid skip 0.03": {"skip_kl": 0.03},
    "sparse 256/8 skip 0": {"skip_kl": 0.0, "atoms": 256, "sparse_m": 8},
    "sparse 512/8 skip 0": {"skip_kl": 0.0, "atoms": 512, "sparse_m": 8},
}


def setting(args, over: dict) -> CodecParams:
    """The default setting with a SETTINGS entry's channel fields (sparse-sum with an atom bank)."""
    params = default_params(args, **{k: v for k, v in over.items() if k not in ("atoms", "sparse_m")})
    if "atoms" not in over:
        return params
    bank = SparseSumSpec(**dataclasses.asdict(params.channel), atoms=over["atoms"], sparse_m=over["sparse_m"])
    return dataclasses.replace(params, channel=bank)


@torch.no_grad()
def measure(codec: DiffcCodec, images: list) -> dict:
    """One encode per image (every stop of codec.timesteps[7:]): the coder's sums and the mean RD curve."""
    stops = codec.timesteps[7:]
    bpp, mse = np.zeros(len(stops)), np.zeros(len(stops))
    bits = delivered = prior_delivered = kl = secs = 0.0
    for _, img in images:
        t0 = time.perf_counter()
        res = codec.encode(img, stop_timesteps=stops)
        secs += time.perf_counter() - t0
        last = res.points[-1]
        bits += last.bits_total
        delivered += last.delivered_bits
        kl += last.kl_bits
        prior_delivered += sum(r.prior_delivered_bits for r in res.records)
        for i, pt in enumerate(res.points):
            rec = codec.reconstruct(pt.x_t, pt.timestep, img.shape[1], img.shape[2])
            bpp[i] += pt.bpp / len(images)
            mse[i] += float(((rec - img) ** 2).mean()) / len(images)
    return {"bits_over_delivered": bits / delivered, "bits_over_delivered_coded": bits / (delivered - prior_delivered),
            "bits_over_kl": bits / kl, "bits": bits, "kl_bits": kl, "encode_s": secs,
            "curve": pd.DataFrame({"bpp": bpp, "value": 10 * np.log10(1 / mse)})}


def main() -> None:
    ap = C.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--schedule", default="geom-30")
    ap.add_argument("--crops", type=int, default=None, help="256 x 256 Kodak crops (default 4, quick 2)")
    ap.add_argument("--only", default=None,
                    help="';'-separated labels of SETTINGS to run (the first, the anchor, always runs)")
    args = ap.parse_args()
    first = next(iter(SETTINGS))
    settings = {k: v for k, v in SETTINGS.items() if k == first or args.only is None or k in args.only.split(";")}
    C.setup(args)
    t_start = time.perf_counter()
    sources = {"kodak_small": C.kodak_small(args.quick),
               "kodak_crops_256": kodak_crops(args.crops or (2 if args.quick else 4))}
    backbone = load_backbone("gaussian", device=args.device)
    out: dict[str, dict] = {}
    for source, images in sources.items():
        rows, anchor = [], None
        for label, over in settings.items():
            m = measure(DiffcCodec(backbone, setting(args, over)), images)
            curve = m.pop("curve")
            if anchor is None:
                anchor, anchor_s = curve, m["encode_s"]
            bd, _, reason = bd_rate(anchor, curve, "psnr", "akima")
            m.update(bd_rate_psnr_pct=bd, bd_reason=reason, encode_rel_first=m["encode_s"] / anchor_s,
                     rd={"bpp": curve["bpp"].round(5).tolist(), "psnr": curve["value"].round(3).tolist()})
            rows.append({"setting": label, **{k: v for k, v in m.items() if k not in ("rd", "bd_reason")}})
            out.setdefault(source, {})[label] = m
            C.log(f"  {source} {label}: bits/delivered {m['bits_over_delivered']:.3f} (coded "
                  f"{m['bits_over_delivered_coded']:.3f}), BD-rate {bd:+.2f}% {reason}, encode {m['encode_s']:.1f} s")
        C.log(f"\n{source} ({len(images)} images {tuple(images[0][1].shape)}):")
        C.table(rows)
    images = {s: [i for i, _ in imgs] for s, imgs in sources.items()}
    C.emit("skip_tradeoff", args, {"settings": settings, **out, "images": images}, t_start)


if __name__ == "__main__":
    main()
