"""Rate-distortion figures from a results directory.

    python -m analysis.rd_curves results=DIR [metrics=psnr,lpips] [out=DIR/figures] [formats=png,pdf]
        [reference_points=true] [reference_methods=MS-ILLM,PerCo] [style=paper] [log_bpp=true]

(a Hydra app: ``analysis/conf/rd_curves.yaml``, ``--help`` lists the options; torch is never imported)

One figure per dataset and metric, ``{out}/{dataset}-rd-{metric}.{png,pdf}`` (``style=paper``: the
paper's names, ``{dataset}-rd-curves-{Qalign,LPIPS,PSNR,FID,KID}``, and by default its five
metrics; ``figure_stem``); each path written is printed, and a metric with no values is skipped
quietly unless named in ``metrics=``. Bits per pixel on x (``log_bpp=true``: a log axis, for
ultra-low rates and published points), one curve per codec and model, named 'DiffC · gaussian'
in the legend (a random-weight ``tiny-*`` twin '(random weights)'; mean over images at each rate
point, band = +-1.96 standard errors of the mean), and each model's VAE round trip as a dashed
horizontal line in the same colour (the quality ceiling of its autoencoder; a lossless one, PSNR
inf on every image, has no line on any metric: the CSV keeps its value). The title says the image
size, the protocol and, for MS-SSIM, the number of scales. FID/KID come from the dataset-level
table (no band).
Next to each figure, ``{dataset}-rd-{metric}.csv`` holds exactly the plotted points (one row per
curve point, ``series`` = codec, and one row per VAE ceiling, ``series`` = vae).

Classic codecs of the sweep (``baselines=[jpeg,...]``, rows of kind baseline) are grey dashed
curves with their bands, one per codec, labelled by its name (``series`` = baseline, ``codec``, ``quality``).
``reference_points=true`` overlays the published points (``analysis/data/published_points.csv``,
docs/published.md) whose dataset and protocol are the figure's (``make_published.figure_protocol``:
the rows' protocol column, e.g. kodak under native or crop512; points of other datasets never) as
markers, one series per method and source, the protocol in the legend (``series`` = published,
``method``, ``protocol``, ``source``; a published VAE ceiling without rate is a dotted line); a
dataset whose protocol no published point has gets one line on stdout saying so.
Each curve is also written in CompressAI's JSON format (``analysis.export``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from omegaconf import DictConfig  # noqa: E402

from . import cli  # noqa: E402
from .errors import UsageError, one_line_errors  # noqa: E402
from .export import write_curves  # noqa: E402
from .make_published import figure_protocol, load_published, matching_points  # noqa: E402
from .results import (DIFFC, baseline_points, curve_label, display_name, load_results, random_weights,  # noqa: E402
                      rate_points, vae_ceiling)
from .schema import DATASET_METRICS, HIGHER_IS_BETTER, METRICS, UNITS  # noqa: E402

Z95 = 1.96
#: the metrics' names in the paper's figure files (``kodak-rd-curves-Qalign``), in its order
PAPER_NAMES: dict[str, str] = {"qalign": "Qalign", "lpips": "LPIPS", "psnr": "PSNR", "fid": "FID", "kid": "KID",
                               "ms_ssim": "MS-SSIM", "dists": "DISTS"}
PAPER_METRICS: tuple[str, ...] = ("qalign", "lpips", "psnr", "fid", "kid")
STYLES = ("default", "paper")


def figure_stem(dataset: str, metric: str, style: str = "default") -> str:
    """File stem of a figure (and of its CSV sidecar): ``kodak-rd-psnr``, or with ``style='paper'``
    the paper's ``kodak-rd-curves-PSNR``."""
    return f"{dataset}-rd-curves-{PAPER_NAMES[metric]}" if style == "paper" else f"{dataset}-rd-{metric}"


