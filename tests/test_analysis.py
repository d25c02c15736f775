"""Analysis on results made by the pipeline: RD figures (files, plotted points = the data,
dashed VAE ceilings, labelled axes), the report tables and BD-rate (value, or NaN + reason).

The results come from ``pipelines.evaluate.run_job`` (the job function every launcher runs),
in process, for gaussian and tiny-sd15 on 2 kodak-small images of 32 px; the CLIs
``python -m analysis.rd_curves`` / ``analysis.report`` run as subprocesses.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from analysis import report  # noqa: E402
from analysis.rd_curves import plot_rd  # noqa: E402
from analysis.results import load_results, rate_points, vae_ceiling  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["gaussian", "tiny-sd15"]
FAST = ["dataset=kodak-small", "bitrate=quick", "metrics=offline", "dataset.options.ids=[kodim01,kodim05]",
        "dataset.options.size=32", "codec.chunk_bits=4", "codec.padding_bits=1", "progress=false"]
ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep directory written by the pipeline's job function (one job dir per model)."""
    from hydra import compose, initialize_config_dir

    from pipelines.common import CONF_DIR
    from pipelines.evaluate import run_job

    root = tmp_path_factory.mktemp("results")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and the 2 cores are shared
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for model in MODELS:
                cfg = compose("config", overrides=[f"model={model}", *FAST])
                run_job(cfg, root / f"model={model}")
    finally:
        torch.set_num_threads(threads)
    return root


def expected_curve(rows: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    """Mean bpp and metric per rate point, computed here from the raw rows (not via analysis)."""
    c = rows[(rows["model"] == model) & (rows["kind"] == "codec")]
    c = c[np.isfinite(c[metric].astype(float))]
    g = c.groupby("recon_timestep").agg(bpp=("bpp", "mean"), value=(metric, "mean")).reset_index()
    return g.sort_values("bpp", ignore_index=True)


def test_rd_curves_cli_writes_figures_of_the_data(results: Path) -> None:
    out = cli("analysis.rd_curves", f"results={results}")
    figs = results / "figures"
    rows = pd.concat([pd.read_parquet(p) for p in results.rglob("shards/*.parquet")], ignore_index=True)
    for metric in ("psnr", "ms_ssim"):
        stem = figs / f"kodak-small-rd-{metric}"
        for ext in ("png", "pdf"):
            assert (figs / f"{stem.name}.{ext}").stat().st_size > 1000
        with Image.open(f"{stem}.png") as im:
            assert im.size[0] > 600 and im.size[1] > 400
        assert f"kodak-small-rd-{metric}" in out.stdout
        side = pd.read_csv(f"{stem}.csv")
        assert sorted(set(side["model"])) == MODELS
        for model in MODELS:
            want = expected_curve(rows, model, metric)
            got = side[(side["model"] == model) & (side["series"] == "codec")].reset_index(drop=True)
            np.testing.assert_allclose(got["bpp"], want["bpp"], rtol=1e-12)
            np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12)
            assert list(got["recon_timestep"]) == list(want["recon_timestep"])
            assert (got["lo"] <= got["value"]).all() and (got["value"] <= got["hi"]).all()
            vae = side[(side["model"] == model) & (side["series"] == "vae")]["value"].to_numpy()
            ref = rows[(rows["model"] == model) & (rows["kind"] == "vae")][metric].astype(float)
            finite = ref[np.isfinite(ref)]
            assert len(vae) == 1
            assert vae[0] == pytest.approx(finite.mean()) if len(finite) else math.isinf(vae[0])
    # metrics without any value (lpips etc. not requested) give no figure
    assert not list(figs.glob("*-rd-lpips.*"))


