"""Tables of a results directory: metrics per rate point, and BD-rate between backbones.

    python -m analysis.report results=DIR [out=DIR/report] [anchor=MODEL] [method=akima] [min_overlap=0.75]

(a Hydra app: ``analysis/conf/report.yaml``, ``--help`` lists the options; torch is never imported)

Writes ``{out}.md`` (both tables, markdown; columns without any value, e.g. metrics not computed,
are left out of it) and ``{out}-points.csv`` / ``{out}-bdrate.csv`` (every column). The summary
line counts the diffusion codecs' rate points apart from the VAE rows and classic-codec points.
BD-rate (bjontegaard) of every curve against ``anchor``, per dataset and per-image metric (PSNR,
MS-SSIM, ... whichever have values), on the mean curves. The curves are the diffusion codecs' (a
model's DiffC curve is named by the model, a peer's 'model (codec)') and the classic codecs' of the
sweep (``baselines=[jpeg,...]``, named by the codec: ``anchor=jpeg`` measures everything against
JPEG). Default anchor: the first diffusion curve by name. Quality is given higher-is-better
(-LPIPS, -DISTS), rates sorted strictly increasing (points that do not increase the rate are
dropped). Negative = the curve needs fewer bits than the anchor for the same quality. A pair that
cannot be computed (too few points, no overlap) gives NaN and the reason. BD-rate averages the
log-rate gap over the quality range both curves cover: ``overlap`` is that range's share of the
range either covers (bjontegaard's definition); below ``min_overlap`` (an option, default 0.75 as
bjontegaard's) the value is an extrapolation-prone average over a sliver of the curves, flagged
``indicative`` (the markdown prints it as "VALUE (indicative)") with the overlap in the reason.
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

from . import cli
from .errors import UsageError, describe, one_line_errors
from .results import baseline_points, by_rate_point, load_results, rate_points, vae_ceiling
from .schema import ENCODE_SCOPE, HIGHER_IS_BETTER, PER_IMAGE_METRICS

MIN_POINTS = 2
#: bjontegaard's default minimum overlap (the report's ``min_overlap`` default)
MIN_OVERLAP = 0.75
BD_COLUMNS = ["dataset", "metric", "anchor", "model", "bd_rate_pct", "overlap", "indicative", "reason"]
#: bjontegaard's interpolation methods
METHODS = ("akima", "pchip", "cubic")


def points_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, model, codec and rate point (a classic codec's: its quality): n images, mean
    bpp, mean ideal rate (Σ KL) and delivered information per pixel, every metric's mean over the
    images with a value (inf stays inf: a lossless VAE round trip has PSNR inf, not NaN), and the
    mean seconds per image of the encode and of the decode of that rate point. ``encode_scope``
    says what ``encode_s`` times (``schema.TIMING``): 'image' = the one progressive encode of the
    image that serves all its rate points (the same seconds on each point, not that point's
    cost), 'point' = that point's own encode (a classic codec's quality)."""
    keys = ["dataset", "model", "kind", "codec", "config_hash", "recon_timestep", "target_bpp", "target_metric",
            "target_quality", "quality"]
    df = by_rate_point(rows)
    # jobs of one model and codec with other settings stay apart (their config hashes); VAE and
    # classic-codec rows do not depend on the codec's settings
    df["config_hash"] = df["config_hash"].where(df["kind"] == "codec")
    pixels = (df["width"] * df["height"]).astype(float)
    df["kl_bpp"] = df["kl_bits"].astype(float) / pixels
    df["delivered_bpp"] = df["delivered_bits"].astype(float) / pixels
    for m in PER_IMAGE_METRICS:
        df[m] = df[m].astype(float)
    agg = df.groupby(keys, dropna=False).agg(
        n=("image", "nunique"), bpp=("bpp", "mean"), kl_bpp=("kl_bpp", "mean"),
        delivered_bpp=("delivered_bpp", "mean"), **{m: (m, "mean") for m in PER_IMAGE_METRICS},
        encode_s=("encode_s", "mean"), decode_s=("decode_s", "mean")).reset_index()
    agg.insert(agg.columns.get_loc("encode_s") + 1, "encode_scope", agg["kind"].map(ENCODE_SCOPE).astype("string"))
    return agg.sort_values(["dataset", "model", "kind", "codec", "bpp"], ignore_index=True)


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


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Share (0..1) of the range covered by ``a`` or ``b`` that both cover: bjontegaard's curve
    overlap, on the quality axis for BD-rate (0 when both are one value)."""
    total = max(a.max(), b.max()) - min(a.min(), b.min())
    both = min(a.max(), b.max()) - max(a.min(), b.min())
    return max(both, 0.0) / total if total > 0 else 0.0


def bd_rate(anchor: pd.DataFrame, test: pd.DataFrame, metric: str, method: str,
            min_overlap: float = MIN_OVERLAP) -> tuple[float, float, str]:
    """BD-rate (%) of ``test`` vs ``anchor`` curves (columns bpp, value): (value, quality overlap
    0..1, reason if NaN or indicative: overlap below ``min_overlap``)."""
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    ra, qa = monotone(anchor["bpp"].to_numpy(float), sign * anchor["value"].to_numpy(float))
    rt, qt = monotone(test["bpp"].to_numpy(float), sign * test["value"].to_numpy(float))
    if min(len(ra), len(rt)) < MIN_POINTS:
        return math.nan, math.nan, f"too few distinct rate points ({len(ra)} anchor, {len(rt)} test)"
    share = overlap(qa, qt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:  # min_overlap=0: the overlap is judged here (bjontegaard would only warn)
            value = float(bjontegaard.bd_rate(ra, qa, rt, qt, method=method, require_matching_points=False,
                                              min_overlap=0))
        except (AssertionError, ValueError, ZeroDivisionError, np.linalg.LinAlgError) as exc:
            return math.nan, share, f"bjontegaard failed: {describe(exc)}"
    reasons = [str(w.message) for w in caught]
    if not math.isfinite(value):
        return math.nan, share, "; ".join(reasons) or "non-finite result"
    if share < min_overlap:
        reasons.insert(0, f"indicative: the curves share {share:.0%} of their quality range "
                          f"(< min_overlap={min_overlap:g})")
    return value, share, "; ".join(reasons)


def rd_curves(rows: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(diffusion-codec curves, classic-codec curves) of ``metric``, both with columns dataset,
    curve, bpp, value (means over the images): ``rate_points`` and ``baseline_points`` with the
    baseline's codec ('jpeg') as its curve name."""
    cols = ["dataset", "curve", "bpp", "value"]
    return rate_points(rows, metric)[cols], baseline_points(rows, metric).rename(columns={"codec": "curve"})[cols]


