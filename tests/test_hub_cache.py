"""The real user's path: every shipped real model config (conf/model/NAME.yaml) loads from a Hugging
Face hub cache by its hub id, with no path override, and round-trips through the command lines.

The cache holds tiny random-weight pipelines in the real diffusers layout (tests/hub_twins.py): real
tokenizer classes, text encoders, scheduler configs and model_index.json, blobs + snapshot symlinks
+ refs/main. The hub ids are read from the configs, so the test follows them. ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE=1`` point huggingface_hub at it (the environment, and the constants
huggingface_hub read from it at import). ``compress recon_output=`` then ``decompress`` must give
exactly the encoder's PNG. The ``python -m`` processes themselves run under ``-m slow``.

SDXL from local folders (``model.options.path`` + ``refiner_path``, or base only with
``refiner_hub_id=null``) runs against an empty cache: nothing may come from the hub.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import kodak_native
from diffc import format as fmt
from hub_twins import REAL_MODELS, build_hub_cache, build_repo, repos
from pipelines import datasets as ds
from pipelines.common import plain, model_config

ROOT = Path(__file__).resolve().parents[1]
#: a short run of each real config: 12 steps (geom-12), 4 ODE steps
FAST = ["codec.schedule=geom-12", "codec.channel.chunk_bits=8", "codec.recon.steps=4", "model.options.device=cpu"]
#: stop timesteps: below the SDXL refiner's t < 200 (both UNets code), 520 in pixel space (12288
#: entries: the low-noise steps cost the most KL), 278 elsewhere
STOP = {"sdxl": 100, "ddpm-church": 520}
CAPTION = "a photo of the cat"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf_cache")
    written = build_hub_cache(root, list(REAL_MODELS))
    assert set(written) == {h for n in REAL_MODELS for h in repos(n)}
    return root


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kodim05, center square crop, Lanczos to 64x64 (as kodak-small)."""
    path = tmp_path_factory.mktemp("img") / "kodim05-64.png"
    Image.fromarray(ds.resize(ds.center_crop_square(kodak_native("kodim05")), 64, 64)).save(path)
    return path