def test_plot_draws_the_means_and_dashed_vae_ceilings(results: Path) -> None:
    rows, _ = load_results(results)
    fig, ax = plt.subplots()
    try:
        plotted = plot_rd(ax, rate_points(rows, "psnr"), vae_ceiling(rows, "psnr"), "psnr", "t")
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        for model in MODELS:
            want = expected_curve(rows, model, "psnr")
            x, y = lines[model].get_xydata().T
            np.testing.assert_allclose(x, want["bpp"], rtol=1e-12)
            np.testing.assert_allclose(y, want["value"], rtol=1e-12)
            np.testing.assert_allclose(plotted[model]["bpp"], want["bpp"], rtol=1e-12)
        # tiny-sd15's autoencoder is lossy: a dashed horizontal line at its mean PSNR
        vae = lines["tiny-sd15 VAE ceiling"]
        assert vae.get_linestyle() == "--"
        ref = rows[(rows["model"] == "tiny-sd15") & (rows["kind"] == "vae")]["psnr"].astype(float).mean()
        np.testing.assert_allclose(vae.get_ydata(), [ref, ref])
        assert lines["tiny-sd15 VAE ceiling"].get_color() == lines["tiny-sd15"].get_color()
        # the Gaussian backbone's identity "VAE" is lossless (PSNR inf): a legend entry, no line
        assert "gaussian VAE: lossless" in lines and lines["gaussian VAE: lossless"].get_linestyle() == "--"
        assert "bpp" in ax.get_xlabel() and "dB" in ax.get_ylabel()
        assert {t.get_text() for t in ax.get_legend().get_texts()} >= {*MODELS, "tiny-sd15 VAE ceiling"}
    finally:
        plt.close(fig)


def test_report_cli_tables(results: Path, capsys: pytest.CaptureFixture) -> None:
    from analysis import cli as acli

    # in process (the module's __main__ is this same call; rd_curves covers the subprocess path)
    acli.run(report._main, [f"results={results}"], report.OPTIONS, "analysis.report", "about")
    assert "report.md" in capsys.readouterr().out
    rows, _ = load_results(results)
    points = pd.read_csv(results / "report-points.csv")
    assert len(points) == len(MODELS) * (3 + 1)  # 3 rate points + the vae row per model
    for model in MODELS:
        want = expected_curve(rows, model, "psnr")
        got = points[(points["model"] == model) & (points["kind"] == "codec")].sort_values("bpp")
        np.testing.assert_allclose(got["bpp"], want["bpp"], rtol=1e-12)
        np.testing.assert_allclose(got["psnr"], want["value"], rtol=1e-12)
        assert (got["n"] == 2).all()
    gauss_vae = points[(points["model"] == "gaussian") & (points["kind"] == "vae")]
    assert np.isinf(gauss_vae["psnr"]).all()  # lossless stays inf, not NaN
    bd = pd.read_csv(results / "report-bdrate.csv")
    assert set(bd["metric"]) == {"psnr", "ms_ssim"} and set(bd["anchor"]) == {"gaussian"}
    # every BD-rate is a number or NaN with its reason
    assert (bd["bd_rate_pct"].notna() | bd["reason"].fillna("").str.len().gt(0)).all()
    md = (results / "report.md").read_text()
    assert "## Metrics per rate point" in md and "## BD-rate" in md and "| tiny-sd15 |" in md
    assert "lpips: not requested" in md  # NaN metric cells come with their reason


def synthetic(model: str, bpp: list[float], psnr: list[float]) -> list[dict]:
    return [{"dataset": "d", "model": model, "image": "a", "kind": "codec", "recon_timestep": 1000 - 10 * i,
             "target_bpp": math.nan, "bpp": b, "psnr": q, "kl_bits": b * 64, "delivered_bits": b * 64,
             "width": 8, "height": 8, "metric_errors": ""} for i, (b, q) in enumerate(zip(bpp, psnr))]