def fid_points(fid: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curve points, VAE ceilings) of a dataset-level metric in the shape of ``rate_points``."""
    ok = fid[fid[metric].notna()].copy()
    ok["value"], ok["sem"], ok["n"] = ok[metric].astype(float), 0.0, ok["n_patches"]
    codec = ok[ok["kind"] == "codec"].rename(columns={"bpp_mean": "bpp"})
    if "codec" not in codec:
        codec["codec"] = DIFFC
    codec["curve"] = curve_label(codec)
    codec = codec[["dataset", "model", "codec", "curve", "recon_timestep", "target_bpp", "bpp", "value", "n", "sem"]]
    return codec.sort_values(["dataset", "model", "codec", "bpp"], ignore_index=True), ok[ok["kind"] == "vae"]


GREYS = ("0.25", "0.45", "0.6", "0.35", "0.5")
#: a model's codecs share its colour: DiffC solid with circles, the peers dash-dotted / dotted
CODEC_MARKERS = ("o", "x", "+", "1")
CODEC_STYLES = ("-", "-.", ":", (0, (5, 1)))
BASELINE_MARKERS = ("s", "^", "v", "D", "P")
PUBLISHED_MARKERS = ("X", "*", "P", "h", "d", "p", "<", ">", "8", "H")
SIDECAR = ["model", "series", "codec", "quality", "method", "protocol", "source", "recon_timestep",
           "target_bpp", "bpp", "value", "lo", "hi", "n"]


def plot_baselines(ax: plt.Axes, base: pd.DataFrame) -> None:
    """Grey dashed curves of the classic codecs (``baseline_points`` of one dataset), one per codec,
    each with its band (+-1.96 standard errors of the mean, as the diffusion codecs')."""
    for k, (codec, c) in enumerate(base.groupby("codec", sort=True)):
        color = GREYS[k % len(GREYS)]
        ax.plot(c["bpp"], c["value"], ls="--", lw=1.2, marker=BASELINE_MARKERS[k % len(BASELINE_MARKERS)],
                ms=3.5, color=color, label=str(codec))
        ax.fill_between(c["bpp"], c["value"] - Z95 * c["sem"], c["value"] + Z95 * c["sem"], color=color,
                        alpha=0.15, lw=0)


def plot_published(ax: plt.Axes, points: pd.DataFrame) -> None:
    """Published points (``matching_points``): markers per method and source, protocol in the label;
    a point without rate (a published VAE ceiling) as a dotted horizontal line."""
    series = list(points.groupby(["method", "source"], sort=True))
    several = points.groupby("method")["source"].nunique()
    cmap = plt.get_cmap("tab20")
    for k, ((method, source), p) in enumerate(series):
        origin = f", {str(source).split('/')[0]}" if several[method] > 1 else ""
        label = f"{method} [{p['protocol'].iloc[0]}{origin}]"
        color = cmap(k % 20)
        rated = p[p["bpp"].notna()]
        if len(rated):
            ax.plot(rated["bpp"], rated["value"], ls=":", lw=0.8, marker=PUBLISHED_MARKERS[k % len(PUBLISHED_MARKERS)],
                    ms=5, color=color, label=label)
        for v in p.loc[p["bpp"].isna(), "value"]:
            ax.axhline(v, ls=":", lw=1.0, color=color, label=f"{label} (no rate)")


def published_sets(published: pd.DataFrame) -> str:
    """The datasets and protocols of the published points, e.g. 'div2k (native), kodak (crop512, native)'."""
    by_ds = published.groupby("dataset")["protocol"].agg(lambda p: ", ".join(sorted(set(p))))
    return ", ".join(f"{ds} ({protocols})" for ds, protocols in by_ds.items())


def plot_rd(ax: plt.Axes, curves: pd.DataFrame, ceilings: pd.DataFrame, metric: str,
            title: str, baselines: pd.DataFrame | None = None,
            published: pd.DataFrame | None = None, log_bpp: bool = False) -> dict[str, dict[str, Any]]:
    """Draw one RD plot (and the classic codecs' and published curves, when given); returns per
    curve (keyed by ``curve_label``: a model's DiffC curve by the model, a peer's 'model (codec)')
    what was plotted: model, codec, bpp, value, lo, hi, vae (the model's VAE ceiling, on its DiffC
    entry). The legend names codec and backbone (``display_name``: 'DiffC · gaussian'; a
    random-weight twin '... (random weights)'). A lossless autoencoder (``vae_ceiling``'s
    ``lossless``) has no ceiling line on any metric. ``log_bpp``: a logarithmic rate axis."""
    plotted: dict[str, dict[str, Any]] = {}
    models = sorted(set(curves["model"]) | set(ceilings["model"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, model in enumerate(models):
        color = colors[k % len(colors)]
        for j, (label, c) in enumerate(curves[curves["model"] == model].groupby("curve", sort=True)):
            entry: dict[str, Any] = {"model": model, "codec": c["codec"].iloc[0], "bpp": c["bpp"].to_numpy(),
                                     "value": c["value"].to_numpy(),
                                     "lo": (c["value"] - Z95 * c["sem"]).to_numpy(),
                                     "hi": (c["value"] + Z95 * c["sem"]).to_numpy(), "vae": None}
            ax.plot(entry["bpp"], entry["value"], marker=CODEC_MARKERS[j % len(CODEC_MARKERS)], ms=4, color=color,
                    ls=CODEC_STYLES[j % len(CODEC_STYLES)], label=display_name(label, model, entry["codec"]))
            ax.fill_between(entry["bpp"], entry["lo"], entry["hi"], color=color, alpha=0.2, lw=0)
            plotted[label] = entry
        v = ceilings[ceilings["model"] == model]
        if len(v):
            vae = float(v["value"].mean())
            lossless = bool(v.get("lossless", pd.Series([False])).any())
            if not (math.isinf(vae) or lossless):  # a lossless autoencoder has no ceiling: no line, no name
                twin = " (random weights)" if random_weights(model) else ""
                ax.axhline(vae, ls="--", lw=1.2, color=color, label=f"{model}{twin} VAE ceiling")
            plotted.setdefault(model, {"model": model, "codec": DIFFC, "bpp": np.array([]), "value": np.array([]),
                                       "lo": np.array([]), "hi": np.array([])})["vae"] = vae
    if baselines is not None and len(baselines):
        plot_baselines(ax, baselines)
    if published is not None and len(published):
        plot_published(ax, published)
    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    ax.set_xlabel("rate (bits per pixel, bpp)")
    ax.set_ylabel(f"{UNITS[metric]} ({better} is better)")
    ax.set_title(title, fontsize="medium")
    if log_bpp:
        ax.set_xscale("log")
        ax.set_xlabel("rate (bits per pixel, bpp; log scale)")
    else:
        ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    # outside the axes: never hides a curve, however many models
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              framealpha=0.9)
    return plotted


def plotted_points(plotted: dict[str, dict[str, Any]], curves: pd.DataFrame,
                   baselines: pd.DataFrame | None = None, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """The sidecar table of one figure: every plotted point (codec curves, classic codecs,
    published points) and VAE ceiling."""
    out = []
    for label, entry in plotted.items():
        c, model = curves[curves["curve"] == label], entry["model"]
        for i in range(len(entry["bpp"])):
            out.append({"model": model, "series": "codec", "codec": entry["codec"],
                        "recon_timestep": c["recon_timestep"].iloc[i],
                        "target_bpp": c["target_bpp"].iloc[i], "bpp": entry["bpp"][i],
                        "value": entry["value"][i], "lo": entry["lo"][i], "hi": entry["hi"][i],
                        "n": c["n"].iloc[i]})
        if entry["vae"] is not None:
            out.append({"model": model, "series": "vae", "codec": "vae", "recon_timestep": pd.NA, "target_bpp": float("nan"),
                        "bpp": float("nan"), "value": entry["vae"], "lo": float("nan"), "hi": float("nan"),
                        "n": pd.NA})
    for b in ([] if baselines is None else baselines.to_dict("records")):
        out.append({"series": "baseline", "codec": b["codec"], "quality": b["quality"], "bpp": b["bpp"],
                    "value": b["value"], "lo": b["value"] - Z95 * b["sem"], "hi": b["value"] + Z95 * b["sem"],
                    "n": b["n"]})
    for p in ([] if published is None else published.to_dict("records")):
        out.append({"series": "published", "method": p["method"], "protocol": p["protocol"],
                    "source": p["source"], "quality": pd.NA, "bpp": p["bpp"], "value": p["value"]})
    df = pd.DataFrame(out, columns=SIDECAR)
    df["quality"] = df["quality"].astype("Int64")
    return df


def setting(rows: pd.DataFrame, metric: str) -> str:
    """What a figure's numbers are of: the images' size ('64×64', or the range of sizes), the
    protocol (conf/protocol) and, for MS-SSIM, its number of scales (fewer than 5 on small images,
    ``pipelines.metrics.ms_ssim_scales``)."""
    sizes = sorted({(int(w), int(h)) for w, h in zip(rows["width"], rows["height"]) if pd.notna(w) and pd.notna(h)})
    size = f"{sizes[0][0]}×{sizes[0][1]}" if len(sizes) == 1 else \
        (f"{len(sizes)} sizes, {min(w * h for w, h in sizes)}–{max(w * h for w, h in sizes)} px" if sizes else "")
    protocols = ", ".join(sorted(set(rows["protocol"].dropna().astype(str)))) if "protocol" in rows else ""
    parts = [size, f"protocol {protocols}" if protocols else ""]
    if metric == "ms_ssim" and "ms_ssim_scales" in rows:
        scales = sorted({int(v) for v in rows["ms_ssim_scales"].dropna()})
        if scales:
            parts.append(f"MS-SSIM {'/'.join(map(str, scales))} scale{'s' * (scales != [1])}")
    return ", ".join(p for p in parts if p)


def render(results: Path, metrics: list[str], out: Path, formats: list[str], reference_points: bool = False,
           reference_methods: list[str] | None = None,
           published_csv: str | Path | None = None, style: str = "default",
           log_bpp: bool = False) -> dict[tuple[str, str], dict]:
    """Write every figure (named by ``figure_stem`` in ``style``) and every curve as CompressAI
    JSON, printing each file written; returns {(dataset, metric): plotted data} of the figures."""
    rows, fid = load_results(results)
    out.mkdir(parents=True, exist_ok=True)
    published = load_published(*([published_csv] if published_csv else [])) if reference_points else None
    if published is not None and reference_methods:
        unknown = sorted(set(reference_methods) - set(published["method"]))
        if unknown:
            raise UsageError(f"unknown reference_methods {unknown}; known: {', '.join(sorted(set(published['method'])))}")
    done: dict[tuple[str, str], dict] = {}
    overlaid: dict[str, tuple[str, int]] = {}  # dataset -> (its protocol, published points drawn)
    for metric in metrics:
        if metric in DATASET_METRICS:
            curves, ceilings = fid_points(fid, metric)
            lossless = vae_ceiling(rows, "psnr")[["dataset", "model", "lossless"]]
            ceilings = ceilings.merge(lossless, on=["dataset", "model"], how="left")  # FID 0 of an identity: no line
        else:
            curves, ceilings = rate_points(rows, metric), vae_ceiling(rows, metric)
        for dataset in sorted(set(curves["dataset"])):
            ds_rows = rows[rows["dataset"] == dataset]
            n_img = ds_rows.loc[ds_rows["kind"] == "codec", "image"].nunique()
            fig, ax = plt.subplots(figsize=(8.0, 4.6))
            band = "" if metric in DATASET_METRICS else ", band: 95% CI of the mean"
            ds_curves = curves[curves["dataset"] == dataset]
            ds_base = None
            if metric not in DATASET_METRICS:  # no FID/KID for the classic codecs
                ds_base = baseline_points(rows, metric)
                ds_base = ds_base[ds_base["dataset"] == dataset]
            ds_pub = None
            if published is not None:
                protocol = figure_protocol(dataset, rows[rows["dataset"] == dataset])
                ds_pub = matching_points(published, protocol, metric, reference_methods, dataset)
                overlaid[dataset] = (protocol, overlaid.get(dataset, (protocol, 0))[1] + len(ds_pub))
            plotted = plot_rd(ax, ds_curves, ceilings[ceilings["dataset"] == dataset],
                              metric, f"{dataset}: {UNITS[metric]} vs rate ({n_img} images{band})\n"
                              f"{setting(ds_rows, metric)}", ds_base, ds_pub, log_bpp)
            fig.tight_layout()
            stem = out / figure_stem(dataset, metric, style)
            for fmt in formats:
                fig.savefig(f"{stem}.{fmt}", dpi=150, bbox_inches="tight")
            plt.close(fig)
            plotted_points(plotted, ds_curves, ds_base, ds_pub).to_csv(f"{stem}.csv", index=False)
            done[(dataset, metric)] = plotted
            exts = ",".join([*formats, "csv"])
            print(f"wrote {stem}.{{{exts}}} ({dataset}, {metric}: {len(plotted)} curve{'s' * (len(plotted) != 1)})")
    curves_json = write_curves(rows, out)
    if curves_json:
        print(f"wrote {out}/*.json ({len(curves_json)} curve{'s' * (len(curves_json) != 1)} in CompressAI's format)")
    for dataset, (protocol, n) in sorted(overlaid.items()):
        if not n:
            which = f" of {', '.join(reference_methods)}" if reference_methods else ""
            print(f"reference_points: no published points{which} match {dataset} under protocol {protocol} "
                  f"(published: {published_sets(published)}; docs/published.md)")
    if not done:
        raise UsageError(f"nothing to plot in {results}: no finite values of {', '.join(metrics)}")
    return done


@one_line_errors(OSError)
def rd_curves(cfg: DictConfig) -> dict[tuple[str, str], dict]:
    """The command: every figure of ``cfg.results`` (one summary line per figure on stdout)."""
    cli.require(cfg, "results")
    if cfg.style not in STYLES:
        raise UsageError(f"style must be one of {', '.join(STYLES)}, got {cfg.style!r}")
    metrics = cli.as_list(cfg.metrics) or list(PAPER_METRICS if cfg.style == "paper" else METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UsageError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
    formats = cli.as_list(cfg.formats)
    if not formats:
        raise UsageError("formats must name at least one figure format, e.g. formats=png,pdf")
    results = Path(cfg.results)
    written = render(results, metrics, Path(cfg.out) if cfg.out else results / "figures", formats,
                     bool(cfg.reference_points), cli.as_list(cfg.reference_methods), style=str(cfg.style),
                     log_bpp=bool(cfg.log_bpp))
    if cfg.metrics is not None:  # asked for by name: say which gave no figure
        for metric in sorted(set(metrics) - {m for _, m in written}, key=metrics.index):
            print(f"{metric}: no finite values, no figure")
    return written


if __name__ == "__main__":
    cli.main(rd_curves, "rd_curves", verbatim=("results", "out"), lists=("metrics", "formats", "reference_methods"),
             config_dir=cli.ANALYSIS_CONF_DIR)
