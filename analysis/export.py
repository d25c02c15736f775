"""Each curve of a results directory in CompressAI's results format (what its plotting scripts and
many papers' RD tooling read):

    {"name": ..., "description": ..., "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...], ...}}

one file per curve, ``{dataset}-{model}-{codec}.json`` (the mean curve of a model with a codec:
diffc, ddcm, turbo-ddcm) and
``{dataset}-baseline-{codec}.json`` (a classic codec), written by ``analysis.rd_curves`` next to
the figures. The values are the figures' plotted means (``rate_points`` / ``baseline_points``),
points in increasing bpp; a metric without values is left out. PSNR and MS-SSIM take CompressAI's
keys ``psnr-rgb`` and ``ms-ssim-rgb`` (both are computed on the RGB image, pipelines/metrics.py;
MS-SSIM in [0, 1], which CompressAI's plot converts to dB itself): the keys of the result files
CompressAI ships (``results/image/kodak/*.json``, two of them copied in ``analysis/data/``) and
the ones ``python -m compressai.utils.plot -m psnr|ms-ssim`` reads (tests/test_clients.py). The
other metrics keep their column names (lpips, dists, qalign). No timing keys: a diffusion codec's
encode time is that of the whole progressive encode, not of one point (``analysis.schema.TIMING``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .results import CODEC_NAMES, baseline_points, rate_points
from .schema import PER_IMAGE_METRICS

#: our column -> CompressAI's key (CompressAI >= 1.2 names the RGB metrics ``*-rgb``)
KEYS = {"psnr": "psnr-rgb", "ms_ssim": "ms-ssim-rgb"}


def _curve(per_metric: dict[str, pd.DataFrame], key: list[str]) -> dict[str, list[float]]:
    """{bpp, metric...} on the rate points of the first metric with data (the others aligned)."""
    metrics = [m for m, c in per_metric.items() if len(c)]
    if not metrics:
        return {}
    first = per_metric[metrics[0]].sort_values("bpp", ignore_index=True)
    out = {"bpp": first["bpp"].astype(float).tolist()}
    for m in metrics:  # merge matches NaN keys (target_bpp of timestep sweeps) with NaN
        values = first[key].merge(per_metric[m][[*key, "value"]], on=key, how="left")["value"]
        out[KEYS.get(m, m)] = values.astype(float).tolist()
    return out


def curves(rows: pd.DataFrame) -> dict[str, dict]:
    """{file stem: CompressAI-format dict} of every curve in ``rows``."""
    out: dict[str, dict] = {}
    diffc = {m: rate_points(rows, m) for m in PER_IMAGE_METRICS}
    base = {m: baseline_points(rows, m) for m in PER_IMAGE_METRICS}
    for (dataset, model, codec), grp in rows[rows["kind"] == "codec"].groupby(["dataset", "model", "codec"]):
        per = {m: c[(c["dataset"] == dataset) & (c["model"] == model) & (c["codec"] == codec)] for m, c in diffc.items()}
        results = _curve(per, ["recon_timestep", "target_bpp"])
        if results:
            out[f"{dataset}-{model}-{codec}"] = {
                "name": f"{CODEC_NAMES.get(codec, codec)} ({model})",
                "description": f"{CODEC_NAMES.get(codec, codec)} with the {model} backbone on {dataset}: mean over "
                               f"{grp['image'].nunique()} "
                               f"images; bpp = file bytes x 8 / pixels (diffc-pipeline)",
                "results": results}
    for (dataset, codec), grp in rows[rows["kind"] == "baseline"].groupby(["dataset", "codec"]):
        per = {m: c[(c["dataset"] == dataset) & (c["codec"] == codec)] for m, c in base.items()}
        results = _curve(per, ["quality"])
        if results:
            out[f"{dataset}-baseline-{codec}"] = {
                "name": str(codec).upper(),
                "description": f"{codec} (Pillow) on {dataset}: mean over {grp['image'].nunique()} images "
                               f"at qualities {sorted(int(q) for q in grp['quality'].dropna().unique())}; "
                               f"bpp = file bytes x 8 / pixels (diffc-pipeline)",
                "results": results}
    return out


def write_curves(rows: pd.DataFrame, out: Path) -> list[Path]:
    """Write every curve as ``out/STEM.json``; returns the files."""
    written = []
    for stem, data in curves(rows).items():
        path = out / f"{stem}.json"
        path.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")
        written.append(path)
    return written
