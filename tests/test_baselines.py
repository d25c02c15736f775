"""Classic codecs as baselines in the sweep (pipelines/baselines.py): rows of kind 'baseline'
with the codec's name and quality, bpp = file bytes x 8 / pixels, scored like the codec rows,
resumed with the job; files optionally kept. The expected numbers are recomputed here with
Pillow and numpy, not through the module under test."""
from __future__ import annotations

import json
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from diffc.checks import InvalidValue
from pipelines import baselines as classic
from pipelines.common import CONF_DIR, PipelineError
from pipelines.datasets import load_dataset
from pipelines.evaluate import config_hash, run_job

FAST = ["dataset=kodak-small", "bitrate=quick", "metrics=offline", "dataset.options.ids=[kodim01,kodim05]",
        "dataset.options.size=32", "codec.channel.chunk_bits=4", "codec.channel.padding_bits=1", "progress=false"]
GRIDS = ["baselines.jpeg.quality=[10,50,90]", "baselines.webp.quality=[10,80]", "baselines.avif.quality=[30]",
         "baselines.jxl.quality=[50]"]
EXT = {"jpeg": "jpg", "webp": "webp", "avif": "avif", "jxl": "jxl"}


def compose_job(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["model=gaussian", *FAST, *overrides])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    cfg = compose_job("baselines=[jpeg,webp,avif,jxl]", *GRIDS, "save.baselines=true")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = run_job(cfg, tmp_path_factory.mktemp("bl") / "job")
    finally:
        torch.set_num_threads(threads)
    return d, pd.read_parquet(d / "results.parquet")


def test_default_sweep_has_no_baselines_key() -> None:
    """No baseline selected = no config key: the hash of existing sweeps does not change."""
    cfg = compose_job()
    assert "baselines" not in cfg
    assert config_hash(compose_job("baselines=[jpeg]")) != config_hash(cfg)
    assert config_hash(compose_job("baselines=[jpeg]", "baselines.jpeg.quality=[10]")) != \
        config_hash(compose_job("baselines=[jpeg]"))
    assert config_hash(compose_job("save.baselines=true")) == config_hash(cfg)


def test_rows_are_the_files_of_pillow(job: tuple[Path, pd.DataFrame]) -> None:
    d, rows = job
    base = rows[rows["kind"] == "baseline"]
    assert set(rows.loc[rows["kind"] == "codec", "codec"]) == {"pfr"}
    assert set(rows.loc[rows["kind"] == "vae", "codec"]) == {"vae"}
    grid = {"jpeg": [10, 50, 90], "webp": [10, 80], "avif": [30], "jxl": [50]}
    assert len(base) == 2 * sum(map(len, grid.values()))
    images = dict(load_dataset("kodak-small", ids=["kodim01", "kodim05"], size=32))
    for r in base.itertuples():
        assert r.quality in grid[r.codec] and r.model == "gaussian"
        img = images[r.image]
        # the file kept on disk is the one whose size is the bpp, and Pillow re-encodes it identically
        data = (d / "baselines" / r.image / f"{r.codec}-q{r.quality}.{EXT[r.codec]}").read_bytes()
        assert r.bpp == pytest.approx(len(data) * 8 / (32 * 32), rel=1e-12)
        assert r.bits_total == len(data) * 8
        if r.codec == "jpeg":
            buf = BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=int(r.quality), optimize=True)
            assert buf.getvalue() == data
        with Image.open(BytesIO(data)) as im:
            rec = np.asarray(im.convert("RGB"))
        assert r.psnr == pytest.approx(psnr(img, rec), abs=1e-6)
        assert 0 < r.ms_ssim <= 1
        assert "lpips: not requested" in r.metric_errors
    # more quality, more bits and better PSNR (JPEG, per image)
    for _, g in base[base["codec"] == "jpeg"].groupby("image"):
        g = g.sort_values("quality")
        assert g["bpp"].is_monotonic_increasing and g["psnr"].is_monotonic_increasing
        assert g["bpp"].iloc[-1] > 2 * g["bpp"].iloc[0]  # q90 vs q10 (headers dominate at 32 px)


