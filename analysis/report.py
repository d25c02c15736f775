"""Tables of a results directory: metrics per rate point, and BD-rate between backbones.

    python -m analysis.report results=DIR [out=DIR/report] [anchor=MODEL] [method=akima]

(a Hydra app: ``analysis/conf/report.yaml``, ``--help`` lists the options; torch is never imported)

Writes ``{out}.md`` (both tables, markdown) and ``{out}-points.csv`` / ``{out}-bdrate.csv``.
BD-rate (bjontegaard) of every model against ``anchor`` (default: the first model by name), per
dataset and metric, on the mean curves: quality is given higher-is-better (-LPIPS, -DISTS), rates
sorted strictly increasing (points that do not increase the rate are dropped). Negative = the
model needs fewer bits than the anchor for the same quality. A pair that cannot be computed
(too few points, no overlap) gives NaN and the reason.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import bjontegaard
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from diffc.errors import UsageError, describe, one_line_errors

from . import cli
from .results import load_results, rate_points, vae_ceiling
from .schema import HIGHER_IS_BETTER, PER_IMAGE_METRICS

MIN_POINTS = 2
#: bjontegaard's interpolation methods
METHODS = ("akima", "pchip", "cubic")


def points_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, model and rate point (VAE last): n images, mean bpp, mean ideal rate (Σ KL)
    and delivered information per pixel, and every metric's mean over the images with a value
    (inf stays inf: a lossless VAE round trip has PSNR inf, not NaN)."""
    keys = ["dataset", "model", "kind", "recon_timestep", "target_bpp"]
    df = rows.copy()
    pixels = (df["width"] * df["height"]).astype(float)
    df["kl_bpp"] = df["kl_bits"].astype(float) / pixels
    df["delivered_bpp"] = df["delivered_bits"].astype(float) / pixels
    for m in PER_IMAGE_METRICS:
        df[m] = df[m].astype(float)
    agg = df.groupby(keys, dropna=False).agg(
        n=("image", "nunique"), bpp=("bpp", "mean"), kl_bpp=("kl_bpp", "mean"),
        delivered_bpp=("delivered_bpp", "mean"), **{m: (m, "mean") for m in PER_IMAGE_METRICS}).reset_index()
    return agg.sort_values(["dataset", "model", "kind", "bpp"], ignore_index=True)


def nan_reasons(rows: pd.DataFrame) -> pd.DataFrame:
    """Why metric cells are NaN: per dataset, model and distinct reason, how many rows."""
    out = []
    for (dataset, model), grp in rows.groupby(["dataset", "model"]):
        for cell in grp["metric_errors"].fillna(""):
            for part in filter(None, (p.strip() for p in str(cell).split("; "))):
                out.append({"dataset": dataset, "model": model, "reason": part})
    df = pd.DataFrame(out, columns=["dataset", "model", "reason"])
    return df.value_counts().rename("rows").reset_index().sort_values(["dataset", "model", "reason"],
                                                                       ignore_index=True)


