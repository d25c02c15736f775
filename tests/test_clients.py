"""Our CompressAI-format JSON (analysis/export.py) as CompressAI reads it.

1. Always: the structure and key names of CompressAI's own shipped result files, kept in the repo
   as data (``analysis/data/compressai-kodak-*.json``, copied verbatim from CompressAI's
   ``results/image/kodak/{jpeg,compressai-bmshj2018-hyperprior_mse_cuda}.json`` of
   InterDigitalInc/CompressAI at commit 3d3c9bbd92989b1cf19e122281161f7aac8ee769, BSD 3-Clause
   Clear licence), are those of our files.
2. When compressai is importable (found on the path; its package is never imported): its own
   plot tool, ``compressai/utils/plot/__main__.py`` of CompressAI 1.2.8, run as a program on our
   files (what ``python -m compressai.utils.plot`` runs), and its reader on our values. CompressAI
   1.2.8 does not install into this project's environment: its package imports torchvision and
   torch_geometric (PyPI's torchvision wheels are built against CUDA torch, not the CPU torch
   here) and it pins numpy<2. Its plot tool needs only matplotlib and numpy, so a wheel unpacked
   beside the environment is enough:

       pip download --no-deps compressai==1.2.8 -d /tmp/w
       pip install --no-deps --target /tmp/cai /tmp/w/compressai-1.2.8-*.whl
       PYTHONPATH=/tmp/cai python -m pytest tests/test_clients.py

The results are synthetic (a job dir written with the results schema: pandas only, no torch).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from analysis.rd_curves import render
from analysis.schema import JOB_JSON, SHARDS, frame

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "analysis" / "data").glob("compressai-kodak-*.json"))
#: what CompressAI's plot tool reads: ``-m psnr`` / ``-m ms-ssim`` look up these keys
QUALITY_KEYS = {"psnr-rgb", "ms-ssim-rgb"}


def shipped() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in SHIPPED}


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The figures dir of a synthetic Kodak job: DiffC at 3 rate points and JPEG at 2 qualities on
    2 images, PSNR and MS-SSIM (what the offline metrics give)."""
    root = tmp_path_factory.mktemp("results")
    rows = []
    for k, image in enumerate(["kodim01", "kodim02"]):
        base = {"model": "gaussian", "dataset": "kodak", "image": image, "config_hash": "abc", "width": 768,
                "height": 512}
        for j, t in enumerate([700, 300, 100]):
            rows.append(base | {"kind": "codec", "codec": "pfr", "recon_timestep": t, "target_bpp": math.nan,
                                "bpp": 0.1 * (j + 1) + 0.02 * k, "psnr": 24.0 + 3 * j + k,
                                "ms_ssim": 0.80 + 0.05 * j + 0.01 * k})
        rows.append(base | {"kind": "vae", "codec": "vae", "psnr": math.inf, "ms_ssim": 1.0})
        for q, (bpp, psnr, ms) in {10: (0.3, 26.0, 0.88), 50: (0.9, 32.0, 0.96)}.items():
            rows.append(base | {"kind": "baseline", "codec": "jpeg", "quality": q, "bpp": bpp + 0.1 * k,
                                "psnr": psnr + k, "ms_ssim": ms})
    job = root / "job"
    (job / SHARDS).mkdir(parents=True)
    (job / JOB_JSON).write_text(json.dumps({"config_hash": "abc"}))
    frame(rows).to_parquet(job / SHARDS / "all.abc.parquet", index=False)
    out = root / "figures"
    render(root, ["psnr", "ms_ssim"], out, ["png"])
    return out


def test_the_shipped_files_are_compressais_format() -> None:
    """The data the next test compares against: CompressAI's current result files (a test that
    would pass on any dict would prove nothing)."""
    files = shipped()
    assert sorted(files) == ["compressai-kodak-bmshj2018-hyperprior_mse_cuda.json", "compressai-kodak-jpeg.json"]
    for name, data in files.items():
        assert set(data) == {"name", "description", "results"}, name
        res = data["results"]
        assert set(res) >= {"bpp", *QUALITY_KEYS} and not {"psnr", "ms-ssim"} & set(res), name
        assert len({len(v) for v in res.values()}) == 1, name
    jpeg = files["compressai-kodak-jpeg.json"]
    assert jpeg["name"] == "JPEG" and len(jpeg["results"]["bpp"]) == 19
    assert jpeg["results"]["psnr-rgb"][0] == pytest.approx(23.779894921045457, rel=1e-15)


