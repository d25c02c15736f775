"""Classic codecs as baselines in the same sweep: JPEG, WebP, AVIF (Pillow) and JPEG XL.

    python -m pipelines.evaluate model=gaussian dataset=kodak 'baselines=[jpeg,webp,avif]'

``baselines`` is a Hydra config group with several options at once (``conf/baselines/*.yaml``,
one per codec: Pillow format, file extension, quality grid, ``Image.save`` options, and the
module that registers the format with Pillow when it is a plugin). Nothing selected (the
default) adds no config key, so the config hash of sweeps without baselines is unchanged.

Per image of a job, every codec x quality is encoded in memory ONCE (the rows do not depend on
the job's model), decoded by Pillow and scored with the job's ``MetricSet``: one row per point
with ``kind='baseline'``, ``codec`` = the option name (``jpeg``), ``quality`` = the setting,
``bpp`` = file bytes x 8 / pixels of the original image (the codec rows' definition) and
``bits_total`` = file bytes x 8 (a baseline file has no header/side/payload split). The rows go
into the image's shard with the codec rows, so resuming and deduplication are the job's.
With ``save.baselines=true`` the files are kept as ``baselines/IMAGE/CODEC-qQUALITY.EXT``.
FID/KID (dataset-level) are not computed for baselines.

The sweep (``pipelines.evaluate``) calls this module, never the reverse: ``baseline_rows`` gets
the job's row identity, scorer and save folder as arguments.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import time
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, features

from diffc.checks import checked_int

from .common import PipelineError, atomic_write

#: scores a row in place and returns it: (row, original, reconstruction), both uint8 [H, W, 3]
Scorer = Callable[[dict[str, Any], np.ndarray, np.ndarray], dict[str, Any]]

#: Pillow features that tell whether this Pillow can write a format (JPEG is always built in)
PIL_FEATURES = {"WEBP": "webp", "AVIF": "avif"}


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One classic codec: Pillow format, quality grid, save options."""

    name: str
    format: str
    ext: str
    quality: tuple[int, ...]
    options: dict[str, Any]
    plugin: str | None = None

    @classmethod
    def from_config(cls, name: str, cfg: DictConfig | dict) -> "Baseline":
        cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        quality = tuple(checked_int(f"baselines.{name}.quality", q, 0, 100) for q in cfg.get("quality") or [])
        if not quality:
            raise PipelineError(f"baselines.{name}.quality must be a non-empty list of 0..100")
        if len(set(quality)) != len(quality):
            raise PipelineError(f"baselines.{name}.quality has duplicates: {list(quality)}")
        return cls(name, str(cfg.get("format") or name.upper()), str(cfg.get("ext") or name), quality,
                   dict(cfg.get("options") or {}), cfg.get("plugin"))

    def check(self) -> None:
        """Raise PipelineError when this Pillow cannot write the format (plugin missing, built
        without the library)."""
        if self.plugin:
            try:
                importlib.import_module(self.plugin)
            except ImportError as exc:
                raise PipelineError(f"baseline {self.name}: needs the Pillow plugin module {self.plugin!r} "
                                    f"({exc}); pip install -e '.[baselines]'") from None
        feature = PIL_FEATURES.get(self.format)
        if feature and not features.check(feature):
            raise PipelineError(f"baseline {self.name}: this Pillow was built without {feature} support")
        Image.init()
        if self.format not in Image.SAVE:
            raise PipelineError(f"baseline {self.name}: Pillow cannot write {self.format}")

    def encode(self, img: np.ndarray, quality: int) -> bytes:
        """The file of ``img`` (uint8 HxWx3) at ``quality``, in memory."""
        buf = BytesIO()
        Image.fromarray(img).save(buf, format=self.format, quality=quality, **self.options)
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        with Image.open(BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))


def from_config(cfg: DictConfig | dict | None) -> list[Baseline]:
    """The selected baselines (``cfg.baselines``: {name: options}), checked to be writable."""
    out = [Baseline.from_config(str(name), opts) for name, opts in (cfg or {}).items()]
    for b in out:
        b.check()
    return out


def baseline_rows(baselines: Sequence[Baseline], img: np.ndarray, base: dict[str, Any], score: Scorer,
                  save_dir: Path | None = None) -> list[dict[str, Any]]:
    """One scored row per codec x quality of ``baselines`` on one image ``img`` (uint8 [H, W, 3]):
    ``base`` (the job's identity columns of the image) plus the baseline's columns, scored by
    ``score``; with ``save_dir`` each file is kept as ``save_dir/CODEC-qQUALITY.EXT``."""
    pixels = img.shape[0] * img.shape[1]
    rows = []
    for b in baselines:
        for q in b.quality:
            t0, c0 = time.perf_counter(), time.process_time()
            data = b.encode(img, q)
            t1, c1 = time.perf_counter(), time.process_time()
            rec = b.decode(data)
            row = base | {
                "kind": "baseline", "codec": b.name, "quality": q, "target_bpp": math.nan,
                "bpp": len(data) * 8 / pixels, "bits_total": len(data) * 8, "encode_s": t1 - t0,
                "encode_cpu_s": c1 - c0, "decode_s": time.perf_counter() - t1, "decode_cpu_s": time.process_time() - c1}
            if rec.shape != img.shape:
                raise PipelineError(f"baseline {b.name} q={q}: decoded {rec.shape}, expected {img.shape}")
            if save_dir is not None:
                atomic_write(save_dir / f"{b.name}-q{q}.{b.ext}", data)
            rows.append(score(row, img, rec))
    return rows