def bd_table(rows: pd.DataFrame, anchor: str | None, method: str, min_overlap: float = MIN_OVERLAP) -> pd.DataFrame:
    """BD-rate of every curve (a model's DiffC curve is named by the model, a peer's 'model (codec)',
    a classic codec's by the codec) vs the anchor curve (None: the first diffusion curve by name),
    per dataset and per-image metric with data; ``overlap`` (0..1) and ``indicative`` (a value
    whose overlap is below ``min_overlap``) with each."""
    out = []
    for metric in PER_IMAGE_METRICS:
        codecs, classic = rd_curves(rows, metric)
        curves = pd.concat([codecs, classic], ignore_index=True)
        for dataset, per_ds in curves.groupby("dataset"):
            labels = set(codecs.loc[codecs["dataset"] == dataset, "curve"])
            # models without a curve of their own (a label 'model #hash' is one of several jobs)
            models = {m for m in rows.loc[rows["dataset"] == dataset, "model"].dropna()
                      if not any(c.startswith(f"{m} #") for c in labels)}
            diffusion = labels | models
            names = sorted(diffusion | set(per_ds["curve"]))
            ref = anchor or min(diffusion)
            if ref not in names:
                raise UsageError(f"anchor {ref!r} not among the curves of {dataset}: {', '.join(names)}")
            for name in names:
                if name == ref:
                    continue
                value, share, reason = bd_rate(per_ds[per_ds["curve"] == ref], per_ds[per_ds["curve"] == name],
                                               metric, method, min_overlap)
                out.append({"dataset": dataset, "metric": metric, "anchor": ref, "model": name,
                            "bd_rate_pct": value, "overlap": share,
                            "indicative": math.isfinite(value) and share < min_overlap, "reason": reason})
    return pd.DataFrame(out, columns=BD_COLUMNS).astype({"indicative": bool})


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


