"""Published points (analysis/data/published_points.csv, analysis.make_published) and their
overlay on the RD figures (reference_points=true), classic-codec curves, and the CompressAI JSON
export, on a synthetic results directory (pandas only: no torch, no pipeline run)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.make_published import (DEFAULT_OUT, convert, figure_protocol, load_published,
                                     matching_points)
from analysis.rd_curves import render
from analysis.schema import JOB_JSON, SHARDS, frame

SRC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "published"  # raw sources beside the checkout, if any
#: MS-ILLM on Kodak, facebookresearch/NeuralCompression projects/illm/results.csv (first, last)
ILLM_KODAK = [(0.0443454347550869, 24.729001998901367), (0.70916748046875, 33.2116584777832)]


def test_shipped_table() -> None:
    df = load_published()
    assert list(df.columns) == ["method", "dataset", "protocol", "setting", "bpp", "psnr", "ms_ssim", "lpips",
                                "dists", "fid", "kid", "source"]
    kodak = df[(df["dataset"] == "kodak") & (df["protocol"] == "native")]
    illm = kodak[(kodak["method"] == "MS-ILLM") & kodak["source"].str.startswith("facebookresearch/")]
    assert len(illm) == 6 and illm["fid"].isna().all()  # too few patches on Kodak: no FID
    for bpp, psnr in ILLM_KODAK:
        hit = illm[np.isclose(illm["bpp"], bpp, rtol=1e-9)]
        assert len(hit) == 1 and hit["psnr"].iloc[0] == pytest.approx(psnr, rel=1e-9)
    perco = kodak[kodak["method"] == "PerCo"].sort_values("bpp")
    np.testing.assert_allclose(perco[["bpp", "lpips"]].to_numpy(), [[0.0324, 0.2965], [0.1261, 0.1433]], atol=1e-4)
    sd = df[df["method"] == "SD Encoder"]  # the SD VAE ceiling: no rate
    assert len(sd) == 3 and sd["bpp"].isna().all() and (sd.loc[sd["dataset"] == "kodak", "psnr"] == 26.65).all()
    vtm = kodak[kodak["method"] == "VTM (CompressAI)"]
    assert len(vtm) == 8 and vtm["bpp"].min() == pytest.approx(0.04824490017361111)
    assert len(df[df["method"] == "StableCodec"]) == 27
    assert set(df["protocol"]) == {"native", "crop512", "unstated"}  # conf/protocol's names (+ unstated)
    assert set(df.loc[df["dataset"] == "div2k", "protocol"]) == {"native"}  # nobody published DiffC's resized DIV2K
    cod = df[df["protocol"] == "crop512"]  # CoD's README: Kodak center-cropped to 512
    assert set(cod["dataset"]) == {"kodak"} and set(cod["source"]) == {"microsoft/GenCodec:CoD/README.md"}
    pixel = cod[cod["method"] == "CoD (pixel)"].iloc[0]
    assert (pixel["bpp"], pixel["psnr"], pixel["lpips"], pixel["dists"], pixel["fid"]) == (0.0039, 16.21, 0.434, 0.186, 46.0)
    diffc = cod[cod["method"] == "DiffC (CoD's run)"].sort_values("bpp")
    assert diffc["bpp"].tolist() == [0.005, 0.02, 0.09, 0.22, 0.5, 1.47]
    assert diffc["setting"].tolist() == ["t=900", "t=500", "t=200", "t=100", "t=50", "t=20"]
    assert df["bpp"].dropna().between(0.0002, 5).all() and df["psnr"].dropna().between(8, 50).all()


@pytest.mark.skipif(not SRC.is_dir(), reason="raw published files not on this machine")
def test_conversion_reproduces_the_shipped_table() -> None:
    pytest.importorskip("openpyxl")
    pd.testing.assert_frame_equal(convert(SRC), load_published(DEFAULT_OUT), rtol=1e-9)


def sizes(w: int, h: int, n: int) -> pd.DataFrame:
    return pd.DataFrame({"image": [f"kodim{i + 1:02d}" for i in range(n)], "width": [w] * n, "height": [h] * n})


def test_figure_protocol() -> None:
    # rows written before the protocol column: from their sizes
    assert figure_protocol("kodak", pd.concat([sizes(768, 512, 2), sizes(512, 768, 1)])) == "native"
    assert figure_protocol("kodak", sizes(384, 256, 2)) == "384x256"  # resized: matches nothing
    assert figure_protocol("kodak-small", sizes(64, 64, 2)) == "64x64"
    assert figure_protocol("div2k", sizes(1216, 832, 2)) == "paper"
    full = pd.DataFrame({"image": ["0801", "0802"], "width": [2040, 1356], "height": [1356, 2040]})
    assert figure_protocol("div2k", full) == "native"
    # rows with the column: its value (Kodak under paper is Kodak native)
    assert figure_protocol("kodak", sizes(512, 512, 2).assign(protocol="crop512")) == "crop512"
    assert figure_protocol("kodak", sizes(768, 512, 2).assign(protocol="paper")) == "native"
    assert figure_protocol("div2k", sizes(1216, 832, 2).assign(protocol="paper")) == "paper"
    assert figure_protocol("kodak", sizes(512, 512, 2).assign(protocol=["crop512", "square512"])) == "mixed"
    pub = load_published()
    assert not len(matching_points(pub, "384x256", "psnr"))
    assert set(matching_points(pub, "native", "psnr", ["PerCo"], "kodak")["method"]) == {"PerCo"}
    assert set(matching_points(pub, "native", "psnr", dataset="div2k")["method"]) == {"MS-ILLM", "No-GAN", "StableCodec"}


def synthetic_results(root: Path, dataset: str, w: int, h: int) -> pd.DataFrame:
    """A job dir with 2 images: 3 DiffC rate points, a VAE row and JPEG at 2 qualities each."""
    rows = []
    for k, image in enumerate(["kodim01", "kodim02"]):
        base = {"model": "fake", "dataset": dataset, "image": image, "config_hash": "abc", "width": w,
                "height": h}
        for j, t in enumerate([700, 300, 100]):
            rows.append(base | {"kind": "codec", "codec": "pfr", "recon_timestep": t, "target_bpp": math.nan,
                                "bpp": 0.05 * (j + 1) + 0.01 * k, "psnr": 22.0 + 2 * j + k,
                                "lpips": 0.3 - 0.05 * j - 0.01 * k})
        rows.append(base | {"kind": "vae", "codec": "vae", "psnr": 30.0 + k, "lpips": 0.02})
        for q, (bpp, psnr) in {10: (0.3, 25.0), 50: (0.9, 31.0)}.items():
            rows.append(base | {"kind": "baseline", "codec": "jpeg", "quality": q, "bpp": bpp + 0.1 * k,
                                "psnr": psnr + k, "lpips": 0.4 - q / 200})
    job = root / "model=fake"
    (job / SHARDS).mkdir(parents=True)
    (job / JOB_JSON).write_text(json.dumps({"config_hash": "abc", "model": "fake", "dataset": dataset}))
    df = frame(rows)
    df.to_parquet(job / SHARDS / "all.abc.parquet", index=False)
    return df


def test_kodak_figure_overlays_illm_and_exports_compressai_json(tmp_path: Path) -> None:
    rows = synthetic_results(tmp_path, "kodak", 768, 512)
    out = tmp_path / "figures"
    render(tmp_path, ["psnr", "lpips"], out, ["png"], reference_points=True)
    side = pd.read_csv(out / "kodak-rd-psnr.csv")
    pub = side[side["series"] == "published"]
    assert set(pub["protocol"]) == {"native"} and not pub["method"].str.startswith("CoD").any()
    illm = pub[(pub["method"] == "MS-ILLM") & pub["source"].str.startswith("facebookresearch/")]
    for bpp, psnr in ILLM_KODAK:
        assert np.isclose(illm["bpp"], bpp, rtol=1e-9).sum() == 1
        assert illm.loc[np.isclose(illm["bpp"], bpp, rtol=1e-9), "value"].iloc[0] == pytest.approx(psnr, rel=1e-9)
    assert not pub["method"].isin(["StableCodec"]).all() and "StableCodec" in set(pub["method"])
    # the classic codec: mean over the 2 images per quality, lo/hi = +-1.96 SEM
    jpeg = side[side["series"] == "baseline"].sort_values("bpp")
    assert jpeg["codec"].tolist() == ["jpeg", "jpeg"] and jpeg["quality"].tolist() == [10, 50]
    np.testing.assert_allclose(jpeg["bpp"], [0.35, 0.95])
    np.testing.assert_allclose(jpeg["value"], [25.5, 31.5])
    np.testing.assert_allclose(jpeg["hi"] - jpeg["value"], 1.96 * np.std([25, 26], ddof=1) / math.sqrt(2))
    codec = side[side["series"] == "codec"]
    np.testing.assert_allclose(codec["bpp"], [0.055, 0.105, 0.155])
    np.testing.assert_allclose(codec["value"], [22.5, 24.5, 26.5])
    # CompressAI JSON: the plotted means, in CompressAI's format
    data = json.loads((out / "kodak-fake-pfr.json").read_text())
    assert set(data) == {"name", "description", "results"}  # CompressAI's keys: tests/test_clients.py
    assert set(data["results"]) == {"bpp", "psnr-rgb", "lpips"}
    np.testing.assert_allclose(data["results"]["bpp"], codec["bpp"])
    np.testing.assert_allclose(data["results"]["psnr-rgb"], codec["value"])
    lp = pd.read_csv(out / "kodak-rd-lpips.csv")
    np.testing.assert_allclose(data["results"]["lpips"], lp.loc[lp["series"] == "codec", "value"])
    base = json.loads((out / "kodak-baseline-jpeg.json").read_text())
    np.testing.assert_allclose(base["results"]["bpp"], [0.35, 0.95])
    np.testing.assert_allclose(base["results"]["psnr-rgb"], [25.5, 31.5])
    assert "2 images" in base["description"]


def test_resized_kodak_gets_no_published_points(tmp_path: Path) -> None:
    synthetic_results(tmp_path, "kodak", 384, 256)
    render(tmp_path, ["psnr"], tmp_path / "f", ["png"], reference_points=True)
    side = pd.read_csv(tmp_path / "f" / "kodak-rd-psnr.csv")
    assert not (side["series"] == "published").any() and (side["series"] == "baseline").sum() == 2
