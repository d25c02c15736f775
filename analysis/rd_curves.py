"""Rate-distortion figures from a results directory.

    python -m analysis.rd_curves results=DIR [metrics=psnr,lpips] [out=DIR/figures] [formats=png,pdf]

(a Hydra app: ``analysis/conf/rd_curves.yaml``, ``--help`` lists the options; torch is never imported)

One figure per dataset and metric, ``{out}/{dataset}-rd-{metric}.{png,pdf}``: bits per pixel on
x, one curve per model (mean over images at each rate point, band = +-1.96 standard errors of the
mean), and each model's VAE round trip as a dashed horizontal line in the same colour (the
quality ceiling of its autoencoder). FID/KID come from the dataset-level table (no band).
Next to each figure, ``{dataset}-rd-{metric}.csv`` holds exactly the plotted points (one row per
curve point, ``series`` = codec, and one row per VAE ceiling, ``series`` = vae).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from omegaconf import DictConfig  # noqa: E402

from diffc.errors import UsageError, one_line_errors  # noqa: E402

from . import cli  # noqa: E402
from .results import load_results, rate_points, vae_ceiling  # noqa: E402
from .schema import DATASET_METRICS, HIGHER_IS_BETTER, METRICS, UNITS  # noqa: E402

Z95 = 1.96


def fid_points(fid: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curve points, VAE ceilings) of a dataset-level metric in the shape of ``rate_points``."""
    ok = fid[fid[metric].notna()].copy()
    ok["value"], ok["sem"], ok["n"] = ok[metric].astype(float), 0.0, ok["n_patches"]
    codec = ok[ok["kind"] == "codec"].rename(columns={"bpp_mean": "bpp"})
    codec = codec[["dataset", "model", "recon_timestep", "target_bpp", "bpp", "value", "n", "sem"]]
    return codec.sort_values(["dataset", "model", "bpp"], ignore_index=True), ok[ok["kind"] == "vae"]


def plot_rd(ax: plt.Axes, curves: pd.DataFrame, ceilings: pd.DataFrame, metric: str,
            title: str) -> dict[str, dict[str, Any]]:
    """Draw one RD plot; returns per model what was plotted: bpp, value, lo, hi, vae."""
    plotted: dict[str, dict[str, Any]] = {}
    models = sorted(set(curves["model"]) | set(ceilings["model"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, model in enumerate(models):
        color = colors[k % len(colors)]
        c = curves[curves["model"] == model]
        entry: dict[str, Any] = {"bpp": c["bpp"].to_numpy(), "value": c["value"].to_numpy(),
                                 "lo": (c["value"] - Z95 * c["sem"]).to_numpy(),
                                 "hi": (c["value"] + Z95 * c["sem"]).to_numpy(), "vae": None}
        if len(c):
            ax.plot(entry["bpp"], entry["value"], marker="o", ms=4, color=color, label=model)
            ax.fill_between(entry["bpp"], entry["lo"], entry["hi"], color=color, alpha=0.2, lw=0)
        v = ceilings[ceilings["model"] == model]
        if len(v):
            entry["vae"] = float(v["value"].mean())
            if math.isinf(entry["vae"]):  # lossless autoencoder: nothing to draw
                ax.plot([], [], ls="--", lw=1.2, color=color, label=f"{model} VAE: lossless")
            else:
                ax.axhline(entry["vae"], ls="--", lw=1.2, color=color, label=f"{model} VAE ceiling")
        plotted[model] = entry
    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    ax.set_xlabel("rate (bits per pixel, bpp)")
    ax.set_ylabel(f"{UNITS[metric]} ({better} is better)")
    ax.set_title(title)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    # outside the axes: never hides a curve, however many models
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              framealpha=0.9)
    return plotted


def plotted_points(plotted: dict[str, dict[str, Any]], curves: pd.DataFrame) -> pd.DataFrame:
    """The sidecar table of one figure: every plotted point (codec curves) and VAE ceiling."""
    out = []
    for model, entry in plotted.items():
        c = curves[curves["model"] == model]
        for i in range(len(entry["bpp"])):
            out.append({"model": model, "series": "codec", "recon_timestep": c["recon_timestep"].iloc[i],
                        "target_bpp": c["target_bpp"].iloc[i], "bpp": entry["bpp"][i],
                        "value": entry["value"][i], "lo": entry["lo"][i], "hi": entry["hi"][i],
                        "n": c["n"].iloc[i]})
        if entry["vae"] is not None:
            out.append({"model": model, "series": "vae", "recon_timestep": pd.NA, "target_bpp": float("nan"),
                        "bpp": float("nan"), "value": entry["vae"], "lo": float("nan"), "hi": float("nan"),
                        "n": pd.NA})
    return pd.DataFrame(out, columns=["model", "series", "recon_timestep", "target_bpp", "bpp", "value",
                                      "lo", "hi", "n"])


def render(results: Path, metrics: list[str], out: Path, formats: list[str]) -> dict[tuple[str, str], dict]:
    """Write every figure; returns {(dataset, metric): plotted data} of the figures written."""
    rows, fid = load_results(results)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], dict] = {}
    for metric in metrics:
        if metric in DATASET_METRICS:
            curves, ceilings = fid_points(fid, metric)
        else:
            curves, ceilings = rate_points(rows, metric), vae_ceiling(rows, metric)
        for dataset in sorted(set(curves["dataset"])):
            n_img = rows.loc[(rows["dataset"] == dataset) & (rows["kind"] == "codec"), "image"].nunique()
            fig, ax = plt.subplots(figsize=(8.0, 4.6))
            band = "" if metric in DATASET_METRICS else ", band: 95% CI of the mean"
            ds_curves = curves[curves["dataset"] == dataset]
            plotted = plot_rd(ax, ds_curves, ceilings[ceilings["dataset"] == dataset],
                              metric, f"{dataset}: {UNITS[metric]} vs rate ({n_img} images{band})")
            fig.tight_layout()
            stem = out / f"{dataset}-rd-{metric}"
            for fmt in formats:
                fig.savefig(f"{stem}.{fmt}", dpi=150, bbox_inches="tight")
            plt.close(fig)
            plotted_points(plotted, ds_curves).to_csv(f"{stem}.csv", index=False)
            done[(dataset, metric)] = plotted
    if not done:
        raise UsageError(f"nothing to plot in {results}: no finite values of {', '.join(metrics)}")
    return done


@one_line_errors(OSError)
def rd_curves(cfg: DictConfig) -> dict[tuple[str, str], dict]:
    """The command: every figure of ``cfg.results`` (one summary line per figure on stdout)."""
    cli.require(cfg, "results")
    metrics = cli.as_list(cfg.metrics) or list(METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UsageError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
    formats = cli.as_list(cfg.formats)
    if not formats:
        raise UsageError("formats must name at least one figure format, e.g. formats=png,pdf")
    results = Path(cfg.results)
    written = render(results, metrics, Path(cfg.out) if cfg.out else results / "figures", formats)
    for dataset, metric in written:
        print(f"{dataset}-rd-{metric}: {len(written[dataset, metric])} models")
    return written


if __name__ == "__main__":
    cli.main(rd_curves, "rd_curves", verbatim=("results", "out"), lists=("metrics", "formats"),
             config_dir=cli.ANALYSIS_CONF_DIR)
