"""The DiffC chain on a source drawn from the Gaussian backbone's own prior, against theory.

Part 1 (math check, ideal channel): x_T = shared noise; every step samples x_t' EXACTLY from
q(x_t' | x_t, x0) (no reverse-channel coding). Measured against the closed forms of docs/design.md §1:
- rate_rel_err: sum over the schedule of the measured KL(q||p) = c0^2 |x0 - x0_hat|^2 / (2 var)
  vs its expectation sum_k sum_i c0^2 mmse_i(t_k) / (2 var);
- mse_rel_err: one-step-denoise MSE |x0 - E[x0|x_t]|^2 vs sum_i mmse_i(t), worst over the stop steps.
Both are sums of weighted chi-squares: the expected standard error (closed form) is printed next
to them, and the source is large enough to make it far below the 2% goal.

Part 2 (the real codec, same kind of source): ``DiffcCodec.encode`` with one rate point per
schedule step (progressive), one-step-denoise reconstruction. Per point:
- rcc_rate_overhead = file bits / R_ideal(D): the rate the ideal channel (closed form) needs
  for the MSE the codec actually reached (interpolated on the ideal curve, log-log);
- db_gap_to_rd = 10 log10(D_codec / D_RD(R_codec)): distance to the Gaussian rate-distortion
  function (reverse water-filling over the prior variances) at the codec's rate (file bits).
Headlines are medians over the points where the header is <= 10% of the file (below that the
fixed header dominates a small source);
the ideal chain's own gap to D(R) (DiffC + denoise with a perfect channel) is reported next to it.
"""
from __future__ import annotations

import math
import time

try:
    from . import _common as C  # type: ignore
except ImportError:
    import _common as C

import numpy as np
import torch

from diffc.backbone import load_backbone
from diffc.backbones.gaussian import from_coefficients
from diffc.chain import ExactChannel
from diffc.codec import CodecParams, DiffcCodec
from diffc.rate import RateTarget
from diffc.rcc.spec import PfrSpec, SparseSumSpec
from diffc.recon import Recon

LN2 = math.log(2.0)
MAX_HEADER_SHARE = 0.1  # headline medians use the rate points where the header is at most this share


def expected_curve(codec: DiffcCodec, shape) -> dict[str, np.ndarray]:
    """Closed forms per stop step k = 1..n: cumulative E[KL] (bits), E[MSE] (sum), I(x0; x_t) (bits),
    and the per-step standard deviations of the KL and MSE sums (weighted chi-square)."""
    b = codec.backbone
    ts = codec.timesteps
    _, lam = b.prior(shape)
    ekl, sd_kl, mse, sd_mse, info = [], [], [], [], []
    for k in range(1, len(ts)):
        pc = b.schedule.posterior(ts[k - 1], ts[k])
        w = pc.c0 ** 2 * b.mmse(shape, ts[k - 1]) / (2 * pc.var) / LN2  # E[KL] per coefficient, bits
        ekl.append(float(w.sum()))
        sd_kl.append(float(math.sqrt(2 * (w * w).sum())))
        m = b.mmse(shape, ts[k])
        mse.append(float(m.sum()))
        sd_mse.append(float(math.sqrt(2 * (m * m).sum())))
        a, s = b.schedule.a_s(ts[k])
        info.append(float(0.5 * torch.log1p(a * a * lam / (s * s)).sum()) / LN2)
    return {"step_kl": np.array(ekl), "kl": np.cumsum(ekl), "sd_kl_step": np.array(sd_kl),
            "mse": np.array(mse), "sd_mse": np.array(sd_mse), "info": np.array(info)}


