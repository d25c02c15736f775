"""The paper's visual comparison: the same crop of a few images, reconstructed by every backbone at
matched rate, next to the original.

    python -m analysis.visual_comparison results=DIR [images=kodim04,kodim23] [bpp=0.1]
        [models=sd15,sd21,sdxl,flux-dev] [crop=[x,y,w,h]] [crop_size=256] [out=DIR] [formats=png,pdf]

(a Hydra app: ``analysis/conf/visual_comparison.yaml``, ``--help`` lists the options)

Reads the rate points of one codec (``codec``, default DiffC) from a results directory
(``analysis.results``) and the reconstructions the sweep saved as PNG (``save.recon_png=true``, as
the ``paper_*`` experiments set): ``JOB_DIR/recon/IMAGE/LABEL.png`` with LABEL ``t700`` (a stop
timestep) or ``bpp0.1`` (a bpp target), the job dir being the one whose ``job.json`` config hash
the row carries. Per image and model, the rate point shown is the one with the smallest
|bpp - target| (a tie goes to the lower bpp); bpp = 8 x file bytes / pixels, as in the rows. The
target is ``bpp`` for every image or, by default, per image the median bpp of all models' rate
points inside the range that every model reaches on that image, [max_m min bpp_m, min_m max bpp_m]
(``default_targets``; when the ranges do not overlap, the middle of the gap).

The figure: one row per image, the original and then one column per model (title: model, label
and the actual bpp), all cropped to the same window (``crop=[x,y,w,h]`` in pixels, default the
central ``crop_size`` square clipped to the image), written as ``{out}/{name}.{png,pdf}``; next to
it ``{name}.csv``: one row per shown reconstruction (image, model, label, recon_timestep, bpp,
psnr, target, the crop window, the PNG's path).

The originals are the images as the job coded them (its dataset under its protocol), which the
sweep saves beside the reconstructions as ``JOB_DIR/recon/IMAGE/original.png`` (``analysis.images``,
8- or 16-bit as the image): read back with numpy and imagecodecs, so that the figure loads neither
torch nor the pipelines. A job dir written before the sweep saved them gets them from a rerun of
the job once its ``done.json`` is deleted (the shards are kept: nothing is encoded again).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from PIL import Image  # noqa: E402

from . import cli  # noqa: E402
from .errors import UsageError, one_line_errors  # noqa: E402
from .images import ORIGINAL, read_png, recon_png, row_label  # noqa: E402
from .results import DIFFC, job_dirs, load_results  # noqa: E402
from .schema import DONE, JOB_JSON  # noqa: E402

#: (x, y, width, height) of a crop, in pixels of the original image
Window = tuple[int, int, int, int]
SIDECAR = ["image", "model", "codec", "label", "recon_timestep", "bpp", "psnr", "target", "crop_x", "crop_y",
           "crop_w", "crop_h", "recon"]


def default_targets(points: pd.DataFrame) -> pd.Series:
    """Per image (index): a bpp every model reaches. With lo = max over models of the model's lowest
    bpp on the image and hi = min over models of its highest, the median of the bpp of all rate
    points (every model's) in [lo, hi]; (lo + hi) / 2 when no point lies there (lo > hi: the
    models' ranges do not overlap)."""
    per_model = points.groupby(["image", "model"])["bpp"].agg(["min", "max"])
    span = per_model.groupby("image").agg(lo=("min", "max"), hi=("max", "min"))
    pts = points.join(span, on="image")
    inside = pts[(pts["bpp"] >= pts["lo"]) & (pts["bpp"] <= pts["hi"])]
    median = inside.groupby("image")["bpp"].median().reindex(span.index)
    return median.fillna((span["lo"] + span["hi"]) / 2).rename("target")


def choose_points(points: pd.DataFrame, target: float | None) -> pd.DataFrame:
    """Per (image, model): the row of ``points`` whose bpp is closest to the target (``target``, or
    ``default_targets`` per image when None); ties go to the lower bpp. Adds the column target."""
    targets = default_targets(points) if target is None else pd.Series(float(target), index=points["image"].unique())
    pts = points.assign(target=points["image"].map(targets))
    pts["dist"] = (pts["bpp"] - pts["target"]).abs()
    best = pts.sort_values(["image", "model", "dist", "bpp"]).groupby(["image", "model"], sort=False).head(1)
    return best.drop(columns="dist").reset_index(drop=True)


def crop_window(height: int, width: int, crop: list[int] | None, size: int) -> Window:
    """The crop of an image of height x width: ``crop`` = [x, y, w, h] (checked to lie inside), or
    the central size x size square clipped to the image."""
    if crop is None:
        w, h = min(size, width), min(size, height)
        return (width - w) // 2, (height - h) // 2, w, h
    x, y, w, h = crop
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > width or y + h > height:
        raise UsageError(f"crop=[{x},{y},{w},{h}] (x, y, width, height) does not fit an image of {width}x{height}")
    return x, y, w, h


def originals(job_dir: Path, images: list[str]) -> dict[str, np.ndarray]:
    """The images ``images`` as the job in ``job_dir`` coded them (``recon/IMAGE/original.png``):
    uint8 [H, W, 3], or float32 in [0, 1] for 16-bit / float sources."""
    paths = {i: recon_png(job_dir, i, ORIGINAL) for i in images}
    if absent := [p for p in paths.values() if not p.is_file()]:
        raise UsageError(f"no original {absent[0]} ({len(absent)} missing; older sweeps did not save them): "
                         f"delete {job_dir / DONE} and rerun the job with save.recon_png=true (it keeps the "
                         f"shards: nothing is encoded again)")
    return {i: read_png(p) for i, p in paths.items()}


def recon_path(job_dir: Path, row: pd.Series) -> Path:
    """The PNG the sweep saved for a codec row (named by ``analysis.images.point_label``)."""
    return recon_png(job_dir, str(row["image"]), row_label(row))


def select(rows: pd.DataFrame, codec: str, dataset: str | None, models: list[str] | None,
           images: list[str] | None, n_images: int) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(rate points of ``codec`` on one dataset, models in column order, images in row order),
    checking that every model has rate points on every image."""
    pts = rows[(rows["kind"] == "codec") & (rows["codec"] == codec) & rows["bpp"].notna()]
    if pts.empty:
        raise UsageError(f"no rate points of codec {codec!r} in the results")
    datasets = sorted(set(pts["dataset"]))
    if dataset is None and len(datasets) > 1:
        raise UsageError(f"the results hold several datasets ({', '.join(datasets)}): choose one with dataset=NAME")
    dataset = dataset or datasets[0]
    if dataset not in datasets:
        raise UsageError(f"dataset {dataset!r} not in the results: {', '.join(datasets)}")
    pts = pts[pts["dataset"] == dataset]
    known = sorted(set(pts["model"]))
    models = models or known
    if unknown := [m for m in models if m not in known]:
        raise UsageError(f"models {unknown} have no {codec} rate points on {dataset}; known: {', '.join(known)}")
    pts = pts[pts["model"].isin(models)]
    common = sorted(set.intersection(*(set(v) for v in pts.groupby("model")["image"].unique())))
    images = images or common[:n_images]
    if not images:
        raise UsageError(f"no image has rate points of every model ({', '.join(models)})")
    if missing := [i for i in images if i not in common]:
        raise UsageError(f"images {missing} lack rate points of some model; images with all: {', '.join(common)}")
    return pts[pts["image"].isin(images)], models, images


def draw(shown: pd.DataFrame, refs: dict[str, np.ndarray], models: list[str], images: list[str],
         windows: dict[str, Window]) -> plt.Figure:
    """The grid: rows = images, columns = original + one per model, every panel the image's window."""
    aspect = max(windows[i][3] / windows[i][2] for i in images)
    fig, axes = plt.subplots(len(images), 1 + len(models), squeeze=False,
                             figsize=(2.3 * (1 + len(models)), 2.3 * aspect * len(images) + 0.6))
    for r, image in enumerate(images):
        x, y, w, h = windows[image]
        pick = shown[shown["image"] == image].set_index("model")
        panels = [(refs[image], f"{image} (original)\ntarget {pick['target'].iloc[0]:.3g} bpp")]
        for model in models:
            p = pick.loc[model]
            with Image.open(p["recon"]) as im:
                panels.append((np.asarray(im.convert("RGB")), f"{model} ({p['label']})\n{p['bpp']:.3g} bpp"))
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(img[y:y + h, x:x + w], interpolation="nearest")
            ax.set_title(title, fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def render(results: Path, out: Path, name: str, formats: list[str], images: list[str] | None = None,
           models: list[str] | None = None, bpp: float | None = None, crop: list[int] | None = None,
           crop_size: int = 256, n_images: int = 3, codec: str = DIFFC,
           dataset: str | None = None) -> pd.DataFrame:
    """Write ``{out}/{name}.{formats}`` and ``{out}/{name}.csv``; returns the sidecar table."""
    rows, _ = load_results(results)
    pts, models, images = select(rows, codec, dataset, models, images, n_images)
    jobs = {json.loads((d / JOB_JSON).read_text())["config_hash"]: d for d in job_dirs(results)}
    grid = pd.DataFrame([(i, m) for i in images for m in models], columns=["image", "model"], dtype="string")
    shown = grid.merge(choose_points(pts, bpp), on=["image", "model"], how="left")  # rows in the grid's order
    paths = [recon_path(jobs[str(r["config_hash"])], r) for _, r in shown.iterrows()]
    shown["label"], shown["recon"] = [p.stem for p in paths], [str(p) for p in paths]
    if absent := [p for p in shown["recon"] if not Path(p).is_file()]:
        raise UsageError(f"no reconstruction {absent[0]} ({len(absent)} missing): run the sweep with save.recon_png=true")
    refs = originals(jobs[str(shown["config_hash"].iloc[0])], images)
    size = pts.groupby("image")[["height", "width"]].first()
    windows: dict[str, Window] = {}
    for image in images:
        h, w = int(size.loc[image, "height"]), int(size.loc[image, "width"])
        if refs[image].shape[:2] != (h, w):
            raise UsageError(f"{image}: the saved original is {refs[image].shape[1]}x{refs[image].shape[0]}, "
                             f"the results' {w}x{h} (was the job dir changed since the sweep?)")
        windows[image] = crop_window(h, w, crop, crop_size)
    shown[["crop_x", "crop_y", "crop_w", "crop_h"]] = [windows[i] for i in shown["image"]]
    table = shown[SIDECAR]
    out.mkdir(parents=True, exist_ok=True)
    fig = draw(table, refs, models, images, windows)
    for fmt in formats:
        fig.savefig(out / f"{name}.{fmt}", dpi=200, bbox_inches="tight")
    plt.close(fig)
    table.to_csv(out / f"{name}.csv", index=False)
    return table


def int_list(value: Any, key: str, n: int) -> list[int] | None:
    """A list option of ``n`` integers (null stays None)."""
    items = cli.as_list(value)
    if items is None:
        return None
    try:
        ints = [int(v) for v in items]
    except ValueError:
        ints = []
    if len(ints) != n:
        raise UsageError(f"{key} must be {n} integers, e.g. {key}=[0,0,256,256], got {value!r}")
    return ints


@one_line_errors(OSError)
def visual_comparison(cfg: DictConfig) -> pd.DataFrame:
    """The command: one figure and its sidecar; one line per image on stdout (target and picks)."""
    cli.require(cfg, "results")
    formats = cli.as_list(cfg.formats)
    if not formats:
        raise UsageError("formats must name at least one figure format, e.g. formats=png,pdf")
    if cfg.bpp is not None and not float(cfg.bpp) > 0:
        raise UsageError(f"bpp must be a positive number of bits per pixel, got {cfg.bpp!r}")
    if int(cfg.crop_size) < 1 or int(cfg.n_images) < 1:
        raise UsageError("crop_size and n_images must be positive")
    results = Path(cfg.results)
    out = Path(cfg.out) if cfg.out else results / "figures"
    table = render(results, out, str(cfg.name), formats, cli.as_list(cfg.images), cli.as_list(cfg.models),
                   None if cfg.bpp is None else float(cfg.bpp), int_list(cfg.crop, "crop", 4), int(cfg.crop_size),
                   int(cfg.n_images), str(cfg.codec), cfg.dataset)
    for image, t in table.groupby("image", sort=False):
        picks = ", ".join(f"{r.model} {r.label} {r.bpp:.4g}" for r in t.itertuples())
        print(f"{image}: target {t['target'].iloc[0]:.4g} bpp: {picks}")
    print(f"{out / cfg.name}: {table['image'].nunique()} images x {table['model'].nunique()} models")
    return table


if __name__ == "__main__":
    cli.main(visual_comparison, "visual_comparison", verbatim=("results", "out"),
             lists=("images", "models", "formats", "crop"), config_dir=cli.ANALYSIS_CONF_DIR)