def test_bd_rate_value_and_nan_reasons() -> None:
    from pipelines.evaluate import frame

    bpp = [0.1, 0.2, 0.4, 0.8, 1.6]
    quality = [25.0, 28.0, 31.0, 34.0, 37.0]
    rows = frame(synthetic("a", bpp, quality) + synthetic("b", [b / 2 for b in bpp], quality)
                 + synthetic("c", [0.3], [30.0]) + synthetic("d", [5.0, 6.0, 7.0], [50.0, 51.0, 52.0]))
    bd = report.bd_table(rows, "a", "akima").set_index(["metric", "model"])
    assert bd.loc[("psnr", "b"), "bd_rate_pct"] == pytest.approx(-50.0, abs=1e-6)  # half the bits
    assert math.isnan(bd.loc[("psnr", "c"), "bd_rate_pct"])
    assert "too few distinct rate points" in bd.loc[("psnr", "c"), "reason"]
    assert math.isnan(bd.loc[("psnr", "d"), "bd_rate_pct"]) and bd.loc[("psnr", "d"), "reason"]
    # lower-is-better metrics are negated before bjontegaard (which wants higher-is-better)
    rows["lpips"] = -rows["psnr"] / 100
    bd = report.bd_table(rows, "a", "akima").set_index(["metric", "model"])
    assert bd.loc[("lpips", "b"), "bd_rate_pct"] == pytest.approx(-50.0, abs=1e-6)
    # non-monotone rates are dropped, not passed on (bjontegaard would raise)
    r, q = report.monotone(np.array([0.2, 0.1, 0.2, 0.4]), np.array([2.0, 1.0, 3.0, 4.0]))
    assert list(r) == [0.1, 0.2, 0.4] and list(q) == [1.0, 2.0, 4.0]


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from analysis import cli as acli
    from analysis import rd_curves

    for argv, needle in [([f"results={tmp_path / 'nope'}"], "does not exist"), ([f"results={tmp_path}"], "no result"),
                         ([f"results={tmp_path}", "metrics=psnr,bogus"], "unknown metrics"), ([], "results=...")]:
        with pytest.raises(SystemExit) as exc:
            acli.run(rd_curves._main, argv, rd_curves.OPTIONS, "analysis.rd_curves", "about")
        err = capsys.readouterr().err
        assert exc.value.code != 0 and err.strip().count("\n") == 0 and needle in err, err


def test_fid_figure_from_the_dataset_table(results: Path, tmp_path: Path) -> None:
    """FID/KID curves come from each job's fid.parquet (current config hash only), VAE dashed."""
    import json
    import shutil

    from analysis.rd_curves import render
    from pipelines.evaluate import FID_COLUMNS

    root = tmp_path / "r"
    shutil.copytree(results, root, ignore=shutil.ignore_patterns("figures", "report*"))
    want = {}
    for job in sorted(root.glob("model=*")):
        chash = json.loads((job / "job.json").read_text())["config_hash"]
        model = job.name.split("=")[1]
        recs = [{"model": model, "dataset": "kodak-small", "kind": "codec", "recon_timestep": t, "target_bpp": math.nan,
                 "bpp_mean": b, "fid": f, "kid": f / 1000, "n_patches": 8, "reason": "", "config_hash": chash}
                for t, b, f in [(700, 0.1, 90.0), (300, 0.3, 60.0), (100, 0.9, 30.0)]]
        recs.append({"model": model, "dataset": "kodak-small", "kind": "vae", "recon_timestep": pd.NA, "target_bpp": math.nan,
                     "bpp_mean": math.nan, "fid": 5.0, "kid": 0.005, "n_patches": 8, "reason": "", "config_hash": chash})
        # a row of an older config in the same file is ignored
        recs.append(recs[0] | {"fid": 1e6, "config_hash": "0ldc0nf1g000"})
        df = pd.DataFrame(recs, columns=list(FID_COLUMNS))
        df["recon_timestep"] = df["recon_timestep"].astype("Int64")
        df.to_parquet(job / "fid.parquet", index=False)
        want[model] = [90.0, 60.0, 30.0]
    done = render(root, ["fid", "kid"], root / "figures", ["png"])
    side = pd.read_csv(root / "figures" / "kodak-small-rd-fid.csv")
    for model, values in want.items():
        codec = side[(side["model"] == model) & (side["series"] == "codec")]
        assert list(codec["value"]) == values and list(codec["bpp"]) == [0.1, 0.3, 0.9]
        assert list(side[(side["model"] == model) & (side["series"] == "vae")]["value"]) == [5.0]
        assert done[("kodak-small", "fid")][model]["vae"] == 5.0
    assert (root / "figures" / "kodak-small-rd-kid.png").exists()
