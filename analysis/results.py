"""Reading a results directory written by ``pipelines.evaluate`` (one or many job dirs).

A job dir holds ``job.json`` (its current config hash) and ``shards/IMAGE.HASH.parquet``; only
shards of the current hash are read, so rows of an older config in the same dir never mix in.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UsageError
from .schema import FID_COLUMNS, FID_FILE, JOB_JSON, SHARDS, frame

#: the ``codec`` of DiffC's own rows: the channel name of its reverse-channel coder (the header's)
DIFFC = "pfr"
#: channel names written before format 9 (rows of older sweeps) -> today's
LEGACY_CODECS = {"diffc": DIFFC, "diffc-sparse-sum": "sparse-sum"}


def job_dirs(results: Path) -> list[Path]:
    """Every job dir under ``results`` (itself included), sorted."""
    if not results.is_dir():
        raise UsageError(f"results directory {results} does not exist")
    return sorted(p.parent for p in results.rglob(JOB_JSON))


def load_results(results: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, fid) of every job under ``results``; rows has the columns of ``schema.COLUMNS``.

    One config hash is one job, however many dirs hold it (a job run under two directory names
    before they were named by the config, ``pipelines.evaluate.job_dir_name``, or a copied dir):
    each image of a config hash is read once, from the first such dir (sorted), and a note on
    stderr names the dirs whose duplicates were left out, so no image is counted twice."""
    rows, fids = [], []
    dirs = job_dirs(Path(results))
    first: dict[str, Path] = {}
    seen: set[tuple[str, str]] = set()
    skipped: dict[str, list[Path]] = {}
    for d in dirs:
        chash = json.loads((d / JOB_JSON).read_text())["config_hash"]
        for p in sorted((d / SHARDS).glob(f"*.{chash}.parquet")):
            image = p.name[: -len(f".{chash}.parquet")]
            if (chash, image) in seen:
                skipped.setdefault(chash, []).append(d)
                continue
            seen.add((chash, image))
            rows.append(pd.read_parquet(p))
        fid = d / FID_FILE
        if fid.exists() and chash not in first:
            df = pd.read_parquet(fid)
            fids.append(df[df["config_hash"] == chash])
        first.setdefault(chash, d)
    for chash, dup in skipped.items():
        names = ", ".join(sorted({x.name for x in dup}))
        print(f"note: config {chash} has results in several dirs; its images are counted once, from "
              f"{first[chash].name} (left out: {names})", file=sys.stderr)
    if not rows:
        raise UsageError(f"no result shards under {results} ({len(dirs)} job dirs)")
    out_rows = pd.concat(rows, ignore_index=True)
    out_fid = pd.concat(fids, ignore_index=True) if fids else pd.DataFrame(columns=list(FID_COLUMNS))
    out = frame(out_rows.to_dict("records"))
    # shards written before the codec column: their codec and vae rows are DiffC's and the VAE's;
    # before format 9 the channels had other names
    old = out["codec"].isna()
    out.loc[old, "codec"] = out.loc[old, "kind"].map({"codec": DIFFC, "vae": "vae"})
    out["codec"] = out["codec"].replace(LEGACY_CODECS)
    return out, out_fid


