"""Sweep job: one model x one dataset, every rate point from one progressive encode per image.

    python -m pipelines.evaluate [-m] model=gaussian dataset=kodak-small bitrate=quick metrics=offline

Per image: encode ONCE with all stop timesteps (progressive bitstream), write each rate point's
real .diffc bytes (bpp = file size x 8 / pixels), decode them (checking the decoder's x_t equals
the encoder's), reconstruct and score; plus one VAE round-trip row (kind='vae': the ceiling of
the backbone's autoencoder). Output, in the job directory (named by its config, ``job_dir_name``):

- ``shards/IMAGE.HASH.parquet``: the rows of one image (written atomically; HASH = config hash),
- ``job.json`` (identity: config hash, model, dataset) and ``job.yaml`` (resolved config),
- ``results.parquet``: every row of the job (the shards, concatenated), written when it completes;
- ``fid.parquet``: dataset-level FID/KID on patches per rate point (when ``metrics.fid``),
- ``recon/IMAGE/LABEL.png`` (``save.recon_png``, or FID/KID): each rate point's reconstruction and,
  as LABEL ``original``, the image as coded (``analysis.images``: the figures read it from here),
- ``done.json``: the done marker; a rerun of a done job returns at once, an interrupted job
  redoes only the images without a shard (temp files a killed write left are deleted);
- ``failed.json``: the one-line reason a job of a multirun failed (the sweep goes on with its
  other jobs and exits non-zero); removed when the job runs again.

Columns, file names and the metric list: ``analysis.schema``; the PNGs' names: ``analysis.images``
(the contract with the analysis, which reads these directories without importing this module).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from analysis import cli
from analysis.errors import one_line
from analysis.images import ORIGINAL, encode_png, point_label, recon_png, row_label
from analysis.provenance import git_revision, machine
from analysis.schema import (DONE, FAILED, FID_COLUMNS, FID_FILE, JOB_JSON, JOB_YAML, PER_IMAGE_METRICS, RESULTS,
                             SHARDS, frame)
from diffc.determinism import DESYNC_PSNR_DB, desynchronised
from diffc.device import resolve_device

from . import baselines as classic
from .common import (CONF_DIR, EXPECTED_ERRORS, PipelineError, atomic_write, build_codec, check_writable,
                     one_line_errors, plain, png_bytes)
from .captions import resolve_caption
from .datasets import DatasetError, as_uint8, dataset_archives, load_dataset, to_tensor, to_uint8
from .metrics import MetricSet, fid_kid, format_reasons, ms_ssim_scales
from .target import QualitySearch, Request, quality_scorer, request

if TYPE_CHECKING:
    from diffc.codec import EncodeResult, RatePoint

log = logging.getLogger(__name__)

#: config keys that do not change the results (left out of the config hash)
VOLATILE_KEYS = ("root", "name", "progress", "save", "hydra", "dry_run", "debug")
#: where weights live, not what they are (the hub id and revision name them): left out of job
#: directory names and config hashes, so moving the weights does not restart a sweep
LOCATION_KEYS = ("model.options.path", "model.options.refiner_path", "model.options.vae_path",
                 "captioner.options.path")
#: longest readable part of a job directory name (the hash keeps longer names apart)
SLUG_CHARS = 80


def job_dirname(slug: str, chash: str) -> str:
    """A job's directory name: a readable ``slug`` and the first 8 hex digits of its config hash.

    The slug writes ``k=v`` as ``k-v``, ``,`` as ``__`` and every other character outside
    ``[A-Za-z0-9._-]`` as ``_``, so a name is one flat, safe path component: never a path taken from
    a value, and no ``=`` that hive-partitioning readers (duckdb) would parse as a column. It is cut
    to :data:`SLUG_CHARS`; the hash keeps jobs whose slugs sanitise alike apart. ``defaults-HASH``
    when the slug is empty.
    """
    slug = slug.replace("=", "-").replace(",", "__")
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", slug)[:SLUG_CHARS].strip("._-") or "defaults"
    return f"{slug}-{chash[:8]}"


def _composed(overrides: tuple[str, ...]) -> DictConfig:
    """conf/config.yaml composed with ``overrides`` (inside the running Hydra app), hydra node
    included; once per process and group choices (a plain dict: launchers pickle this module)."""
    from hydra import compose

    if overrides not in _COMPOSED:
        _COMPOSED[overrides] = compose("config", overrides=list(overrides), return_hydra_config=True)
    return _COMPOSED[overrides]


_COMPOSED: dict[tuple[str, ...], DictConfig] = {}


def job_slug(root: DictConfig) -> str:
    """What sets a job apart from conf/config.yaml's defaults, as ``k=v,k2=v2`` (groups first, each
    part sorted: the most telling come before the name is cut to :data:`SLUG_CHARS`), whatever
    the command line's spelling: the config groups whose choice is not the default one
    (``model=sd15``; ``baselines=jpeg.webp`` when any), and the keys given on the command line whose
    value differs from the one those choices give (``codec.channel.chunk_bits=12``; ``model=gaussian`` or
    ``codec.channel.chunk_bits=null`` spelled out add nothing). Keys of conf/config.yaml's ``exclude_keys``
    (:data:`VOLATILE_KEYS`, :data:`LOCATION_KEYS`) never count. ``root``: the job's config with
    its hydra node (as Hydra resolves ``hydra.run.dir``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hc = root.hydra
    excluded = set(hc.job.config.override_dirname.exclude_keys)
    # the groups a user picks are top-level (model, codec, ...); nested ones follow from them (hydra/*,
    # the codec's schema, profile and tune files: pipelines/codec_config.py)
    choices = {g: c for g, c in hc.runtime.choices.items() if "/" not in g and g not in excluded}
    parsed = OverridesParser.create().parse_overrides(list(hc.overrides.task))
    is_group = [o.key_or_group in choices or o.key_or_group in ("baselines", "experiment") for o in parsed]
    groups = [o for o, g in zip(parsed, is_group) if g]
    keys = [o for o, g in zip(parsed, is_group) if not g and o.key_or_group not in excluded]
    parts, keyed = [], []
    try:
        default = _composed(()).hydra.runtime.choices
        base = _composed(tuple(o.input_line for o in groups))
    except Exception:  # outside a running Hydra app (no config search path): every key as given
        default, base = {}, None
    parts += sorted(f"{g}={c}" for g, c in choices.items() if c is not None and default.get(g) != c)
    if root.get("baselines"):
        parts.append(f"baselines={'.'.join(sorted(root.baselines))}")
    for o in keys:
        value = OmegaConf.select(root, o.key_or_group, default=None)
        if base is None or value != OmegaConf.select(base, o.key_or_group, default=None):
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
            text = ".".join(map(str, value)) if isinstance(value, list) else value
            keyed.append(f"{o.key_or_group}={text}")
    return ",".join(parts + sorted(keyed))


def job_dir_name(*, _root_: DictConfig) -> str:
    """``${job_dir:}`` in conf/config.yaml: the job's directory name, ``job_dirname`` of its
    ``job_slug`` and config hash: jobs of one config share one directory, however spelled."""
    task = OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"])
    return job_dirname(job_slug(_root_), config_hash(task))


OmegaConf.register_new_resolver("job_dir", job_dir_name, replace=True)


# ---- configuration ------------------------------------------------------------------------------
def config_hash(cfg: DictConfig) -> str:
    """12 hex digits identifying everything that changes the rows of a job (not the
    :data:`LOCATION_KEYS`: the weights' location)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for key in VOLATILE_KEYS:
        data.pop(key, None)
    for dotted in LOCATION_KEYS:
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    data.pop("parity", None)  # its effect is in the resolved model values
    if data.get("caption") != "auto":
        data.pop("captioner", None)  # used only by caption=auto
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def protocol_name(cfg: DictConfig) -> str:
    """The job's evaluation protocol (conf/protocol; ``native`` for a config without one)."""
    return str(OmegaConf.select(cfg, "protocol.name", default="native"))


# ---- files --------------------------------------------------------------------------------------
def write_table(df: pd.DataFrame, path: Path) -> None:
    """Atomically write a parquet table."""
    buf = BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write(path, buf.getvalue())


def saves_pngs(cfg: DictConfig) -> bool:
    """Whether a job keeps PNGs in ``recon/`` (``analysis.images``): asked for (``save.recon_png``)
    or needed (FID/KID read the reconstructions back)."""
    return bool(cfg.save.recon_png) or bool(cfg.metrics.get("fid", False))


def verify_threshold(value: Any) -> float | None:
    """``verify_decode``: a minimum drift PSNR in dB (true = the default DESYNC_PSNR_DB; false or
    null = no check). Only desynchronisation fails an image, never rounding drift."""
    if value is None or value is False:
        return None
    if value is True:
        return DESYNC_PSNR_DB
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PipelineError(f"verify_decode must be a number of dB, true or false, got {value!r}") from None


# ---- one image ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Chosen:
    """A row's rate point: the stop timestep that asked for it (``recon_timestep``), the point (None:
    no point meets the target, ``reason`` says why) and the target it meets (bpp or quality)."""

    requested: int | None
    point: RatePoint | None
    target_bpp: float = math.nan
    target_metric: str | None = None
    target_quality: float = math.nan
    reason: str = ""

    @property
    def label(self) -> str:
        """The point's file stem (``analysis.images.point_label``)."""
        return point_label(self.requested, self.target_bpp, self.target_metric, self.target_quality)


class Job:
    """The state of one job: config, backbone + codec, metrics, output directory."""

    def __init__(self, cfg: DictConfig, job_dir: Path):
        self.cfg = cfg
        self.job_dir = job_dir
        self.hash = config_hash(cfg)
        self.request = request(cfg.bitrate)
        self.device = resolve_device(cfg.device)
        self.save_png = saves_pngs(cfg)
        self.min_drift_db = verify_threshold(cfg.verify_decode)
        # a quality target's metric, loaded before the first image (one line when it cannot be) and
        # shared with the job's metrics (one model on the device when it is one of them too)
        self.quality = quality_scorer(self.request.metric, self.device) if self.request.metric else None
        try:
            self.metrics = MetricSet(list(cfg.metrics.names), self.device,
                                     loaded={self.request.metric: self.quality} if self.quality else None)
        except ValueError as exc:
            raise PipelineError(str(exc)) from exc
        self.codec = build_codec(cfg, deterministic=cfg.deterministic)
        self.baselines = classic.from_config(cfg.get("baselines"))  # classic codecs (pipelines.baselines)
        try:  # refused before the first image; the encodes convert their own request
            steps = self.codec.stop_steps(self.request.rate)
        except ValueError as exc:
            raise PipelineError(f"bitrate: {exc}") from exc
        #: coded steps -> the stop timestep that asked for them (the lowest, as rows name a point)
        self.requested = {k: t for t, k in steps.items()}

    def caption(self, img: np.ndarray) -> str | None:
        """The prompt of this image (``pipelines.captions.resolve_caption``: ``caption=auto`` a
        cached BLIP-2 caption, none/null none, any other text verbatim); None = unconditional."""
        return resolve_caption(self.cfg.get("caption"), img, self.cfg.get("captioner")) or None

    def base_row(self, image_id: str, img: np.ndarray) -> dict[str, Any]:
        h, w = img.shape[:2]
        return {"model": self.cfg.model.name, "dataset": self.cfg.dataset.name,
                "protocol": protocol_name(self.cfg), "image": image_id,
                "config_hash": self.hash, "width": w, "height": h, "ms_ssim_scales": ms_ssim_scales(h, w)}

    def score(self, row: dict[str, Any], ref: np.ndarray, rec: np.ndarray | None) -> dict[str, Any]:
        if rec is None:
            values, reasons = {}, {}
        else:
            values, reasons = self.metrics.compute(ref, rec)
        row.update({m: values.get(m, math.nan) for m in PER_IMAGE_METRICS})
        # every NaN metric cell gets its reason, 'not requested' included (never a silent NaN)
        row["metric_errors"] = format_reasons(reasons, PER_IMAGE_METRICS)
        return row

    def save(self, image_id: str, label: str, png: np.ndarray | None, data: bytes | None) -> None:
        if png is not None and self.save_png:
            atomic_write(recon_png(self.job_dir, image_id, label), png_bytes(png))
        if data is not None and self.cfg.save.diffc:
            atomic_write(self.job_dir / "diffc" / image_id / f"{label}.diffc", data)

    def chosen(self, res: EncodeResult, img: np.ndarray, caption: str | None) -> list[Chosen]:
        """The rows' rate points of one encode, per key of the request (``pipelines.target``): each
        stop timestep's point, per bpp budget the encoder's pick (``EncodeResult.by_target``), or per
        quality target the smallest point whose decoder's reconstruction reaches it (a bisection:
        ``QualitySearch``); None with the reason when no point meets a target."""
        req = self.request
        asked = lambda p: None if p is None else self.requested[p.step_index]
        if req.metric is None and not req.rate.bpp:
            return [Chosen(t, p) for t, p in res.by_target.items()]
        if req.metric is None:
            return [Chosen(asked(p), p, bpp, reason="" if p else f"no rate point at or below {bpp:g} bpp")
                    for bpp, p in res.by_target.items()]
        search = QualitySearch(self.codec, res.points, req.metric, self.quality, img, caption)
        out = []
        for target in req.quality:
            found = search.reach(target)
            p = None if found.index is None else res.points[found.index]
            out.append(Chosen(asked(p), p, target_metric=req.metric, target_quality=target,
                              reason="" if p else search.unreachable(target, found)))
        return out

    def image_rows(self, image_id: str, img: np.ndarray) -> list[dict[str, Any]]:
        """Encode once, decode every rate point in one chain pass, score; and the VAE round trip.

        The decoder reads the file of the highest rate point and yields the x_t of every lower one
        on the way (``DiffcCodec.decode_prefixes``: a prefix of the progressive stream is the lower
        point's file, bit for bit); each is checked against the encoder's x_t (drift columns)."""
        x, img = to_tensor(img), as_uint8(img)  # the codec codes the file's precision; scores see 8 bits
        pixels = img.shape[0] * img.shape[1]
        caption = self.caption(img)
        res = self.codec.encode(x, self.request.rate, caption=caption, progress=False)
        chosen = self.chosen(res, img, caption)
        points = [c.point for c in chosen if c.point is not None]
        decoded = {}
        if points:  # what a receiver gets: the decoder's images are scored
            last = max(points, key=lambda p: p.step_index)
            decoded = {out.header.n_steps: out for out in
                       self.codec.decode_prefixes(last.data, [p.step_index for p in points])}
            warning = next(iter(decoded.values())).drift_warning
            if warning:  # the provenance line: what differs from the encoder's setting (README "Decode anywhere")
                log.warning("%s: %s", image_id, warning)
        rows = []
        for c in chosen:
            point = c.point
            row = self.base_row(image_id, img) | {"kind": "codec", "codec": self.codec.params.channel.name,
                                                   "target_bpp": c.target_bpp, "target_metric": c.target_metric,
                                                   "target_quality": c.target_quality, "encode_s": res.encode_s,
                                                   "encode_cpu_s": res.encode_cpu_s, "caption": caption}
            if point is None:
                self.score(row, img, None)
                row["metric_errors"] = c.reason
                rows.append(row)
                continue
            out = decoded[point.step_index]
            xt_max, drift_db = self.codec.drift(point, out)
            if self.min_drift_db is not None and desynchronised(drift_db, self.min_drift_db):
                raise PipelineError(f"{image_id} t={point.timestep}: the decoder desynchronised (drift PSNR "
                                    f"{drift_db:.1f} dB < verify_decode={self.min_drift_db:g} dB)")
            rec = to_uint8(out.image)
            row |= {"recon_timestep": c.requested, "step_index": point.step_index, "timestep": point.timestep,
                    "bpp": len(point.data) * 8 / pixels, "bits_total": point.bits_total,
                    "bits_payload": point.bits_payload, "bits_side": point.bits_side,
                    "bits_header": point.bits_header, "kl_bits": point.kl_bits,
                    "delivered_bits": point.delivered_bits, "decode_s": out.decode_s, "decode_cpu_s": out.decode_cpu_s,
                    "drift_xt_max": xt_max, "drift_psnr_db": drift_db}
            self.save(image_id, c.label, rec, point.data)
            rows.append(self.score(row, img, rec))
        t0, c0 = time.perf_counter(), time.process_time()
        vae = to_uint8(self.codec.vae_roundtrip(x))
        row = self.base_row(image_id, img) | {"kind": "vae", "codec": "vae", "target_bpp": math.nan,
                                               "decode_s": time.perf_counter() - t0,
                                               "decode_cpu_s": time.process_time() - c0}
        self.save(image_id, "vae", vae, None)
        rows.append(self.score(row, img, vae))
        keep = self.job_dir / "baselines" / image_id if self.cfg.save.get("baselines", False) else None
        return rows + classic.baseline_rows(self.baselines, img, self.base_row(image_id, img), self.score, keep)


# ---- the job ------------------------------------------------------------------------------------
def shard_path(job_dir: Path, image_id: str, chash: str) -> Path:
    return job_dir / SHARDS / f"{image_id}.{chash}.parquet"


def dataset_fid(cfg: DictConfig, job_dir: Path, data: list[tuple[str, np.ndarray]],
                rows: pd.DataFrame) -> pd.DataFrame:
    """FID/KID per rate point (and for the VAE) from the reconstructions saved in ``job_dir``."""
    refs = [as_uint8(img) for _, img in data]
    out = []
    rows = rows[rows["kind"] != "baseline"]  # no FID/KID for the classic codecs (yet)
    keys = ["kind", "recon_timestep", "target_bpp", "target_metric", "target_quality"]
    for (kind, t, target, metric, quality), grp in rows.groupby(keys, dropna=False):
        label = row_label({"recon_timestep": t, "target_bpp": target, "target_metric": metric, "target_quality": quality})
        pngs = [recon_png(job_dir, i, label) for i in grp["image"]]
        if not all(p.exists() for p in pngs):
            res_fid, res_kid, n, reason = math.nan, math.nan, 0, "reconstructions missing"
        else:
            recs = [np.asarray(Image.open(p).convert("RGB")) for p in pngs]
            r = fid_kid(refs, recs, patch=int(cfg.metrics.fid_patch), device=resolve_device(cfg.device))
            res_fid, res_kid, n, reason = r.fid, r.kid, r.n_patches, r.reason
        out.append({"model": cfg.model.name, "dataset": cfg.dataset.name, "protocol": protocol_name(cfg), "kind": kind,
                    "recon_timestep": t, "target_bpp": target, "target_metric": metric, "target_quality": quality,
                    "bpp_mean": grp["bpp"].mean(),
                    "fid": res_fid, "kid": res_kid, "n_patches": n, "reason": reason,
                    "config_hash": config_hash(cfg)})
    df = pd.DataFrame(out, columns=list(FID_COLUMNS))
    df["recon_timestep"] = df["recon_timestep"].astype("Int64")
    return df


def remove_stale_temps(job_dir: Path) -> int:
    """Delete the temp files that a killed run left behind (``atomic_write``'s ``.NAME.tmp-PID``)
    anywhere in the job dir; returns how many. Only one process works in a job dir at a time."""
    stale = [p for p in job_dir.rglob(".*.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def describe_job(cfg: DictConfig, job_dir: Path) -> str:
    """One line naming a job (what ``dry_run=true`` prints instead of running it)."""
    req = request(cfg.bitrate)
    targets = req.targets()
    points = "every-step" if targets is None else list(targets)
    done = job_dir / DONE
    state = "done" if done.exists() and json.loads(done.read_text()).get("config_hash") == config_hash(cfg) else "todo"
    if state == "todo" and (job_dir / FAILED).exists():
        state = "failed-before"
    codec = cfg.codec.channel.name
    baselines = sorted(cfg.get("baselines") or [])
    archives = "".join(f" archive={a.fname}:sha256={a.sha256}:bytes={a.size}"
                       for a in dataset_archives(cfg.dataset.name, **plain(cfg.dataset.get("options"))))
    return (f"job model={cfg.model.name} codec={codec} baselines={baselines} dataset={cfg.dataset.name} "
            f"protocol={protocol_name(cfg)}{archives} {target_key(req)}={points} "
            f"metrics={list(cfg.metrics.names)} fid={bool(cfg.metrics.get('fid', False))} "
            f"config_hash={config_hash(cfg)} state={state} dir={job_dir}")


def target_key(req: Request) -> str:
    """What a dry run calls the request's points: stop_timesteps, target_bpp or target_METRIC."""
    return "stop_timesteps" if req.kind == "stop_timesteps" else f"target_{req.kind}"


def run_job(cfg: DictConfig, job_dir: Path) -> Path:
    """Run (or resume, or skip when done) one job in ``job_dir``; returns ``job_dir``.

    One process at a time per job: the job holds ``job_dir/job.lock`` (an OS file lock, released
    when its process ends, however it ends); a second process on the same job is refused in one line.
    """
    from filelock import FileLock, Timeout

    check_writable(job_dir, directory=True, what="job directory")
    job_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(job_dir / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise JobBusy(f"job {job_dir} is being run by another process (it holds {job_dir / LOCK}); "
                      "wait for it, or stop it first") from None
    try:
        return _run_job_locked(cfg, job_dir)
    finally:
        lock.release()


def run_provenance(cfg: DictConfig, wall_s: float) -> dict[str, Any]:
    """What done.json records of the run (analysis.report_html shows it): git revision, machine,
    device, torch version, the job's wall-clock seconds."""
    import torch

    return {"git": git_revision(), **machine(), "device": str(resolve_device(cfg.device)),
            "torch": torch.__version__, "wall_s": round(wall_s, 3)}


def _run_job_locked(cfg: DictConfig, job_dir: Path) -> Path:
    t0 = time.perf_counter()
    (job_dir / FAILED).unlink(missing_ok=True)
    chash = config_hash(cfg)
    done = job_dir / DONE
    if done.exists() and json.loads(done.read_text()).get("config_hash") == chash:
        log.info("job %s already done (config %s)", job_dir, chash)
        return job_dir
    (job_dir / RESULTS).unlink(missing_ok=True)  # only ever the complete table of the current config
    try:
        data = load_dataset(cfg.dataset.name, protocol_name(cfg), **plain(cfg.dataset.get("options")))
    except DatasetError as exc:
        raise PipelineError(str(exc)) from exc
    ids = [i for i, _ in data]
    if len(set(ids)) != len(ids):
        raise PipelineError(f"dataset {cfg.dataset.name}: duplicate image ids")
    atomic_write(job_dir / JOB_YAML, OmegaConf.to_yaml(cfg, resolve=True).encode())
    atomic_write(job_dir / JOB_JSON, json.dumps({"config_hash": chash, "model": cfg.model.name,
                                                 "dataset": cfg.dataset.name, "protocol": protocol_name(cfg)}).encode())
    remove_stale_temps(job_dir)
    if saves_pngs(cfg):  # each image as coded, beside its reconstructions (analysis.visual_comparison)
        for image_id, img in data:
            if not (original := recon_png(job_dir, image_id, ORIGINAL)).exists():
                atomic_write(original, encode_png(img))
    todo = [(i, img) for i, img in data if not shard_path(job_dir, i, chash).exists()]
    job = Job(cfg, job_dir) if todo else None
    for image_id, img in tqdm(todo, desc=f"{cfg.model.name}/{cfg.dataset.name}", unit="img",
                              disable=not cfg.progress, file=sys.stderr):
        write_table(frame(job.image_rows(image_id, img)), shard_path(job_dir, image_id, chash))
    rows = pd.concat([pd.read_parquet(shard_path(job_dir, i, chash)) for i in ids], ignore_index=True)
    write_table(rows, job_dir / RESULTS)
    if cfg.metrics.get("fid", False):
        write_table(dataset_fid(cfg, job_dir, data, rows), job_dir / FID_FILE)
    atomic_write(done, json.dumps({"config_hash": chash, "images": len(ids), "rows": len(rows),
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "provenance": run_provenance(cfg, time.perf_counter() - t0)}).encode())
    log.info("job %s done: %d images, %d rows", job_dir, len(ids), len(rows))
    return job_dir


class JobBusy(PipelineError):
    """Another process holds the job's lock (its dir is not this process's to write in)."""


class JobFailed(CompactHydraException):
    """A job of a multirun failed (its one-line reason was printed and saved in the job dir's
    failed.json). Raised instead of exiting so that Hydra marks this job failed, runs the other
    jobs of the sweep, and then exits non-zero printing just this line."""


def record_failure(cfg: DictConfig, job_dir: Path, message: str) -> None:
    """Write ``failed.json`` (the one-line reason) in the job dir Hydra made, so that a job that failed
    before its first image, too, says why where its results would be (a dry run writes nothing)."""
    if cfg.get("dry_run", False) or not job_dir.is_dir():
        return
    try:
        chash = config_hash(cfg)
    except Exception:  # a config that cannot resolve (the reason of the failure, maybe)
        chash = None
    with contextlib.suppress(OSError):
        atomic_write(job_dir / FAILED, json.dumps({"error": message, "config_hash": chash,
                                                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())


def _fail_job(cfg: DictConfig, job_dir: Path, exc: BaseException) -> JobFailed:
    message = one_line(exc, EXPECTED_ERRORS)
    print(f"error: job {job_dir.name}: {message}", file=sys.stderr, flush=True)
    if not isinstance(exc, JobBusy):
        record_failure(cfg, job_dir, message)
    return JobFailed(f"error: job {job_dir.name} failed (others may have too: see failed.json in their dirs)")


def exit_with_the_sweep() -> None:
    """In a launcher's worker process (joblib's loky workers, submitit_local's jobs: direct children
    of the sweep's process, which sets :data:`SWEEP_PID_ENV`), exit as soon as the sweep's process is
    gone (``kill -9`` of the sweep): an orphaned worker would go on computing and write results
    behind a restarted sweep's back. Polls the parent pid every 0.5 s from a daemon thread, once
    per process; no-op in the sweep's own process and on other machines (SLURM jobs)."""
    global _WATCHING
    sweep = int(os.environ.get(SWEEP_PID_ENV) or 0)
    if _WATCHING or not sweep or os.getpid() == sweep or os.getppid() != sweep:
        return

    def watch() -> None:
        while os.getppid() == sweep:
            time.sleep(0.5)
        os._exit(3)  # writes are atomic: nothing partial is left; the restarted job redoes this image

    threading.Thread(target=watch, name="diffc-exit-with-sweep", daemon=True).start()
    _WATCHING = True


def job_threads(launcher: Any, cores: int, env: dict[str, str]) -> int | None:
    """Torch intra-op threads of one job of a multirun, so that the jobs running at once times
    their threads stay within the cores (a job per core, each with every core's threads, makes
    every parallel region wait for time slices: issue 24 measured 12-40x slower encodes).

    ``launcher``: the multirun's ``hydra.launcher`` config (its ``_target_`` names it). joblib:
    ``n_jobs`` jobs at once (negative = cores + 1 + n_jobs, joblib's rule), each with
    max(1, cores // jobs) threads; submitit_local starts every job of the sweep at once: its
    ``cpus_per_task`` when set, else 1; submitit_slurm: the job's ``SLURM_CPUS_PER_TASK`` (its
    allocation). None = leave torch's default (the basic launcher runs jobs one after another;
    Ray sets its workers' threads from their ``num_cpus``)."""
    target = str((launcher or {}).get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        n = int(launcher.get("n_jobs") or -1)
        jobs = cores + 1 + n if n < 0 else n
    elif target.endswith("LocalLauncher"):
        return int(launcher.get("cpus_per_task") or 1)
    elif target.endswith("SlurmLauncher"):
        cpus = env.get("SLURM_CPUS_PER_TASK", "")
        return int(cpus) if cpus.isdigit() and int(cpus) > 0 else None
    else:
        return None
    return max(1, cores // max(1, min(jobs, cores)))


def _task(cfg: DictConfig) -> None:
    exit_with_the_sweep()
    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN:
        threads = job_threads(hydra.launcher, os.cpu_count() or 1, dict(os.environ))
        if threads:
            import torch

            torch.set_num_threads(threads)
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    missing = sorted(OmegaConf.missing_keys(cfg))  # ??? values, e.g. dataset=folder without its path
    if missing:
        wanted = ", ".join(f"{k}={MISSING_HINTS.get(k, '...')}" for k in missing)
        raise PipelineError(f"missing required option(s): {wanted} (see --help)")
    if cfg.get("dry_run", False):
        print(describe_job(cfg, job_dir), flush=True)
        with contextlib.suppress(OSError):  # the folder Hydra made for the job, unless it holds something
            job_dir.rmdir()
        return
    run_job(cfg, job_dir)


def main(cfg: DictConfig) -> None:
    """Hydra entry point: one job in its own output directory (``dry_run=true``: print it only).

    Single run: a failure is one line on stderr and exit status 2 (``debug=true``: traceback).
    Multirun: a failing job is reported in one line, the sweep goes on with its other jobs, and
    Hydra exits non-zero at the end. Either way the job dir gets ``failed.json`` (its reason).
    """
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    if HydraConfig.get().mode != RunMode.MULTIRUN or cfg.get("debug", False):
        one_line_errors(_recording_failure)(cfg)
        return
    try:
        _task(cfg)
    except Exception as exc:  # this job only: the launcher goes on with the others
        raise _fail_job(cfg, job_dir, exc) from None


def _recording_failure(cfg: DictConfig) -> None:
    """``_task``, writing ``failed.json`` before a failure propagates (not for a busy job: its dir is
    another process's)."""
    try:
        _task(cfg)
    except Exception as exc:
        if not isinstance(exc, JobBusy):
            record_failure(cfg, Path(HydraConfig.get().runtime.output_dir), one_line(exc, EXPECTED_ERRORS))
        raise


#: a job's lock file (one process at a time per job)
LOCK = "job.lock"
#: environment variable naming the sweep's process, inherited by its launcher's workers
SWEEP_PID_ENV = "DIFFC_SWEEP_PID"
_WATCHING = False
#: what a mandatory (``???``) option expects, for its one-line error
MISSING_HINTS = {"dataset.options.path": "DIR (a folder of images)"}
#: what a dry run adds to the command line: no .hydra/ copy of the config, no evaluate.log
DRY_RUN_HYDRA = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def dry_run_argv(argv: list[str]) -> list[str]:
    """``argv`` plus :data:`DRY_RUN_HYDRA` when it asks for ``dry_run=true`` (a dry run writes nothing)."""
    asked = any(a.replace(" ", "").lower() in ("dry_run=true", "dry_run=1") for a in argv)
    return [*argv, *DRY_RUN_HYDRA] if asked else argv


if __name__ == "__main__":
    os.environ[SWEEP_PID_ENV] = str(os.getpid())
    sys.argv[1:] = dry_run_argv(sys.argv[1:])
    cli.main(main, "config", verbatim=("root", "caption", "dataset.options.path", "model.options.path",
                                       "model.options.params_path", "captioner.options.path"),
             config_dir=CONF_DIR, multirun=True)