@torch.no_grad()
def exact_chain(codec: DiffcCodec, x0: torch.Tensor, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Measured per-step KL (bits) and one-step-denoise squared error after each step: the codec's
    chain with the ideal channel (``diffc.chain.ExactChannel``: exact q samples)."""
    chain = codec.chain
    kls, errs = [], []
    x = chain.start(tuple(x0.shape))
    for step, x in chain.run(ExactChannel(gen), x, None, chain.n_steps, x0=x0):
        kls.append(step.kl_bits)
        e = (x0 - codec.backbone.predict_x0(x, step.t_next, None)).double()
        errs.append(float((e * e).sum()))
    return np.array(kls), np.array(errs)


def water_filling(lam: np.ndarray, rate_bits: float) -> float:
    """Gaussian D(R): total MSE at ``rate_bits`` by reverse water-filling over variances ``lam``."""
    if rate_bits <= 0:
        return float(lam.sum())
    lo, hi = math.log(lam.min()) - 2 * rate_bits / len(lam) * LN2 - 50, math.log(lam.max())
    for _ in range(200):  # R(theta) = sum max(0, 1/2 log2(lam / theta)) decreases in theta
        mid = 0.5 * (lo + hi)
        r = 0.5 * np.maximum(0.0, np.log(lam) - mid).sum() / LN2
        lo, hi = (mid, hi) if r > rate_bits else (lo, mid)
    return float(np.minimum(lam, math.exp(0.5 * (lo + hi))).sum())


def main() -> None:
    ap = C.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--schedule", default="geom-30")
    ap.add_argument("--chunk-bits", type=int, default=8)
    ap.add_argument("--padding-bits", type=int, default=2)
    ap.add_argument("--split-above", type=float, default=PfrSpec.split_above)
    ap.add_argument("--candidates", default="iid", help="PFR candidates: iid | sparse-sum (diffc.rcc.sparse_sum)")
    ap.add_argument("--atoms", type=int, default=0, help="sparse-sum: K_a atoms per step")
    ap.add_argument("--sparse-m", type=int, default=0, help="sparse-sum: M signed atoms per candidate")
    args = ap.parse_args()
    C.setup(args)
    t_start = time.perf_counter()
    backbone = load_backbone("gaussian", device=args.device)
    pfr = dict(chunk_bits=args.chunk_bits, padding_bits=args.padding_bits, split_above=args.split_above)
    channel = (PfrSpec(**pfr) if args.candidates == "iid" else
               SparseSumSpec(**pfr, atoms=args.atoms, sparse_m=args.sparse_m))
    params = CodecParams(args.schedule, seed=args.seed, channel=channel, recon=Recon("denoise"))
    codec = DiffcCodec(backbone, params)
    ts = codec.timesteps
    gen = torch.Generator().manual_seed(args.seed)

    # ---- part 1: exact sampling vs closed forms --------------------------------------------------
    h1, w1 = (256, 512) if args.quick else (1024, 1024)  # independent 8x8 blocks: one big sample
    x0 = backbone.sample_prior(h1, w1, generator=gen)
    shape = tuple(x0.shape)
    exp = expected_curve(codec, shape)
    kl, err = exact_chain(codec, x0, gen)
    rate_meas, rate_exp = kl.sum(), exp["kl"][-1]
    rate_rel_err = rate_meas / rate_exp - 1
    rate_se_bound = exp["sd_kl_step"].sum() / rate_exp  # steps fully correlated: an upper bound
    mse_err = err / exp["mse"] - 1
    mse_se = exp["sd_mse"] / exp["mse"]
    worst = int(np.argmax(np.abs(mse_err)))
    C.log(f"gaussian_rd part 1: exact q sampling on a prior sample of {shape} ({x0.numel()} coefficients), "
          f"{args.schedule} ({len(ts) - 1} steps)")
    C.table([{"step": k, "t": ts[k], "KL_meas": kl[k - 1], "KL_exp": exp["step_kl"][k - 1],
              "sumKL/I": exp["kl"][k - 1] / exp["info"][k - 1], "MSE_meas": err[k - 1], "MSE_exp": exp["mse"][k - 1],
              "mse_rel_err": mse_err[k - 1], "mse_se": mse_se[k - 1]} for k in range(1, len(ts))])
    C.log(f"  rate: sum KL measured {rate_meas:.1f} bits vs expected {rate_exp:.1f} -> rel err {rate_rel_err:+.4f} "
          f"(std err <= {rate_se_bound:.4f}); worst MSE rel err {mse_err[worst]:+.4f} at t={ts[worst + 1]} "
          f"(std err {mse_se[worst]:.4f}); sum E[KL] / I(x0;x_1) = {exp['kl'][-1] / exp['info'][-1]:.4f}")

    # ---- part 2: the real codec on a prior sample ------------------------------------------------
    h2 = w2 = 64 if args.quick else 128
    x0 = backbone.sample_prior(h2, w2, generator=gen)
    image = from_coefficients(x0.double()).float()  # unclamped: backbone.encode(image) == x0 up to float32
    x0 = backbone.encode(image)
    shape = tuple(x0.shape)
    pixels = h2 * w2
    exp = expected_curve(codec, shape)
    lam = backbone.prior(shape)[1].flatten().numpy()
    t0 = time.perf_counter()
    # a prior sample's pixels leave [0, 1], which DiffcCodec.encode refuses for images: this theory
    # check codes the sample as it is, through the encode behind that check
    rate = RateTarget(tuple(ts[1:]))
    res = codec._encode(image, rate, codec.stop_steps(rate), None, False, None, codec.file_provenance(None))
    enc_s = time.perf_counter() - t0
    log_r_ideal, log_d_ideal = np.log(exp["kl"]), np.log(exp["mse"])  # D decreasing, R increasing in k
    rows = []
    for p in res.points:
        k = p.step_index
        e = (x0 - backbone.predict_x0(p.x_t, p.timestep, None)).double()
        d = float((e * e).sum())
        # ideal rate at the codec's MSE: interpolate log R against log D (np.interp wants increasing x)
        r_ideal = float(np.exp(np.interp(math.log(d), log_d_ideal[::-1], log_r_ideal[::-1])))
        d_rd = water_filling(lam, p.bits_total)
        d_rd_ideal = water_filling(lam, exp["kl"][k - 1])
        rows.append({"step": k, "t": p.timestep, "bpp": p.bpp, "bits": p.bits_total, "kl_bits": p.kl_bits,
                     "delivered": p.delivered_bits, "ideal_kl_exp": exp["kl"][k - 1], "header_share": p.bits_header / p.bits_total,
                     "mse_codec": d, "mse_ideal": exp["mse"][k - 1],
                     "bits/ideal_same_step": p.bits_total / exp["kl"][k - 1],
                     "rcc_rate_overhead": p.bits_total / r_ideal,
                     "rcc_rate_overhead_payload": (p.bits_total - p.bits_header) / r_ideal,
                     "db_gap_to_rd": 10 * math.log10(d / d_rd),
                     "ideal_db_gap_to_rd": 10 * math.log10(exp["mse"][k - 1] / d_rd_ideal),
                     "psnr": 10 * math.log10(4.0 / (d / x0.numel()))})  # latent range [-1, 1]: peak 2
    C.log(f"\ngaussian_rd part 2: DiffcCodec ({args.chunk_bits}/{args.padding_bits}, {args.schedule}) on a prior "
          f"sample {shape}, every step a rate point; encode {enc_s:.1f}s")
    C.table([{k: r[k] for k in ("step", "t", "bpp", "bits", "kl_bits", "delivered", "ideal_kl_exp", "mse_codec",
                                "mse_ideal", "psnr", "bits/ideal_same_step", "rcc_rate_overhead", "rcc_rate_overhead_payload", "db_gap_to_rd",
                                "ideal_db_gap_to_rd")} for r in rows])
    sel = [r for r in rows if r["header_share"] <= MAX_HEADER_SHARE]
    med = lambda key: float(np.median([r[key] for r in sel])) if sel else float("nan")
    C.log(f"  medians over the {len(sel)} points where the header is <= {MAX_HEADER_SHARE:.0%} of the file: "
          f"rcc_rate_overhead {med('rcc_rate_overhead'):.3f} (payload only {med('rcc_rate_overhead_payload'):.3f}), "
          f"db_gap_to_rd {med('db_gap_to_rd'):.2f} dB (ideal chain: {med('ideal_db_gap_to_rd'):.2f} dB)")
    last = rows[-1]
    C.emit("gaussian_rd", args, {
        "rate_rel_err": rate_rel_err,
        "mse_rel_err": float(mse_err[worst]),
        "goal_rel_err": 0.02,
        "rate_rel_stderr_bound": rate_se_bound,
        "mse_rel_stderr_at_worst": float(mse_se[worst]),
        "mse_rel_err_rms": float(np.sqrt(np.mean(mse_err ** 2))),
        "sum_expected_kl_over_mutual_info": float(exp["kl"][-1] / exp["info"][-1]),
        "rcc_rate_overhead": med("rcc_rate_overhead"),
        "rcc_rate_overhead_payload_only": med("rcc_rate_overhead_payload"),
        "db_gap_to_rd": med("db_gap_to_rd"),
        "ideal_chain_db_gap_to_rd": med("ideal_db_gap_to_rd"),
        "bits_over_ideal_kl_same_step": med("bits/ideal_same_step"),
        "at_last_step": {k: last[k] for k in ("t", "bpp", "rcc_rate_overhead", "db_gap_to_rd", "ideal_db_gap_to_rd",
                                              "bits/ideal_same_step")},
        "points": [{k: r[k] for k in ("t", "bpp", "psnr", "rcc_rate_overhead", "db_gap_to_rd")} for r in rows],
        "setup": {"exact_source_shape": [3, h1, w1], "codec_source_shape": list(shape), "schedule": args.schedule,
                  "chunk_bits": args.chunk_bits, "padding_bits": args.padding_bits, "recon": "denoise",
                  "candidates": args.candidates, "atoms": args.atoms, "sparse_m": args.sparse_m,
                  "headline_points": len(sel), "headline_max_header_share": MAX_HEADER_SHARE},
    }, t_start)


if __name__ == "__main__":
    main()