def use_cache(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """HF_HUB_CACHE=root, HF_HUB_OFFLINE=1 for this process (and its children), no DIFFC_*_PATH."""
    import huggingface_hub.constants as hc

    for key in [k for k in os.environ if k.startswith("DIFFC_") and k.endswith("_PATH")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)


def in_process(module: str, *overrides: str) -> tuple[int, str]:
    """``python -m pipelines.MODULE overrides...`` as a Hydra task in this process: (status, stderr)."""
    import contextlib
    import importlib
    import io

    from analysis.cli import call
    from pipelines.common import CONF_DIR

    task = getattr(importlib.import_module(f"pipelines.{module}"), module)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = call(task, module, [*overrides, "progress=false"], CONF_DIR)
    return code, err.getvalue()


def as_process(module: str, *overrides: str) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", f"pipelines.{module}", *overrides, "progress=false"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    return r.returncode, r.stderr


def round_trip(run, name: str, image: Path, tmp: Path, *compress_args: str,
               decompress_args: tuple[str, ...] = ()) -> fmt.Header:
    """compress (with recon_output) then decompress; the decoded PNG is the encoder's, byte for byte."""
    diffc, reported, decoded = tmp / "x.diffc", tmp / "reported.png", tmp / "decoded.png"
    caption = [] if name == "ddpm-church" else [f"caption={CAPTION}"]
    code, err = run("compress", f"model={name}", f"input={image}", f"output={diffc}", f"recon_output={reported}",
                    f"timestep={STOP.get(name, 278)}", *FAST, *caption, *compress_args)
    assert code == 0, err
    code, err = run("decompress", f"input={diffc}", f"output={decoded}", "options.device=cpu", *decompress_args)
    assert code == 0, err
    assert decoded.read_bytes() == reported.read_bytes()
    assert np.asarray(Image.open(decoded)).shape == (64, 64, 3)
    header, _ = fmt.read(diffc.read_bytes())
    assert header.backbone == name and header.width == header.height == 64
    assert header.caption == (None if name == "ddpm-church" else CAPTION)
    return header


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_config_from_hub_cache(name: str, hub_cache: Path, image: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    use_cache(monkeypatch, hub_cache)
    round_trip(in_process, name, image, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_MODELS)
def test_python_m_from_hub_cache(name: str, hub_cache: Path, image: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    use_cache(monkeypatch, hub_cache)
    round_trip(as_process, name, image, tmp_path)


def test_sdxl_reference_parity_from_hub_cache(hub_cache: Path, image: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """parity=reference loads the separate VAE repository (vae_hub_id, files at its root) from the
    cache; decompress loads those settings, the parity its header names."""
    use_cache(monkeypatch, hub_cache)
    header = round_trip(in_process, "sdxl", image, tmp_path, "parity=reference")
    assert header.recon.grid == "reference" and header.parity == "reference"


def test_hub_ids_follow_the_configs(hub_cache: Path) -> None:
    """The cache has a refs/main and a snapshot for each hub id the configs name (sdxl: + refiner)."""
    for name in REAL_MODELS:
        options = plain(model_config(name)["options"])
        ids = {options["hub_id"]} | ({options["refiner_hub_id"]} if name == "sdxl" else set())
        for hub_id in ids:
            repo = hub_cache / f"models--{hub_id.replace('/', '--')}"
            rev = (repo / "refs" / "main").read_text()
            assert (repo / "snapshots" / rev).is_dir(), hub_id


# ---- SDXL from local folders ------------------------------------------------------------------------
REFINER_ID = plain(model_config("sdxl")["options"])["refiner_hub_id"]


@pytest.fixture(scope="module")
def sdxl_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base, refiner): the sdxl twin's repositories as local folders (save_pretrained)."""
    root = tmp_path_factory.mktemp("sdxl")
    build_repo("sdxl", plain(model_config("sdxl")["options"])["hub_id"], root / "base")
    build_repo("sdxl", REFINER_ID, root / "refiner")
    return root / "base", root / "refiner"


@pytest.fixture
def no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty hub cache, offline: everything must come from the local folders."""
    (tmp_path / "empty-cache").mkdir()
    use_cache(monkeypatch, tmp_path / "empty-cache")


def one_line(code: int, err: str, *needles: str) -> str:
    """The command failed with one line on stderr, ``error: ...`` holding every needle (no loading
    progress bars or library warnings around it: diffusers_common.quiet_loading)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_sdxl_local_folders(sdxl_folders: tuple[Path, Path], image: Path, tmp_path: Path, no_cache: None) -> None:
    """base + refiner from local folders (no cache), then base only (refiner_hub_id=null): both decode to
    the encoder's PNG; the base-only file decodes with or without options.refiner_hub_id=null (the
    decoder loads the refiner only when the fingerprint needs it), and a decoder that has no refiner
    cannot decode the refiner's file, in one line naming options.refiner_path."""
    base, refiner = sdxl_folders
    (tmp_path / "r").mkdir(), (tmp_path / "b").mkdir()
    with_refiner = round_trip(in_process, "sdxl", image, tmp_path / "r", f"model.options.path={base}",
                              f"model.options.refiner_path={refiner}",
                              decompress_args=(f"options.path={base}", f"options.refiner_path={refiner}"))
    base_only = round_trip(in_process, "sdxl", image, tmp_path / "b", f"model.options.path={base}",
                           "model.options.refiner_hub_id=null", decompress_args=(f"options.path={base}",))
    assert with_refiner.fingerprint != base_only.fingerprint
    # the refiner ran on the steps t < 200 (the stop is t = 80): another reconstruction
    assert (tmp_path / "r" / "reported.png").read_bytes() != (tmp_path / "b" / "reported.png").read_bytes()
    out = tmp_path / "again.png"
    code, err = in_process("decompress", f"input={tmp_path / 'b' / 'x.diffc'}", f"output={out}",
                           f"options.path={base}", "options.refiner_hub_id=null", "options.device=cpu")
    assert code == 0, err
    assert out.read_bytes() == (tmp_path / "b" / "reported.png").read_bytes()
    code, err = in_process("decompress", f"input={tmp_path / 'r' / 'x.diffc'}", f"output={out}",
                           f"options.path={base}", "options.device=cpu")
    msg = one_line(code, err, REFINER_ID, "options.refiner_path", "DIFFC_SDXL_REFINER_PATH",
                   "options.refiner_hub_id=null")
    assert "model.options." not in msg  # decompress's keys are options.*
    code, err = in_process("decompress", f"input={tmp_path / 'r' / 'x.diffc'}", f"output={out}",
                           f"options.path={base}", "options.refiner_hub_id=null", "options.device=cpu")
    one_line(code, err, "fingerprint", with_refiner.fingerprint.hex(), "project settings", "options.KEY=VALUE")
    assert "reference" not in err  # the header's parity is loaded, no other setting is tried


@pytest.mark.parametrize("overrides, needles", [
    # a base folder alone: the refiner is still asked for, by its own keys
    ([], [REFINER_ID, "model.options.refiner_path=", "DIFFC_SDXL_REFINER_PATH", "model.options.refiner_hub_id=null"]),
    (["model.options.refiner_hub_id=null", "model.options.vae_path=/nonexistent"],
     ["model.options.vae_path='/nonexistent' needs model.options.vae_hub_id"]),
    (["model.options.refiner_hub_id=null", "model.options.refiner_path=REFINER"],
     ["model.options.refiner_path=", "needs model.options.refiner_hub_id"]),
    (["model.options.refiner_hub_id=null", "model.options.vae_hub_id=madebyollin/sdxl-vae-fp16-fix",
      "model.options.vae_path=/nonexistent"], ["(vae)", "model.options.vae_path='/nonexistent' is not a directory"]),
    (["model.options.refiner_path=/nonexistent"], ["(refiner)", "model.options.refiner_path='/nonexistent' is not"]),
])
def test_sdxl_path_options_honoured_or_refused(overrides: list[str], needles: list[str], image: Path,
                                               sdxl_folders: tuple[Path, Path], tmp_path: Path,
                                               no_cache: None) -> None:
    base, refiner = sdxl_folders
    out = tmp_path / "x.diffc"
    args = [o.replace("REFINER", str(refiner)) for o in overrides]
    code, err = in_process("compress", "model=sdxl", f"input={image}", f"output={out}", "timestep=500", *FAST,
                           f"model.options.path={base}", *args)
    msg = one_line(code, err, *needles)
    assert "model.options.path=/data" not in msg  # never advises the base's key for another part
    assert not out.exists()


def test_decompress_refuses_options_the_backbone_lacks(image: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "x.diffc", tmp_path / "x.png"
    code, err = in_process("compress", "model=tiny-sd15", f"input={image}", f"output={out}", "timestep=500")
    assert code == 0, err
    code, err = in_process("decompress", f"input={out}", f"output={png}", "options.refiner_path=/x")
    one_line(code, err, "model tiny-sd15 has no option refiner_path")
    assert not png.exists()
