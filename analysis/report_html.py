"""One self-contained HTML report of a sweep: curves, BD-rates, an image browser, tables, provenance.

    python -m analysis.report_html results=DIR [results=[DIR1,DIR2]] [out=DIR/report.html]
        [reference_points=true] [anchor=jpeg] [max_images=4] [max_side=768] [max_points=5]

(a Hydra app: ``analysis/conf/report_html.yaml``; it reads parquet and PNGs only: no torch, no
``pipelines``). The file holds everything it shows: plotly.js (the full bundle, inlined once),
the data as JSON and the images as ``data:`` URIs, so it opens offline, can be mailed or attached
to a supplement, and fetches nothing (tests/test_report_html.py checks it in headless Chromium).
The page's skeleton, style sheet and script are ``analysis/templates/report.{html,css,js}``.

Sections:

- RD curves of every metric with data, one interactive plotly figure per dataset and metric: the
  mean curve per model / codec (``results.rate_points``), each image's points as faint markers
  (hover: model, image, bpp, value), the classic codecs grey dashed, each model's VAE ceiling as a
  dashed line, and with ``reference_points=true`` the published points of the rows' protocol
  (``make_published.matching_points``, the protocol in the legend), as ``analysis.rd_curves``;
- the BD-rate table of ``analysis.report.bd_table`` (same anchor, method and ``min_overlap``,
  the overlap and its 'indicative' flag per pair);
- the image browser: pick an image and a rate; the original and every model's and classic
  codec's reconstruction at the rate nearest to it (in log bpp) side by side, a before/after
  slider between any two of them and a pixel zoom (nearest-neighbour). It shows the PNGs the
  sweep saved (``save.recon_png``: ``recon/IMAGE/LABEL.png``, ``analysis.images``) and the classic
  codecs' files (``save.baselines``: ``baselines/IMAGE/CODEC-qQUALITY.EXT``, shown as they are);
- per image, a sortable table of every row (rate, metrics, times, protocol);
- provenance per job: its resolved config, config hash, protocol, the git revision, machine,
  device and timing of the run (``done.json``; '-' for sweeps that predate them).

Size cap (documented in the README): at most ``max_images`` images per dataset in the browser
(the first by name, or ``images=[...]``), at most ``max_points`` rate points per curve (spread
evenly over its rates, ends kept), and images whose long side exceeds ``max_side`` pixels (default
768: Kodak at its own pixels) are downscaled (Lanczos, PNG; the browser says so next to them).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from . import cli
from .errors import UsageError, one_line_errors
from .images import ORIGINAL, RECON, read_png, row_label
from .provenance import git_revision, machine
from .make_published import figure_protocol, load_published, matching_points
from .report import METHODS, MIN_OVERLAP, bd_display, bd_table, points_table
from .results import DIFFC, baseline_points, curve_label, job_dirs, load_results, rate_points, vae_ceiling
from .schema import DATASET_METRICS, DONE, HIGHER_IS_BETTER, JOB_JSON, JOB_YAML, METRICS, PER_IMAGE_METRICS, UNITS

#: plotly's modebar without the link to plotly's site (nothing in the file points outside it)
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
GREYS = ("#404040", "#707070", "#999999", "#555555", "#888888")
MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif",
        "jxl": "image/jxl"}
#: formats the browser shows as they are (others, e.g. JPEG XL, are converted to PNG with Pillow)
BROWSER_FORMATS = ("png", "jpg", "jpeg", "webp", "avif")
BASELINES = "baselines"
#: the page: its skeleton (str.format fields), style sheet and script
TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass
class Job:
    """A job dir of the report: its rows are tagged with ``index`` (column ``job``)."""

    index: int
    path: Path
    info: dict[str, Any]
    done: dict[str, Any]
    config: str


def load_jobs(results: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[Job]]:
    """(rows with a ``job`` column, dataset-level table, jobs) of every job under ``results``."""
    rows, fids, jobs = [], [], []
    for d in dict.fromkeys(p for r in results for p in job_dirs(r)):
        try:
            r, f = load_results(d)
        except UsageError:  # a job without shards of its current config (unfinished)
            continue
        job = Job(len(jobs), d, json.loads((d / JOB_JSON).read_text()),
                  json.loads((d / DONE).read_text()) if (d / DONE).exists() else {},
                  (d / JOB_YAML).read_text() if (d / JOB_YAML).exists() else "")
        jobs.append(job)
        rows.append(r.assign(job=job.index))
        fids.append(f)
    if not rows:
        raise UsageError(f"no result shards under {', '.join(map(str, results))}")
    return pd.concat(rows, ignore_index=True), pd.concat(fids, ignore_index=True), jobs


# ---- figures -------------------------------------------------------------------------------------
def rd_figure(rows: pd.DataFrame, fid: pd.DataFrame, dataset: str, metric: str,
              published: pd.DataFrame | None) -> Any | None:
    """The plotly figure of one dataset and metric (None: no finite value)."""
    import plotly.graph_objects as go

    from .rd_curves import fid_points

    ds_rows = rows[rows["dataset"] == dataset]
    if metric in DATASET_METRICS:
        curves, ceilings = fid_points(fid[fid["dataset"] == dataset], metric)
        per_image, base = pd.DataFrame(), pd.DataFrame()
    else:
        curves, ceilings = rate_points(ds_rows, metric), vae_ceiling(ds_rows, metric)
        base = baseline_points(ds_rows, metric)
        per_image = ds_rows[(ds_rows["kind"] == "codec") & ds_rows[metric].notna()].copy()
        per_image["value"] = per_image[metric].astype(float)
        per_image = per_image[np.isfinite(per_image["value"])]
        if len(per_image):
            per_image["curve"] = curve_label(per_image.assign(codec=per_image["codec"].fillna(DIFFC)))
    if not len(curves) and not len(base):
        return None
    fig = go.Figure()
    unit = UNITS[metric]
    hover = f"%{{fullData.name}}<br>%{{customdata}}<br>%{{x:.4f}} bpp<br>{metric} %{{y:.4g}}<extra></extra>"
    xmax = float(pd.concat([curves["bpp"], base["bpp"] if len(base) else curves["bpp"]]).max())
    models = sorted(set(curves["model"]) | set(ceilings["model"]))
    for k, model in enumerate(models):
        color = COLORS[k % len(COLORS)]
        for j, (label, c) in enumerate(curves[curves["model"] == model].groupby("curve", sort=True)):
            fig.add_scatter(x=c["bpp"], y=c["value"], name=label, mode="lines+markers", legendgroup=label,
                            line={"color": color, "dash": ("solid", "dashdot", "dot")[j % 3]},
                            customdata=[f"mean of {n} images" for n in c["n"]], hovertemplate=hover)
            p = per_image[per_image["curve"] == label] if len(per_image) else per_image
            if len(p):
                fig.add_scatter(x=p["bpp"], y=p["value"], name=f"{label}: images", mode="markers",
                                legendgroup=label, showlegend=False, opacity=0.35,
                                marker={"color": color, "size": 5}, customdata=p["image"], hovertemplate=hover)
        v = ceilings[ceilings["model"] == model]["value"]
        if len(v) and math.isfinite(float(v.mean())):
            fig.add_scatter(x=[0, xmax], y=[float(v.mean())] * 2, name=f"{model} VAE ceiling", mode="lines",
                            line={"color": color, "dash": "dash", "width": 1},
                            customdata=["autoencoder round trip"] * 2, hovertemplate=hover)
    for k, (codec, c) in enumerate(base.groupby("codec", sort=True) if len(base) else []):
        fig.add_scatter(x=c["bpp"], y=c["value"], name=str(codec), mode="lines+markers",
                        line={"color": GREYS[k % len(GREYS)], "dash": "dash"}, marker={"symbol": "square"},
                        customdata=[f"quality {q}, mean of {n} images" for q, n in zip(c["quality"], c["n"])],
                        hovertemplate=hover)
    if published is not None:
        pts = matching_points(published, figure_protocol(dataset, ds_rows), metric, None, dataset)
        for (method, protocol), p in pts[pts["bpp"].notna()].groupby(["method", "protocol"]):
            fig.add_scatter(x=p["bpp"], y=p["value"], name=f"{method} [{protocol}]", mode="markers+lines",
                            line={"dash": "dot", "width": 1}, marker={"symbol": "x", "size": 8},
                            customdata=[f"published ({protocol}): {s}" for s in p["source"]], hovertemplate=hover)
    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    n_img = ds_rows.loc[ds_rows["kind"] == "codec", "image"].nunique()
    fig.update_layout(title=f"{dataset}: {unit} vs rate ({n_img} images)", height=420, margin={"t": 50, "r": 10},
                      xaxis_title="rate (bits per pixel, bpp)", yaxis_title=f"{unit} ({better} is better)",
                      template="plotly_white", legend={"font": {"size": 11}})
    return fig


def figures_html(rows: pd.DataFrame, fid: pd.DataFrame, published: pd.DataFrame | None) -> list[str]:
    """The figures' HTML (a div and its plotting call each; plotly.js itself is inlined once)."""
    out = []
    for metric in METRICS:
        for dataset in sorted(rows["dataset"].dropna().unique()):
            fig = rd_figure(rows, fid, dataset, metric, published)
            if fig is not None:
                out.append(fig.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG,
                                       div_id=f"rd-{dataset}-{metric}"))
    return out


