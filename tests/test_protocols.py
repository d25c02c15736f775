"""Evaluation protocols (pipelines/datasets.py PROTOCOLS, conf/protocol/*.yaml): the sizes
docs/datasets.md documents, on odd, portrait and tiny images; what the pixels become; the FID/KID
patch counts of those sizes; the protocol in every row, job name and config hash of a sweep."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from pipelines import datasets as ds
from pipelines.common import CONF_DIR
from pipelines.metrics import extract_patches

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "datasets.md").read_text()


def doc_table(first_header: str) -> tuple[list[str], dict[str, list[str]]]:
    """The markdown table of docs/datasets.md whose header row starts with ``first_header``:
    (the other headers, {first cell without backticks: other cells})."""
    lines = DOC.splitlines()
    start = next(k for k, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    cells = lambda ln: [c.strip().strip("`") for c in ln.strip().strip("|").split("|")]
    header = cells(lines[start])[1:]
    body = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        row = cells(ln)
        body[row[0]] = row[1:]
    return header, body


def size(text: str) -> tuple[int, int]:
    w, h = re.fullmatch(r"(\d+)×(\d+)", text).groups()
    return int(w), int(h)


def pattern(w: int, h: int, dtype: type = np.uint8) -> np.ndarray:
    """A W x H image whose left half is bright (uint8, or float32 in [0, 1])."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[:, : w // 2] = 200
    return img if dtype == np.uint8 else (img / 255).astype(np.float32)


SIZES_HEADER, SIZES = doc_table("protocol | 768×512")


def test_every_protocol_is_configured_and_documented() -> None:
    confs = {p.stem: OmegaConf.load(p) for p in sorted((CONF_DIR / "protocol").glob("*.yaml"))}
    assert set(confs) == set(ds.PROTOCOLS) == set(SIZES)
    assert all(c.name == stem for stem, c in confs.items())
    _, sources = doc_table("protocol | what each image becomes")
    assert set(sources) == set(ds.PROTOCOLS) and all(row[1] for row in sources.values())  # each has its source
    assert {"protocol": "native"} in OmegaConf.load(CONF_DIR / "config.yaml").defaults


@pytest.mark.parametrize("protocol", sorted(ds.PROTOCOLS))
@pytest.mark.parametrize("column", range(len(SIZES_HEADER)))
def test_documented_sizes(protocol: str, column: int) -> None:
    """Kodak landscape / portrait, DIV2K, an odd portrait, an odd small and a tiny image."""
    w, h = size(SIZES_HEADER[column])
    got = ds.get_protocol(protocol).transform(pattern(w, h))
    assert (got.shape[1], got.shape[0]) == size(SIZES[protocol][column])
    assert got.dtype == np.uint8


@pytest.mark.parametrize("w,h", [(768, 512), (512, 768), (2040, 1356), (1357, 2041), (513, 771), (5, 3)])
def test_what_the_pixels_become(w: int, h: int) -> None:
    img = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert ds.get_protocol("native").transform(img) is img
    paper = ds.get_protocol("paper").transform(img)
    if w * h <= 1024 * 1024:
        assert paper is img  # Kodak and anything up to 1 MP: as it is
    else:
        assert np.array_equal(paper, ds.fit_to_pixels(img, 1024 * 1024, 64, "crop"))
    crop = ds.get_protocol("crop512").transform(img)
    if min(w, h) == 512:  # Kodak: the center crop itself, no resampling
        top, left = (h - 512) // 2, (w - 512) // 2
        assert np.array_equal(crop, img[top:top + 512, left:left + 512])
    sq = ds.get_protocol("square768").transform(img)
    expect = np.asarray(Image.fromarray(img).resize((768, 768), Image.Resampling.LANCZOS))
    assert np.array_equal(sq, expect)