def test_resume_keeps_the_baseline_rows(job: tuple[Path, pd.DataFrame]) -> None:
    d, rows = job
    cfg = compose_job("baselines=[jpeg,webp,avif,jxl]", *GRIDS)
    shard = next((d / "shards").glob("kodim01.*.parquet"))
    shard.unlink()  # an interrupted job: one image to redo
    (d / "done.json").unlink()
    run_job(cfg, d)
    again = pd.read_parquet(d / "results.parquet")
    cols = ["image", "kind", "codec", "quality", "bpp", "psnr"]
    key = ["image", "kind", "codec", "quality", "bpp"]
    pd.testing.assert_frame_equal(again[cols].sort_values(key, ignore_index=True),
                                  rows[cols].sort_values(key, ignore_index=True))
    assert json.loads((d / "done.json").read_text())["rows"] == len(rows)


def test_a_codec_this_pillow_cannot_write_is_one_error() -> None:
    with pytest.raises(PipelineError, match="plugin module 'no_such_plugin'"):
        classic.from_config({"jxl": {"format": "JXL", "plugin": "no_such_plugin", "quality": [50]}})
    with pytest.raises(PipelineError, match="cannot write NOPE"):
        classic.from_config({"nope": {"format": "NOPE", "quality": [50]}})
    with pytest.raises(InvalidValue, match=r"baselines.jpeg.quality must be an integer in 0\.\.100, got 101"):
        classic.from_config({"jpeg": {"format": "JPEG", "quality": [101]}})
    with pytest.raises(InvalidValue, match="got 75.5"):  # was truncated to 75 on the quiet
        classic.from_config({"jpeg": {"format": "JPEG", "quality": [75.5]}})
    with pytest.raises(PipelineError, match="duplicates"):
        classic.from_config({"jpeg": {"format": "JPEG", "quality": [5, 5]}})


def test_baseline_rows_take_what_they_need_as_arguments(tmp_path: Path) -> None:
    """No job: the identity columns, the scorer and the save folder come in as arguments."""
    img = np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    (jpeg,) = classic.from_config({"jpeg": {"format": "JPEG", "ext": "jpg", "quality": [20, 90]}})
    scored = []

    def score(row: dict, ref: np.ndarray, rec: np.ndarray) -> dict:
        scored.append(rec)
        return row | {"psnr": psnr(ref, rec)}

    rows = classic.baseline_rows([jpeg], img, {"image": "x", "model": "m"}, score, tmp_path / "x")
    assert [(r["image"], r["model"], r["kind"], r["codec"], r["quality"]) for r in rows] == \
        [("x", "m", "baseline", "jpeg", 20), ("x", "m", "baseline", "jpeg", 90)]
    for r, rec in zip(rows, scored):
        buf = BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=r["quality"])
        data = (tmp_path / "x" / f"jpeg-q{r['quality']}.jpg").read_bytes()
        assert data == buf.getvalue() and r["bits_total"] == 8 * len(data)
        assert r["bpp"] == 8 * len(data) / (24 * 40)
        assert r["psnr"] == psnr(img, np.asarray(Image.open(BytesIO(data)).convert("RGB")))
    assert rows[0]["bpp"] < rows[1]["bpp"] and rows[0]["psnr"] < rows[1]["psnr"]
    assert classic.baseline_rows([jpeg], img, {}, score, None) and sorted(tmp_path.rglob("*.jpg")) == \
        [tmp_path / "x" / "jpeg-q20.jpg", tmp_path / "x" / "jpeg-q90.jpg"]  # no save_dir: nothing written


def test_the_baselines_do_not_import_the_sweep() -> None:
    """evaluate calls baselines, never the reverse (no cycle, not even a lazy one)."""
    code = ("import sys, pipelines.baselines; "
            "bad = sorted(m for m in sys.modules if m == 'pipelines.evaluate'); assert not bad, bad; print('clean')")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "clean", r.stderr[-2000:]