# ---- images --------------------------------------------------------------------------------------
def data_uri(path: Path, max_side: int) -> tuple[str, str, int]:
    """(data URI, note, long side in pixels as embedded) of an image file: as it is when the browser shows its format and it fits
    ``max_side``; else decoded (PNG: ``analysis.images.read_png``, others: Pillow), downscaled if
    too large (Lanczos) and written as 8-bit PNG. ``note`` says what was done ('' = nothing)."""
    from PIL import Image

    ext = path.suffix.lstrip(".").lower()
    img = Image.fromarray(to_8bit(read_png(path))) if ext == "png" else Image.open(path)
    note = ""
    if max(img.size) > max_side:
        note = f"downscaled from {img.size[0]}x{img.size[1]}"
        scale = max_side / max(img.size)
        img = img.convert("RGB").resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                                        Image.Resampling.LANCZOS)
    elif ext in BROWSER_FORMATS and not (ext == "png" and img.mode not in ("RGB", "RGBA", "L")):
        return f"data:{MIME[ext]};base64,{base64.b64encode(path.read_bytes()).decode()}", note, max(img.size)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG", optimize=True)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}", note, max(img.size)


def to_8bit(a: np.ndarray) -> np.ndarray:
    """``read_png``'s array as uint8 (16-bit PNGs come back as float in [0, 1])."""
    return a if a.dtype == np.uint8 else np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over 0..n-1, both ends included (all of them when n <= k)."""
    return list(range(n)) if n <= k else sorted({round(i * (n - 1) / (k - 1)) for i in range(k)} if k > 1 else {n - 1})


def browser_data(rows: pd.DataFrame, jobs: list[Job], images: list[str] | None, max_images: int,
                 max_side: int, max_points: int) -> dict[str, Any]:
    """{dataset: {image: {original, note, series: [{name, kind, points: [{bpp, label, src, metrics}]}]}}}
    from the PNGs of the jobs (and their kept classic-codec files)."""
    metrics = [m for m in PER_IMAGE_METRICS if rows[m].notna().any()]
    out: dict[str, Any] = {}
    for dataset, ds in rows.groupby("dataset"):
        ids = sorted(ds["image"].unique())
        chosen = [i for i in ids if i in images] if images else ids[:max_images]
        for image_id in chosen:
            entry = image_entry(ds[ds["image"] == image_id], jobs, image_id, metrics, max_side, max_points)
            if entry is not None:
                out.setdefault(str(dataset), {})[str(image_id)] = entry
    return out


def image_entry(img_rows: pd.DataFrame, jobs: list[Job], image_id: str, metrics: list[str], max_side: int,
                max_points: int) -> dict[str, Any] | None:
    """The browser's entry of one image (None: no job kept its PNGs)."""
    original = next((j.path / RECON / image_id / f"{ORIGINAL}.png" for j in jobs
                     if (j.path / RECON / image_id / f"{ORIGINAL}.png").exists()), None)
    if original is None:
        return None
    src, note, side = data_uri(original, max_side)
    series: list[dict[str, Any]] = []
    codec = img_rows[img_rows["kind"] == "codec"].copy()
    codec["curve"] = curve_label(codec.assign(codec=codec["codec"].fillna(DIFFC)))
    for label, c in codec.sort_values("bpp").groupby("curve", sort=True):
        files = [(r, jobs[int(r["job"])].path / RECON / image_id / f"{row_label(r)}.png") for _, r in c.iterrows()]
        series.append(series_entry(str(label), "codec", kept(files), metrics, max_side, max_points))
    for model, v in img_rows[img_rows["kind"] == "vae"].groupby("model"):
        files = [(r, jobs[int(r["job"])].path / RECON / image_id / "vae.png") for _, r in v.iterrows()]
        series.append(series_entry(f"{model} VAE", "vae", kept(files)[:1], metrics, max_side, 1))
    for name, b in img_rows[img_rows["kind"] == "baseline"].sort_values("bpp").groupby("codec", sort=True):
        files = []
        for _, r in b.iterrows():
            folder = jobs[int(r["job"])].path / BASELINES / image_id
            found = sorted(folder.glob(f"{name}-q{int(r['quality'])}.*")) if folder.is_dir() else []
            files.append((r, found[0] if found else folder / f"{name}-q{int(r['quality'])}"))
        series.append(series_entry(str(name), "baseline", kept(files), metrics, max_side, max_points))
    return {"original": src, "note": note, "side": side, "series": [s for s in series if s["points"]]}


