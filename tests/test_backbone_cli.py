"""Every tiny backbone through the command lines: ``pipelines.compress model=NAME`` then
``pipelines.decompress`` gives the PNG the encoder reported, at the original size, from a file whose
header names the backbone.

The default run calls the Hydra tasks in process (compose + call, as the CLI does); the
``python -m`` processes themselves run under ``-m slow`` (each one imports torch and diffusers).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from diffc import format as fmt
from pipelines.common import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
TINY = sorted(p.stem for p in (CONF_DIR / "model").glob("tiny-*.yaml"))
H, W = 53, 77  # a crop no backbone's size multiple divides


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 3, 200 - yy * 3, (xx + yy) * 2], -1) + rng.integers(0, 30, (H, W, 3))
    path = tmp_path_factory.mktemp("img") / "crop.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def in_process(module: str, *overrides: str) -> None:
    """Run ``python -m pipelines.MODULE overrides...`` as a Hydra task in this process."""
    import importlib

    task = getattr(importlib.import_module(f"pipelines.{module}"), module)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(module, overrides=[*overrides, "progress=false"])
    try:
        task(cfg)
    except SystemExit as exc:  # the one-line error path
        assert not exc.code, f"pipelines.{module} exited with {exc.code}"


def as_process(module: str, *overrides: str) -> None:
    r = subprocess.run([sys.executable, "-m", f"pipelines.{module}", *overrides, "progress=false"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr


def round_trip(run, name: str, image: Path, tmp: Path) -> None:
    diffc, reported, decoded = tmp / "x.diffc", tmp / "reported.png", tmp / "decoded.png"
    run("compress", f"model={name}", f"input={image}", f"output={diffc}", "timestep=500",
        f"recon_output={reported}")
    run("decompress", f"input={diffc}", f"output={decoded}")
    assert decoded.read_bytes() == reported.read_bytes()
    assert np.asarray(Image.open(decoded)).shape == (H, W, 3)
    header, _ = fmt.read(diffc.read_bytes())
    assert (header.backbone, header.width, header.height) == (name, W, H)


@pytest.mark.parametrize("name", TINY)
def test_cli_round_trip(name: str, image: Path, tmp_path: Path) -> None:
    round_trip(in_process, name, image, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_python_m_round_trip(name: str, image: Path, tmp_path: Path) -> None:
    round_trip(as_process, name, image, tmp_path)