def test_aspect_and_float_images() -> None:
    """crop512 keeps the aspect (the bright half stays half of the crop's width only when centred:
    a landscape crop of a left-bright image is half bright); square stretches; float stays float."""
    land = ds.get_protocol("crop512").transform(pattern(1020, 678))  # short edge 678 -> 512, 770 wide
    assert abs((land[..., 0] > 120).mean() - 0.5) < 0.01
    portrait = ds.get_protocol("square512").transform(pattern(300, 900))
    assert abs((portrait[..., 0] > 120).mean() - 0.5) < 0.01
    f = pattern(1020, 678, np.float32)
    out = ds.get_protocol("crop512").transform(f)
    assert out.shape == (512, 512, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    u8 = ds.get_protocol("crop512").transform(pattern(1020, 678))
    assert np.abs(out * 255 - u8).max() < 2.0  # the float path resamples like the 8-bit one


def test_unknown_protocol_is_one_line() -> None:
    with pytest.raises(ds.DatasetError, match=r"^unknown protocol 'crop500'; available: native, paper, crop512, "
                                              r"square512, square768, square1024$"):
        ds.load_dataset("kodak-small", protocol="crop500")


def test_the_loader_applies_the_protocol(tmp_path: Path) -> None:
    Image.fromarray(pattern(5, 3)).save(tmp_path / "tiny.png")
    Image.fromarray(pattern(513, 771)).save(tmp_path / "odd.png")
    shapes = {p: [(i, im.shape) for i, im in ds.load_dataset("folder", protocol=p, path=str(tmp_path))]
              for p in ("native", "crop512", "square1024")}
    assert shapes == {"native": [("odd", (771, 513, 3)), ("tiny", (3, 5, 3))],
                      "crop512": [("odd", (512, 512, 3)), ("tiny", (512, 512, 3))],
                      "square1024": [("odd", (1024, 1024, 3)), ("tiny", (1024, 1024, 3))]}


def test_documented_patch_counts() -> None:
    """The FID/KID rule (256-px patches + the grid shifted by 128) for the protocols' sizes."""
    _, counts = doc_table("image size")
    assert set(counts) >= {"768×512", "1216×832", "512×512", "768×768", "1024×1024"}
    for text, row in counts.items():
        w, h = size(text)
        assert len(extract_patches(np.zeros((h, w, 3), np.uint8), 256)) == int(row[0]), text
    assert 24 * len(extract_patches(np.zeros((512, 768, 3), np.uint8))) == 192  # Kodak native, as HiFiC counts


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``-m protocol=native,paper`` on the default job (gaussian, kodak-small): two job dirs."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("sweep")
    out = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "-m", "protocol=native,paper",
                          f"root={root}", "name=p", "progress=false", "save.diffc=false"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "p"


def test_a_sweeps_rows_carry_the_protocol(sweep: Path) -> None:
    from analysis.results import load_results

    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    # protocol=native is the default: its folder is the defaults' (named by what differs, issue 28)
    assert len(jobs) == 2 and jobs[0].startswith("defaults-") and jobs[1].startswith("protocol-paper-"), jobs
    rows, _ = load_results(sweep)
    assert set(rows["protocol"]) == {"native", "paper"}
    by = {p: g for p, g in rows.groupby("protocol")}
    assert all(len(g) == 4 * 4 and set(g["kind"]) == {"codec", "vae"} for g in by.values())  # 4 images x (3 points + vae)
    assert by["native"]["config_hash"].nunique() == 1 and by["paper"]["config_hash"].nunique() == 1
    assert set(by["native"]["config_hash"]) != set(by["paper"]["config_hash"])
    # paper leaves 64 px images as they are: the same pixels, the same numbers, another protocol
    for col in ("image", "bpp", "psnr", "width", "height"):
        pd.testing.assert_series_equal(by["native"][col].reset_index(drop=True), by["paper"][col].reset_index(drop=True))
    assert set(by["native"]["width"]) == {64}
    job = next(p for p in sweep.iterdir() if p.name.startswith("protocol-paper"))
    assert OmegaConf.load(job / "job.yaml").protocol.name == "paper"
    assert '"protocol": "paper"' in (job / "job.json").read_text()


def kodak_job(root: Path, protocol: str, side: tuple[int, int]) -> Path:
    """A results directory with one job: 2 Kodak images under ``protocol`` at ``side`` (w, h),
    3 DiffC rate points each (rows as pipelines.evaluate writes them)."""
    from analysis.schema import JOB_JSON, SHARDS, frame

    rows = [{"model": "fake", "dataset": "kodak", "protocol": protocol, "image": image, "kind": "codec",
             "codec": "pfr", "recon_timestep": t, "config_hash": "abc", "width": side[0], "height": side[1],
             "bpp": 0.01 * (j + 1) + 0.001 * k, "psnr": 20.0 + 3 * j + k, "target_bpp": float("nan")}
            for k, image in enumerate(["kodim01", "kodim02"]) for j, t in enumerate([900, 500, 200])]
    job = root / protocol / f"protocol-{protocol}"
    (job / SHARDS).mkdir(parents=True)
    (job / JOB_JSON).write_text('{"config_hash": "abc", "model": "fake", "dataset": "kodak"}')
    frame(rows).to_parquet(job / SHARDS / "all.abc.parquet", index=False)
    return root / protocol


@pytest.mark.parametrize("protocol,side", [("crop512", (512, 512)), ("native", (768, 512)), ("paper", (768, 512))])
def test_the_overlay_matches_on_protocol(tmp_path: Path, protocol: str, side: tuple[int, int]) -> None:
    """A crop512 run on Kodak gets CoD's points (and DiffC as CoD ran it), a native or paper one
    the full-size Kodak points (MS-ILLM, ...) and none of CoD's."""
    from analysis.rd_curves import render

    results = kodak_job(tmp_path, protocol, side)
    render(results, ["psnr"], results / "figures", ["png"], reference_points=True)
    pub = pd.read_csv(results / "figures" / "kodak-rd-psnr.csv")
    pub = pub[pub["series"] == "published"]
    methods = set(pub["method"])
    if protocol == "crop512":
        assert set(pub["protocol"]) == {"crop512"} and methods == {"CoD (pixel)", "CoD (latent)", "DiffC (CoD's run)"}
        cod = pub[pub["method"] == "CoD (pixel)"]
        assert cod[["bpp", "value"]].values.tolist() == [[0.0039, 16.21]]
        assert sorted(pub.loc[pub["method"] == "DiffC (CoD's run)", "bpp"]) == [0.005, 0.02, 0.09, 0.22, 0.5, 1.47]
    else:
        assert set(pub["protocol"]) == {"native"} and "MS-ILLM" in methods
        assert not {m for m in methods if "CoD" in m}