def kept(files: list[tuple[pd.Series, Path]]) -> list[tuple[pd.Series, Path]]:
    """The (row, file) pairs whose file exists, one per file name (the first job's, when several
    jobs of the report hold the same point)."""
    out: dict[str, tuple[pd.Series, Path]] = {}
    for r, path in files:
        if path.exists():
            out.setdefault(path.name, (r, path))
    return list(out.values())


def series_entry(name: str, kind: str, files: list[tuple[pd.Series, Path]], metrics: list[str], max_side: int,
                 max_points: int) -> dict[str, Any]:
    """One browser series: at most ``max_points`` of its files, spread over its rates."""
    points = []
    for i in spread(len(files), max_points):
        r, path = files[i]
        src, note, _ = data_uri(path, max_side)
        label = f"q{int(r['quality'])}" if kind == "baseline" else path.stem
        points.append({"bpp": None if pd.isna(r["bpp"]) else float(r["bpp"]), "label": label, "src": src,
                       "note": note, "metrics": {m: finite(r[m]) for m in metrics}})
    return {"name": name, "kind": kind, "points": points}


def finite(v: Any) -> float | str | None:
    """A metric value for JSON: None for NaN, 'inf' for infinity."""
    if v is None or pd.isna(v):
        return None
    return "inf" if math.isinf(float(v)) else float(v)


