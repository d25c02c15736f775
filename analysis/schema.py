"""The results contract between ``pipelines.evaluate`` (the writer) and ``analysis`` (the readers):
the metrics, the columns and dtypes of the results tables, and the files of a job directory.

It lives in ``analysis`` and needs only pandas: the pipelines may import analysis, never the other
way round, so reading results (figures, reports, a notebook) never loads torch or Hydra.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd


@dataclass(frozen=True)
class Metric:
    """One quality metric: column name, direction, axis label, per image or per dataset."""

    name: str
    higher_is_better: bool
    unit: str
    per_image: bool = True


#: every metric of the results, in column order: THE list (pipelines.metrics implements the
#: per-image ones, the dataset-level FID/KID live in fid.parquet)
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("psnr", True, "PSNR (dB)"),
    Metric("ms_ssim", True, "MS-SSIM"),
    Metric("lpips", False, "LPIPS (AlexNet)"),
    Metric("dists", False, "DISTS"),
    Metric("qalign", True, "Q-Align score"),
    Metric("fid", False, "FID (256px patches)", per_image=False),
    Metric("kid", False, "KID (256px patches)", per_image=False),
)}
#: the per-image metric columns of the results table, computed or not
PER_IMAGE_METRICS: tuple[str, ...] = tuple(n for n, m in METRICS.items() if m.per_image)
#: the dataset-level metric columns of fid.parquet
DATASET_METRICS: tuple[str, ...] = tuple(n for n, m in METRICS.items() if not m.per_image)
HIGHER_IS_BETTER: dict[str, bool] = {n: m.higher_is_better for n, m in METRICS.items()}
UNITS: dict[str, str] = {n: m.unit for n, m in METRICS.items()}

#: the results table, in order (docs/design.md §2 first). ``kind``: codec (a rate point of a
#: diffusion codec), vae (the backbone's autoencoder round trip: the ceiling, no rate) or baseline
#: (a classic codec, pipelines/baselines.py). ``codec`` names what made the reconstruction: the
#: channel for codec rows ('pfr' = DiffC's coder, 'sparse-sum', 'ddcm', 'turbo-ddcm'; rows written
#: before format 9 say 'diffc' / 'diffc-sparse-sum' and read as today's names), 'vae' for vae rows, the baseline's name ('jpeg', 'webp', 'avif', 'jxl') for
#: baseline rows (whose ``quality`` is the codec's quality setting and which do not depend on
#: ``model``, the job's). Shards written before the column existed read as 'pfr' / 'vae'.
#: ``caption``: the text prompt the codec rows were encoded with (in the file, counted in bpp;
#: ``caption=auto`` = a BLIP-2 caption, pipelines/captions.py), null when unconditional.
#: ``protocol``: what the dataset's images became before coding and scoring (conf/protocol:
#: native, paper, crop512, square512, ...; docs/datasets.md); null in shards written before it existed.
#: ``target_metric`` / ``target_quality``: a quality target's metric and value (bitrate.psnr=...: the
#: row is the image's smallest rate point reaching it, pipelines/target.py); null/NaN otherwise.
COLUMNS: tuple[str, ...] = (
    "model", "dataset", "protocol", "image", "kind", "codec", "recon_timestep", "step_index", "bpp", "bits_total",
    "bits_payload", "bits_side", "bits_header", "kl_bits", *PER_IMAGE_METRICS, "encode_s", "decode_s",
    "config_hash", "timestep", "target_bpp", "quality", "delivered_bits", "drift_xt_max", "drift_psnr_db", "width", "height",
    "ms_ssim_scales", "metric_errors", "caption", "encode_cpu_s", "decode_cpu_s", "target_metric",
    "target_quality",
)
#: what the per-row timing columns time (seconds of wall clock, per image). The contract keeps the
#: names ``encode_s`` and ``decode_s``; ``ENCODE_SCOPE`` says per kind what ``encode_s`` covers.
#: ``encode_cpu_s`` / ``decode_cpu_s``: the process's CPU seconds (all threads, time.process_time)
#: over the same spans; cpu / wall far below the threads in use = a loaded machine (the wall
#: seconds then measure the load, not the codec). NaN in shards written before they existed.
TIMING: dict[str, str] = {
    "encode_s": "codec rows: the ONE progressive encode of the image up to its highest rate point "
                "(every rate point of the image comes from it and carries the same value: it is not "
                "the cost of that point); baseline rows: the encode of that quality alone; vae rows: NaN",
    "decode_s": "codec rows: what decoding that rate point's file alone costs, the decoder's chain "
                "up to it plus its own reconstruction (diffc/codec.py decode_prefixes: one chain pass "
                "serves every point, the other points' reconstructions are not counted); baseline rows: "
                "Pillow's decode of that file; vae rows: the autoencoder round trip",
}
#: kind -> what its rows' ``encode_s`` times: 'image' (shared by the image's rate points) or 'point'
ENCODE_SCOPE: dict[str, str] = {"codec": "image", "baseline": "point"}
INT_COLUMNS = ("recon_timestep", "step_index", "timestep", "bits_total", "bits_header", "width",
               "height", "ms_ssim_scales", "quality")
STR_COLUMNS = ("model", "dataset", "protocol", "image", "kind", "codec", "config_hash", "metric_errors", "caption",
               "target_metric")
#: the dataset-level table (fid.parquet)
FID_COLUMNS: tuple[str, ...] = ("model", "dataset", "protocol", "kind", "recon_timestep", "target_bpp",
                                "bpp_mean", *DATASET_METRICS, "n_patches", "reason", "config_hash", "target_metric",
                                "target_quality")

#: files of a job directory
DONE, JOB_JSON, JOB_YAML, FID_FILE, SHARDS = "done.json", "job.json", "job.yaml", "fid.parquet", "shards"
FAILED, RESULTS = "failed.json", "results.parquet"


def frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> the results table with fixed column order and dtypes (nullable ints)."""
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for c in INT_COLUMNS:
        df[c] = df[c].astype("Int64")
    for c in STR_COLUMNS:
        df[c] = df[c].astype("string")
    float_cols = [c for c in COLUMNS if c not in INT_COLUMNS and c not in STR_COLUMNS]
    df[float_cols] = df[float_cols].astype("float64")
    return df