def bd_display(bd: pd.DataFrame) -> pd.DataFrame:
    """The BD-rate table as printed: an indicative value reads 'VALUE (indicative)'."""
    shown = bd.drop(columns="indicative").astype({"bd_rate_pct": object})
    flagged = bd["indicative"]
    shown.loc[flagged, "bd_rate_pct"] = [f"{v:.4g} (indicative)" for v in bd.loc[flagged, "bd_rate_pct"]]
    return shown


def markdown(points: pd.DataFrame, bd: pd.DataFrame, ceilings: pd.DataFrame,
             reasons: pd.DataFrame | None = None, min_overlap: float = MIN_OVERLAP) -> str:
    """The report as markdown."""
    fmt = md_table
    parts = [
        "# DiffC results",
        "## Metrics per rate point (mean over images; kind=vae: autoencoder only)",
        "bpp = real file size; kl_bpp = Σ KL(q‖p) per pixel (the ideal rate); delivered_bpp = "
        "Σ log2 q/p of the samples sent (what the truncated search delivered). encode_s times the "
        "encode named by encode_scope: image = the one progressive encode that serves all of the "
        "image's rate points (the same on each), point = that point's own encode.",
        fmt(points), "## VAE ceilings (PSNR)", fmt(ceilings),
        "## BD-rate vs anchor (%; negative = fewer bits for the same quality)",
        f"overlap = share of the quality range both curves cover; below min_overlap={min_overlap:g} "
        "the value is indicative only.", fmt(bd_display(bd))]
    if reasons is not None:
        parts += ["## Why metric cells are NaN (rows per reason)", fmt(reasons)]
    return "\n\n".join(parts + [""])


@one_line_errors(OSError)
def report(cfg: DictConfig) -> Path:
    """The command: write the tables of ``cfg.results``; returns the markdown file."""
    cli.require(cfg, "results")
    if cfg.method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    min_overlap = cfg.min_overlap
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)) or not 0 <= min_overlap <= 1:
        raise UsageError(f"min_overlap must be a number in [0, 1] (share of the quality range), got {min_overlap!r}")
    results = Path(cfg.results)
    rows, _ = load_results(results)
    out = Path(cfg.out) if cfg.out else results / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    points = points_table(rows)
    bd = bd_table(rows, cfg.anchor or None, cfg.method, float(min_overlap))
    points.to_csv(f"{out}-points.csv", index=False)
    bd.to_csv(f"{out}-bdrate.csv", index=False)
    shown = points.dropna(axis=1, how="all")  # the markdown leaves out columns with no value at all
    Path(f"{out}.md").write_text(markdown(shown, bd, vae_ceiling(rows, "psnr").drop(columns="lossless"),
                                          nan_reasons(rows), float(min_overlap)))
    kinds = points["kind"].value_counts()
    extra = [f"{kinds.get(k, 0)} {what}" for k, what in (("vae", "VAE rows"), ("baseline", "classic-codec points"))
             if kinds.get(k, 0)]
    print(f"{out}.md: {kinds.get('codec', 0)} rate points{' + ' + ', '.join(extra) if extra else ''}, "
          f"{len(bd)} BD-rate pairs "
          f"({int(bd['bd_rate_pct'].isna().sum())} NaN, {int(bd['indicative'].sum())} indicative: "
          f"overlap < min_overlap={float(min_overlap):g})")
    return Path(f"{out}.md")


if __name__ == "__main__":
    cli.main(report, "report", verbatim=("results", "out"), config_dir=cli.ANALYSIS_CONF_DIR)