# ---- tables and provenance -------------------------------------------------------------------------
def table_html(df: pd.DataFrame, caption: str = "") -> str:
    """A sortable table (click a header; floats to 4 significant digits)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                cells.append('<td data-v="">nan</td>')
            elif isinstance(v, (float, np.floating)):  # data-v: what JavaScript's parseFloat reads back
                key = repr(float(v)) if math.isfinite(v) else ("Infinity" if v > 0 else "-Infinity")
                cells.append(f'<td data-v="{key}">{float(v):.4g}</td>')
            elif isinstance(v, (int, np.integer)):
                cells.append(f'<td data-v="{int(v)}">{int(v)}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<table class="sortable">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


IMAGE_COLUMNS = ["model", "kind", "codec", "protocol", "recon_timestep", "quality", "bpp", "kl_bits",
                 *PER_IMAGE_METRICS, "encode_s", "decode_s", "config_hash"]


def per_image_html(rows: pd.DataFrame) -> str:
    """One sortable table per dataset and image (collapsed), columns with data only."""
    parts = []
    for (dataset, image_id), g in rows.sort_values(["dataset", "image", "kind", "model", "bpp"]).groupby(
            ["dataset", "image"], sort=True):
        cols = [c for c in IMAGE_COLUMNS if g[c].notna().any()]
        parts.append(f"<details><summary>{html.escape(str(dataset))} / {html.escape(str(image_id))} "
                     f"({len(g)} rows)</summary>{table_html(g[cols])}</details>")
    return "\n".join(parts)


def provenance_html(jobs: list[Job], rows: pd.DataFrame) -> str:
    """Per job: where, what (model, dataset, protocol, hash), the run's provenance and its config."""
    table = []
    for j in jobs:
        run = j.done.get("provenance", {})
        r = rows[rows["job"] == j.index]
        table.append({"job": j.path.name, "model": j.info.get("model"), "dataset": j.info.get("dataset"),
                      "protocol": j.info.get("protocol"), "config_hash": j.info.get("config_hash"),
                      "images": r["image"].nunique(), "rows": len(r), "finished": j.done.get("finished", "-"),
                      "git": run.get("git", "-"), "host": run.get("host", "-"), "platform": run.get("platform", "-"),
                      "cpus": run.get("cpus", "-"), "device": run.get("device", "-"), "torch": run.get("torch", "-"),
                      "job_wall_s": run.get("wall_s", math.nan),
                      "encode_s_per_image": float(r.loc[r["kind"] == "codec"].groupby("image")["encode_s"].first().mean())
                      if (r["kind"] == "codec").any() else math.nan})
    configs = "".join(f"<details><summary>{html.escape(j.path.name)}: resolved config (job.yaml)</summary>"
                      f"<pre>{html.escape(j.config)}</pre></details>" for j in jobs)
    return table_html(pd.DataFrame(table)) + configs