def rate_points(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean curve per (dataset, model, codec, rate point) of the codec rows, sorted by bpp.

    A rate point is a stop timestep, or a bpp or quality target (``bitrate=bpp``, ``bitrate=psnr``:
    its images' stop timesteps differ, and recon_timestep is NaN). Columns: dataset, model, codec,
    curve (its label), recon_timestep, target_bpp, target_metric, target_quality, bpp, value (mean
    over images with a finite value), sem (standard error of that mean; 0 with one image), n.
    """
    codec = rows[(rows["kind"] == "codec") & rows["bpp"].notna()].copy()
    codec["value"] = codec[metric].astype(float)
    codec = codec[codec["value"].notna() & (codec["value"].abs() != float("inf"))]
    codec = by_rate_point(codec)
    keys = ["dataset", "model", "codec", "config_hash", "recon_timestep", "target_bpp", "target_metric",
            "target_quality"]
    agg = codec.groupby(keys, dropna=False).agg(bpp=("bpp", "mean"), value=("value", "mean"),
                                                sd=("value", "std"), n=("value", "size")).reset_index()
    agg["sem"] = (agg["sd"] / agg["n"] ** 0.5).fillna(0.0)
    agg["curve"] = curve_label(agg)
    return agg.drop(columns="sd").sort_values(["dataset", "model", "codec", "bpp"], ignore_index=True)


def by_rate_point(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with recon_timestep NaN where a bpp or quality target names the rate point: each
    image's target picks its own stop timestep (``bitrate=bpp``, ``bitrate=psnr``), which would
    split the target's point."""
    rows = rows.copy()
    named = rows["target_bpp"].notna() | rows["target_quality"].notna()
    rows["recon_timestep"] = rows["recon_timestep"].astype(float).where(~named)
    return rows


def curve_label(points: pd.DataFrame) -> pd.Series:
    """One curve per (model, codec): the model's name for DiffC, 'model (codec)' for the peers.

    Jobs of one model and codec with other settings (config hashes: a sweep over
    ``codec.channel.chunk_bits``, say) are separate curves, never averaged together: each label then ends
    in its hash, 'gaussian #826e09' (the job dir's job.json holds it)."""
    codec = points["codec"].fillna(DIFFC).astype(str)
    label = points["model"].astype(str).where(codec == DIFFC, points["model"].astype(str) + " (" + codec + ")")
    if "config_hash" not in points or not len(points):
        return label
    chash = points["config_hash"].astype(str)
    several = chash.groupby([points["dataset"], label]).transform("nunique") > 1
    return label.where(~several, label + " #" + chash.str[:6])


#: how figures name a codec of the ``codec`` column (``display_name``)
CODEC_NAMES = {DIFFC: "DiffC", "sparse-sum": "DiffC (sparse-sum)", "ddcm": "DDCM", "turbo-ddcm": "Turbo-DDCM"}
#: model names of the random-weight twins (conf/model/tiny-*.yaml): rates and quality meaningless
RANDOM_WEIGHT_PREFIX = "tiny-"


def random_weights(model: str) -> bool:
    """Whether ``model`` is a random-weight twin (``tiny-*``): a round-trip test, not a codec to judge."""
    return str(model).startswith(RANDOM_WEIGHT_PREFIX)


def display_name(curve: str, model: str, codec: str) -> str:
    """A curve's name in a figure legend: codec and backbone, 'DiffC · gaussian', 'DDCM · sd15'
    (a settings hash kept, 'DiffC · gaussian #826e09'), and '(random weights)' for a ``tiny-*`` twin."""
    name = f"{CODEC_NAMES.get(codec, str(codec))} · {model}"
    _, sep, chash = str(curve).partition(" #")
    return name + (f" #{chash}" if sep else "") + (" (random weights)" if random_weights(model) else "")


def vae_ceiling(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean metric of the VAE round trip per (dataset, model): columns dataset, model, value, n,
    lossless.

    Infinite values (PSNR of a lossless autoencoder, e.g. the Gaussian backbone's identity) are
    left out of the mean; a model whose every value is infinite gets value inf. ``lossless``: every
    VAE row of the model has PSNR inf (the round trip gives the image back), so it has no ceiling
    on any metric (its MS-SSIM of 1.0 is the metric's maximum, not a limit of the codec).
    """
    vae = rows[rows["kind"] == "vae"].copy()
    lossless = vae.groupby(["dataset", "model"])["psnr"].apply(
        lambda v: bool(len(v)) and bool(np.isinf(v.astype(float)).all())).rename("lossless")
    vae["value"] = vae[metric].astype(float)
    vae = vae[vae["value"].notna()]
    vae["finite"] = vae["value"].where(vae["value"].abs() != float("inf"))
    agg = vae.groupby(["dataset", "model"]).agg(value=("finite", "mean"), inf=("value", "max"),
                                                n=("value", "size")).reset_index()
    agg["value"] = agg["value"].fillna(agg["inf"])
    agg = agg.drop(columns="inf").merge(lossless.reset_index(), on=["dataset", "model"], how="left")
    agg["lossless"] = agg["lossless"].fillna(False).astype(bool)
    return agg


def baseline_points(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean curve per (dataset, codec, quality) of the classic codecs' rows, sorted by bpp.

    Baseline rows do not depend on the job's model, so each image counts once even when several
    jobs (models) of a sweep computed them. Columns: dataset, codec, quality, bpp, value, sem, n.
    """
    base = rows[(rows["kind"] == "baseline") & rows["bpp"].notna()].copy()
    base["value"] = base[metric].astype(float)
    base = base[base["value"].notna() & (base["value"].abs() != float("inf"))]
    base = base.drop_duplicates(["dataset", "codec", "quality", "image", "width", "height"])
    agg = base.groupby(["dataset", "codec", "quality"]).agg(
        bpp=("bpp", "mean"), value=("value", "mean"), sd=("value", "std"), n=("value", "size")).reset_index()
    agg["sem"] = (agg["sd"] / agg["n"] ** 0.5).fillna(0.0)
    return agg.drop(columns="sd").sort_values(["dataset", "codec", "bpp"], ignore_index=True)