def monotone(bpp: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by rate and keep only strictly increasing rates (first of equal rates)."""
    order = np.argsort(bpp, kind="stable")
    bpp, quality = bpp[order], quality[order]
    keep = np.concatenate([[True], np.diff(bpp) > 0]) if len(bpp) else np.zeros(0, bool)
    return bpp[keep], quality[keep]


def bd_rate(anchor: pd.DataFrame, test: pd.DataFrame, metric: str, method: str) -> tuple[float, str]:
    """BD-rate (%) of ``test`` vs ``anchor`` curves (columns bpp, value): (value, reason if NaN/suspect)."""
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    ra, qa = monotone(anchor["bpp"].to_numpy(float), sign * anchor["value"].to_numpy(float))
    rt, qt = monotone(test["bpp"].to_numpy(float), sign * test["value"].to_numpy(float))
    if min(len(ra), len(rt)) < MIN_POINTS:
        return math.nan, f"too few distinct rate points ({len(ra)} anchor, {len(rt)} test)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = float(bjontegaard.bd_rate(ra, qa, rt, qt, method=method, require_matching_points=False))
        except (AssertionError, ValueError, ZeroDivisionError, np.linalg.LinAlgError) as exc:
            return math.nan, f"bjontegaard failed: {describe(exc)}"
    reason = "; ".join(str(w.message) for w in caught)
    if not math.isfinite(value):
        return math.nan, reason or "non-finite result"
    return value, reason


def bd_table(rows: pd.DataFrame, anchor: str | None, method: str) -> pd.DataFrame:
    """BD-rate of every curve (a model's DiffC curve is named by the model, a peer's 'model (codec)')
    vs the anchor curve, per dataset and per-image metric with data."""
    out = []
    for metric in PER_IMAGE_METRICS:
        curves = rate_points(rows, metric)
        for dataset, per_ds in curves.groupby("dataset"):
            names = sorted(set(per_ds["curve"]) | set(rows.loc[rows["dataset"] == dataset, "model"].dropna()))
            ref = anchor or names[0]
            if ref not in names:
                raise UsageError(f"anchor {ref!r} not among the curves of {dataset}: {', '.join(names)}")
            for name in names:
                if name == ref:
                    continue
                value, reason = bd_rate(per_ds[per_ds["curve"] == ref], per_ds[per_ds["curve"] == name],
                                        metric, method)
                out.append({"dataset": dataset, "metric": metric, "anchor": ref, "model": name,
                            "bd_rate_pct": value, "reason": reason})
    return pd.DataFrame(out, columns=["dataset", "metric", "anchor", "model", "bd_rate_pct", "reason"])


def md_table(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table (floats to 4 significant digits, NaN/NA as 'nan')."""
    if not len(df):
        return "(none)"

    def cell(v: Any) -> str:
        if v is None or v is pd.NA:
            return "nan"
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def markdown(points: pd.DataFrame, bd: pd.DataFrame, ceilings: pd.DataFrame,
             reasons: pd.DataFrame | None = None) -> str:
    """The report as markdown."""
    fmt = md_table
    parts = [
        "# DiffC results",
        "## Metrics per rate point (mean over images; kind=vae: autoencoder only)",
        "bpp = real file size; kl_bpp = Σ KL(q‖p) per pixel (the ideal rate); delivered_bpp = "
        "Σ log2 q/p of the samples sent (what the truncated search delivered).",
        fmt(points), "## VAE ceilings (PSNR)", fmt(ceilings),
        "## BD-rate vs anchor (%; negative = fewer bits for the same quality)", fmt(bd)]
    if reasons is not None:
        parts += ["## Why metric cells are NaN (rows per reason)", fmt(reasons)]
    return "\n\n".join(parts + [""])


@one_line_errors(OSError)
def report(cfg: DictConfig) -> Path:
    """The command: write the tables of ``cfg.results``; returns the markdown file."""
    cli.require(cfg, "results")
    if cfg.method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    results = Path(cfg.results)
    rows, _ = load_results(results)
    out = Path(cfg.out) if cfg.out else results / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    points = points_table(rows)
    bd = bd_table(rows, cfg.anchor or None, cfg.method)
    points.to_csv(f"{out}-points.csv", index=False)
    bd.to_csv(f"{out}-bdrate.csv", index=False)
    Path(f"{out}.md").write_text(markdown(points, bd, vae_ceiling(rows, "psnr"), nan_reasons(rows)))
    print(f"{out}.md: {len(points)} rate points, {len(bd)} BD-rate pairs "
          f"({int(bd['bd_rate_pct'].isna().sum())} NaN)")
    return Path(f"{out}.md")


if __name__ == "__main__":
    cli.main(report, "report", verbatim=("results", "out"), config_dir=cli.ANALYSIS_CONF_DIR)