# ---- the page ------------------------------------------------------------------------------------
def render(rows: pd.DataFrame, fid: pd.DataFrame, jobs: list[Job], results: list[Path], anchor: str | None,
           method: str, min_overlap: float, published: pd.DataFrame | None, images: list[str] | None,
           max_images: int, max_side: int, max_points: int) -> tuple[str, dict[str, int]]:
    """The HTML page and its counts (figures, images in the browser, embedded pictures)."""
    from plotly.offline import get_plotlyjs

    figures = figures_html(rows, fid, published)
    bd = bd_display(bd_table(rows.drop(columns="job"), anchor, method, min_overlap))
    points = points_table(rows.drop(columns="job"))
    points = points.loc[:, points.notna().any()]  # metrics no row has (not requested) stay out
    browser = browser_data(rows, jobs, images, max_images, max_side, max_points)
    n_pictures = sum(1 + sum(len(s["points"]) for s in e["series"]) for ds in browser.values() for e in ds.values())
    meta = (f"results: {html.escape(', '.join(map(str, results)))} &middot; {len(jobs)} jobs, {len(rows)} rows "
            f"&middot; report written {time.strftime('%Y-%m-%d %H:%M:%S')} on {html.escape(machine()['host'])} "
            f"by git {git_revision()}")
    no_images = ("" if browser else "<p class=note>No reconstructions were saved by these sweeps "
                 "(run them with <code>save.recon_png=true</code>, and <code>save.baselines=true</code> "
                 "for the classic codecs' files).</p>")
    page = (TEMPLATES / "report.html").read_text().format(
        title="DiffC sweep report", meta=meta, plotly=get_plotlyjs(),
        figures="\n".join(f'<div class="fig">{f}</div>' for f in figures) or "<p>(no finite metric values)</p>",
        bd_note=f"BD-rate of every curve against the anchor per dataset and metric ({method} interpolation; "
                f"negative = fewer bits for the same quality). overlap = share of the quality range both curves "
                f"cover; below min_overlap={min_overlap:g} the value is indicative only (analysis.report).",
        bd=table_html(bd), points=table_html(points), per_image=per_image_html(rows),
        provenance=provenance_html(jobs, rows), no_images=no_images,
        cap=f"at most {max_images} images per dataset, {max_points} rate points per curve, long side "
            f"{max_side} px (larger images downscaled)",
        data=json.dumps(browser).replace("</", "<\\/"), script=(TEMPLATES / "report.js").read_text(),
        style=(TEMPLATES / "report.css").read_text())
    return page, {"figures": len(figures), "images": sum(map(len, browser.values())), "pictures": n_pictures}


@one_line_errors(OSError)
def report_html(cfg: DictConfig) -> Path:
    """The command: write the report of ``cfg.results`` (one or several results directories)."""
    cli.require(cfg, "results")
    results = [Path(r) for r in cli.as_list(cfg.results) or []]
    if not results:
        raise UsageError("results must name at least one results directory")
    if cfg.method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    for key in ("max_images", "max_side", "max_points"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"{key} must be a positive integer, got {v!r}")
    rows, fid, jobs = load_jobs(results)
    published = load_published() if cfg.reference_points else None
    page, counts = render(rows, fid, jobs, results, cfg.anchor or None, str(cfg.method), float(cfg.min_overlap),
                          published, cli.as_list(cfg.images), int(cfg.max_images), int(cfg.max_side),
                          int(cfg.max_points))
    out = Path(cfg.out) if cfg.out else results[0] / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)  # atomic: never a partial report
    print(f"{out}: {counts['figures']} figures, {counts['images']} images in the browser "
          f"({counts['pictures']} pictures embedded), {out.stat().st_size / 2**20:.1f} MiB, self-contained")
    return out


if __name__ == "__main__":
    cli.main(report_html, "report_html", verbatim=("out",), lists=("results", "images"),
             config_dir=cli.ANALYSIS_CONF_DIR)