def test_our_json_has_the_structure_and_keys_of_compressais(ours: Path) -> None:
    """Every curve file: CompressAI's top-level keys, its quality keys (psnr-rgb, ms-ssim-rgb) with
    the plotted means, lists as long as bpp, bpp increasing; no key CompressAI 1.2.8 refuses."""
    ref = shipped()["compressai-kodak-jpeg.json"]
    files = {p.name: json.loads(p.read_text()) for p in sorted(ours.glob("*.json"))}
    assert sorted(files) == ["kodak-baseline-jpeg.json", "kodak-gaussian-pfr.json"]
    for name, data in files.items():
        assert set(data) == set(ref), name
        assert isinstance(data["name"], str) and isinstance(data["description"], str)
        res = data["results"]
        assert set(res) == {"bpp", *QUALITY_KEYS}, name
        assert set(res) <= set(ref["results"])  # every key of ours is one of CompressAI's
        assert all(len(v) == len(res["bpp"]) and all(isinstance(x, float) for x in v) for v in res.values())
        assert np.all(np.diff(res["bpp"]) > 0)
    diffc = files["kodak-gaussian-pfr.json"]["results"]
    for metric, key in (("psnr", "psnr-rgb"), ("ms_ssim", "ms-ssim-rgb")):
        side = pd.read_csv(ours / f"kodak-rd-{metric}.csv")
        codec = side[side["series"] == "codec"]
        np.testing.assert_allclose(diffc["bpp"], codec["bpp"], rtol=1e-12)
        np.testing.assert_allclose(diffc[key], codec["value"], rtol=1e-12)
    np.testing.assert_allclose(diffc["bpp"], [0.11, 0.21, 0.31])
    np.testing.assert_allclose(diffc["psnr-rgb"], [24.5, 27.5, 30.5])
    np.testing.assert_allclose(diffc["ms-ssim-rgb"], [0.805, 0.855, 0.905])
    jpeg = files["kodak-baseline-jpeg.json"]["results"]
    np.testing.assert_allclose(jpeg["bpp"], [0.35, 0.95])
    np.testing.assert_allclose(jpeg["psnr-rgb"], [26.5, 32.5])


def compressai_plot() -> Path | None:
    """CompressAI's plot program, when a compressai package is on the path (not imported)."""
    spec = importlib.util.find_spec("compressai")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "utils" / "plot" / "__main__.py"
    return path if path.is_file() else None


needs_compressai = pytest.mark.skipif(
    compressai_plot() is None,
    reason="compressai not on the path (it does not install beside this environment's CPU torch: see this "
           "file's docstring for the --target install and PYTHONPATH)")


def load_plot() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compressai_plot", compressai_plot())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_compressai
@pytest.mark.parametrize("metric", ["psnr", "ms-ssim"])
def test_compressai_plot_tool_draws_our_files(metric: str, ours: Path, tmp_path: Path) -> None:
    """CompressAI's plot command on our two files and its own JPEG file: exit 0 and a figure."""
    png = tmp_path / f"rd-{metric}.png"
    files = [str(ours / "kodak-gaussian-pfr.json"), str(ours / "kodak-baseline-jpeg.json"),
             str(ROOT / "analysis" / "data" / "compressai-kodak-jpeg.json")]
    r = subprocess.run([sys.executable, str(compressai_plot()), "-f", *files, "-m", metric, "-o", str(png)],
                       env=os.environ | {"MPLBACKEND": "Agg"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert png.stat().st_size > 10_000


@needs_compressai
def test_compressai_reader_gets_our_values(ours: Path) -> None:
    """CompressAI's own reader (``parse_json_file``) returns our bpp and values (MS-SSIM in its dB)."""
    plot = load_plot()
    data = json.loads((ours / "kodak-gaussian-pfr.json").read_text())["results"]
    psnr = plot.parse_json_file(ours / "kodak-gaussian-pfr.json", "psnr")
    assert psnr["name"] == "DiffC (gaussian)"
    np.testing.assert_allclose(psnr["xs"], data["bpp"])
    np.testing.assert_allclose(psnr["ys"], data["psnr-rgb"])
    ms = plot.parse_json_file(ours / "kodak-gaussian-pfr.json", "ms-ssim")
    np.testing.assert_allclose(ms["ys"], -10 * np.log10(1 - np.array(data["ms-ssim-rgb"])))
    # the old key names, which our files used before, are what it refuses
    old = ours.parent / "old.json"
    old.write_text(json.dumps({"name": "x", "results": {"bpp": [0.1], "psnr": [20.0]}}))
    with pytest.raises(ValueError, match='metric "psnr-rgb" not available'):
        plot.parse_json_file(old, "psnr")
