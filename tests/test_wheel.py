"""A wheel that works: built from the sources, installed into a fresh target outside the checkout,
and run from a temporary directory as a user's ``pip install`` would.

The configs (conf/) must ship inside the package (``diffc_conf``, found through the installed package,
pipelines.common.CONF_DIR), and so must every data file the commands read (the Gaussian prior, the
analysis configs). The dependencies come from this venv; the project's own code only from the target.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".venv", ".git", ".cache", "outputs", "multirun", "build", "*.egg-info",
                              "__pycache__", ".pytest_cache", ".hypothesis")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (no build/ left in the checkout) and installed
    with ``pip install --no-deps --target``: the target directory."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (work / "dist").glob("diffc_pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("diffc_conf/config.yaml", "diffc_conf/model/sd15.yaml", "diffc_conf/hydra/launcher/slurm_gpu.yaml",
                   "analysis/conf/rd_curves.yaml", "analysis/templates/report.js",
                   "diffc/backbones/params/gaussian_kodak.npz"):
        assert needed in names, f"{needed} missing from the wheel"
    target = work / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return target


def run(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` with the installed wheel first on the path and the checkout nowhere."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r


def test_the_installed_package_runs_from_anywhere(installed: Path, tmp_path: Path) -> None:
    r = run(installed, tmp_path, "-c", "import diffc, pipelines.compress, pipelines.common as c; "
                                       "print(diffc.__file__); print(c.CONF_DIR)")
    code_file, conf_dir = r.stdout.split()
    assert Path(code_file).is_relative_to(installed) and Path(conf_dir).is_relative_to(installed), r.stdout

    rng = np.random.default_rng(1)
    images = tmp_path / "images"
    images.mkdir()
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 30, (48, 64, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images / "a.png")

    run(installed, tmp_path, "-m", "pipelines.compress", "model=gaussian", "input=images/a.png",
        "output=a.diffc", "timestep=300", "recon_output=encoder.png", "progress=false")
    run(installed, tmp_path, "-m", "pipelines.decompress", "input=a.diffc", "output=decoded.png", "progress=false")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "decoded.png")),
                          np.asarray(Image.open(tmp_path / "encoder.png")))

    run(installed, tmp_path, "-m", "pipelines.evaluate", "model=gaussian", "dataset=folder",
        "dataset.options.path=images", "bitrate=quick", "metrics=offline", "root=out", "name=wheel",
        "progress=false")
    (results,) = (tmp_path / "out" / "wheel").glob("*/results.parquet")
    run(installed, tmp_path, "-m", "analysis.rd_curves", "results=out/wheel")
    assert list((tmp_path / "out" / "wheel" / "figures").glob("*-rd-psnr.png")), \
        sorted(p.name for p in (tmp_path / "out" / "wheel").rglob("*"))
    run(installed, tmp_path, "-m", "analysis.report_html", "results=out/wheel")
    assert (tmp_path / "out" / "wheel" / "report.html").stat().st_size > 2**20  # plotly.js and the data
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()
