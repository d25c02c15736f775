"""Analysis on results made by the pipeline: RD figures (files, plotted points = the data,
dashed VAE ceilings, labelled axes), the report tables and BD-rate (value, or NaN + reason).

The results come from ``pipelines.evaluate.run_job`` (the job function every launcher runs),
in process, for gaussian and tiny-sd15 on 2 kodak-small images of 32 px; the CLIs
``python -m analysis.rd_curves`` / ``analysis.report`` (Hydra apps) run as subprocesses or, for
speed, as their task on a composed config. Importing the analysis never loads torch or pipelines.
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

from analysis import images, report, visual_comparison  # noqa: E402
from analysis.cli import ANALYSIS_CONF_DIR, call  # noqa: E402
from analysis.errors import UsageError  # noqa: E402
from analysis.rd_curves import plot_rd  # noqa: E402
from analysis.results import load_results, rate_points, vae_ceiling  # noqa: E402
from analysis.schema import FID_COLUMNS, frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["gaussian", "tiny-sd15"]
FAST = ["dataset=kodak-small", "bitrate=quick", "metrics=offline", "dataset.options.ids=[kodim01,kodim05]",
        "dataset.options.size=32", "codec.channel.chunk_bits=4", "codec.channel.padding_bits=1", "progress=false"]
ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(module: str, *args: str, cwd: Path = ROOT, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV | {"PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    if ok:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def run_task(task, config: str, overrides: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run an analysis command in process (``analysis.cli.call``): (exit status, stdout, stderr)."""
    code = call(task, config, overrides, ANALYSIS_CONF_DIR)
    out, err = capsys.readouterr()
    return code, out, err


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


LEGEND = {"gaussian": "DiffC · gaussian", "tiny-sd15": "DiffC · tiny-sd15 (random weights)"}


def test_plot_draws_the_means_and_dashed_vae_ceilings(results: Path) -> None:
    rows, _ = load_results(results)
    fig, ax = plt.subplots()
    try:
        plotted = plot_rd(ax, rate_points(rows, "psnr"), vae_ceiling(rows, "psnr"), "psnr", "t")
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        for model in MODELS:
            want = expected_curve(rows, model, "psnr")
            x, y = lines[LEGEND[model]].get_xydata().T  # the legend names codec and backbone (issue 28)
            np.testing.assert_allclose(x, want["bpp"], rtol=1e-12)
            np.testing.assert_allclose(y, want["value"], rtol=1e-12)
            np.testing.assert_allclose(plotted[model]["bpp"], want["bpp"], rtol=1e-12)
        # tiny-sd15's autoencoder is lossy: a dashed horizontal line at its mean PSNR
        vae = lines["tiny-sd15 (random weights) VAE ceiling"]
        assert vae.get_linestyle() == "--"
        ref = rows[(rows["model"] == "tiny-sd15") & (rows["kind"] == "vae")]["psnr"].astype(float).mean()
        np.testing.assert_allclose(vae.get_ydata(), [ref, ref])
        assert vae.get_color() == lines[LEGEND["tiny-sd15"]].get_color()
        # the Gaussian backbone's identity "VAE" is lossless (PSNR inf): no line, and so no name in
        # the legend (the plotted data keeps the inf); every name in the legend is a drawn line
        assert math.isinf(plotted["gaussian"]["vae"])
        assert "bpp" in ax.get_xlabel() and "dB" in ax.get_ylabel()
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert sorted(legend) == sorted([*LEGEND.values(), "tiny-sd15 (random weights) VAE ceiling"])
        assert all(len(lines[name].get_xydata()) for name in legend)
    finally:
        plt.close(fig)


def test_a_lossless_autoencoder_has_no_ceiling_on_any_metric(results: Path) -> None:
    """issue 28: the gaussian identity autoencoder has PSNR inf and MS-SSIM 1.0; neither draws a
    ceiling (MS-SSIM 1.0 is the metric's maximum), while the lossy tiny-sd15 VAE keeps its line."""
    rows, _ = load_results(results)
    ceilings = vae_ceiling(rows, "ms_ssim")
    assert ceilings.set_index("model")["lossless"].to_dict() == {"gaussian": True, "tiny-sd15": False}
    assert ceilings.set_index("model").loc["gaussian", "value"] == pytest.approx(1.0)
    fig, ax = plt.subplots()
    try:
        plot_rd(ax, rate_points(rows, "ms_ssim"), ceilings, "ms_ssim", "t", log_bpp=True)
        labels = [ln.get_label() for ln in ax.get_lines()]
        assert not [lb for lb in labels if "gaussian" in lb and "ceiling" in lb], labels
        assert "tiny-sd15 (random weights) VAE ceiling" in labels and ax.get_xscale() == "log"
    finally:
        plt.close(fig)


def test_rows_of_one_config_in_two_dirs_count_once(results: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """issue 28: one job under two directory names (the old spelling-named folders) is read once,
    and the analysis says so on stderr; n and the band are those of the images, not twice them."""
    import shutil

    once, _ = load_results(results)
    capsys.readouterr()
    twice = tmp_path / "twice"
    for job in (p.parent for p in results.rglob("job.json")):
        shutil.copytree(job, twice / job.name)
        shutil.copytree(job, twice / f"copy-{job.name}")
    rows, _ = load_results(twice)
    err = capsys.readouterr().err
    assert len(rows) == len(once) and err.count("note: config ") == len(MODELS), err
    pd.testing.assert_frame_equal(rate_points(rows, "psnr"), rate_points(once, "psnr"))
    assert (rate_points(rows, "psnr")["n"] == 2).all()


def test_report_cli_tables(results: Path, capsys: pytest.CaptureFixture) -> None:
    # in process (the module's main is this task on this config; the subprocess path is tested below)
    code, out, _ = run_task(report.report, "report", [f"results={results}"], capsys)
    assert code == 0 and f"{results / 'report'}.md: 6 rate points + 2 VAE rows, 2 BD-rate pairs" in out
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
    header = next(ln for ln in md.splitlines() if ln.startswith("| dataset | model | kind"))
    assert "lpips" not in header and "psnr" in header  # columns without any value are left out of the markdown


def synthetic(model: str, bpp: list[float], psnr: list[float]) -> list[dict]:
    return [{"dataset": "d", "model": model, "image": "a", "kind": "codec", "recon_timestep": 1000 - 10 * i,
             "target_bpp": math.nan, "bpp": b, "psnr": q, "kl_bits": b * 64, "delivered_bits": b * 64,
             "width": 8, "height": 8, "metric_errors": ""} for i, (b, q) in enumerate(zip(bpp, psnr))]


def test_a_bpp_target_is_one_rate_point_whatever_timesteps_its_images_stopped_at() -> None:
    """bitrate=bpp: each image's budget picks its own stop timestep; the target's point averages
    every image (n = 4), it is not split by timestep."""
    rows = []
    for i, image in enumerate("abcd"):
        for target, bpp in ((0.3, 0.25 + 0.01 * i), (0.6, 0.55 + 0.01 * i)):
            rows.append(synthetic("m", [bpp], [20.0 + i + 10 * target])[0]
                        | {"image": image, "target_bpp": target, "recon_timestep": 500 - 100 * i - int(target * 100)})
    points = rate_points(frame(rows), "psnr")
    assert list(points["target_bpp"]) == [0.3, 0.6] and list(points["n"]) == [4, 4]
    np.testing.assert_allclose(points["bpp"], [0.265, 0.565])
    np.testing.assert_allclose(points["value"], [24.5, 27.5])
    assert points["recon_timestep"].isna().all()
    table = report.points_table(frame(rows))
    assert list(table["target_bpp"]) == [0.3, 0.6] and list(table["n"]) == [4, 4]


def test_bd_rate_value_and_nan_reasons() -> None:
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


def test_bd_rate_against_a_classic_codec_on_psnr_and_ms_ssim() -> None:
    """anchor=jpeg: the classic codecs are curves of the BD table (named by the codec), on every
    metric with values; the points table keeps codecs and qualities apart and has the seconds."""
    bpp = [0.1, 0.2, 0.4, 0.8, 1.6]
    psnr = [25.0, 28.0, 31.0, 34.0, 37.0]
    ms_ssim = [0.90, 0.93, 0.95, 0.97, 0.98]

    def classic(codec: str, scale: float) -> list[dict]:
        return [{"dataset": "d", "model": "m", "image": "a", "kind": "baseline", "codec": codec, "quality": 10 * i,
                 "bpp": b * scale, "psnr": q, "ms_ssim": s, "encode_s": 0.5, "decode_s": 0.25,
                 "width": 8, "height": 8, "metric_errors": ""}
                for i, (b, q, s) in enumerate(zip(bpp, psnr, ms_ssim))]

    diffc = [r | {"codec": "pfr", "ms_ssim": s, "encode_s": 30.0, "decode_s": 3.0}
             for r, s in zip(synthetic("m", [2 * b for b in bpp], psnr), ms_ssim)]
    ddcm = [r | {"codec": "ddcm", "ms_ssim": s} for r, s in zip(synthetic("m", [b / 2 for b in bpp], psnr), ms_ssim)]
    rows = frame(diffc + ddcm + classic("jpeg", 1.0) + classic("webp", 0.75))
    bd = report.bd_table(rows, "jpeg", "akima").set_index(["metric", "model"])
    assert set(bd["anchor"]) == {"jpeg"} and set(bd.index.get_level_values("model")) == {"m", "m (ddcm)", "webp"}
    for metric in ("psnr", "ms_ssim"):
        assert bd.loc[(metric, "m"), "bd_rate_pct"] == pytest.approx(100.0, abs=1e-6)  # twice the bits
        assert bd.loc[(metric, "m (ddcm)"), "bd_rate_pct"] == pytest.approx(-50.0, abs=1e-6)
        assert bd.loc[(metric, "webp"), "bd_rate_pct"] == pytest.approx(-25.0, abs=1e-6)
    # the default anchor stays the first diffusion curve, never a classic codec ('jpeg' < 'm')
    assert set(report.bd_table(rows, None, "akima")["anchor"]) == {"m"}
    points = report.points_table(rows)
    assert len(points) == 4 * len(bpp)  # diffc and ddcm share recon_timesteps, jpeg and webp qualities
    jpeg = points[points["codec"] == "jpeg"].sort_values("bpp")
    np.testing.assert_allclose(jpeg["bpp"], bpp)
    np.testing.assert_allclose(jpeg["ms_ssim"], ms_ssim)
    assert (jpeg["encode_s"] == 0.5).all() and (points.loc[points["codec"] == "pfr", "encode_s"] == 30.0).all()


def test_jobs_with_other_codec_settings_are_separate_curves() -> None:
    """Two jobs of one model and codec (a sweep over codec.channel.chunk_bits, say: other config hashes)
    are two curves labelled by their hashes, never averaged into one; the BD table compares them."""
    bpp = [0.1, 0.2, 0.4, 0.8, 1.6]
    psnr = [25.0, 28.0, 31.0, 34.0, 37.0]
    a = [r | {"config_hash": "aaaaaa111111"} for r in synthetic("m", bpp, psnr)]
    b = [r | {"config_hash": "bbbbbb222222"} for r in synthetic("m", [0.9 * x for x in bpp], psnr)]
    rows = frame(a + b)
    curves = rate_points(rows, "psnr")
    assert sorted(set(curves["curve"])) == ["m #aaaaaa", "m #bbbbbb"]
    assert len(curves) == 2 * len(bpp)
    np.testing.assert_allclose(curves.loc[curves["curve"] == "m #aaaaaa", "bpp"].sort_values(), bpp)
    bd = report.bd_table(rows, None, "akima").set_index(["metric", "model"])
    assert set(bd["anchor"]) == {"m #aaaaaa"}
    assert bd.loc[("psnr", "m #bbbbbb"), "bd_rate_pct"] == pytest.approx(-10.0, abs=1e-6)
    assert len(report.points_table(rows)) == 2 * len(bpp)
    # one job per model and codec: the plain label, as before
    assert set(rate_points(frame(a), "psnr")["curve"]) == {"m"}


@pytest.mark.parametrize("argv, needle", [
    (["results=NOPE"], "results directory NOPE does not exist"),
    (["results=EMPTY"], "no result shards under EMPTY"),
    (["results=EMPTY", "metrics=[psnr,bogus]"], "unknown metrics ['bogus']"),
    ([], "missing required option(s): results=..."),
])
def test_cli_errors_are_one_line(argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from analysis import rd_curves

    subst = {"NOPE": str(tmp_path / "nope"), "EMPTY": str(tmp_path)}
    argv = [a.replace("NOPE", subst["NOPE"]).replace("EMPTY", subst["EMPTY"]) for a in argv]
    code, out, err = run_task(rd_curves.rd_curves, "rd_curves", argv, capsys)
    needle = needle.replace("NOPE", subst["NOPE"]).replace("EMPTY", subst["EMPTY"])
    assert code == 2 and err == f"error: {err[7:].strip()}\n" and needle in err, err
    assert not (tmp_path / "figures").exists()


def test_report_bad_anchor_and_method_are_one_line(results: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_task(report.report, "report", [f"results={results}", "anchor=nope"], capsys)
    assert code == 2 and err.startswith("error: anchor 'nope' not among the curves of kodak-small: gaussian, tiny-sd15")
    code, _, err = run_task(report.report, "report", [f"results={results}", "method=linear"], capsys)
    assert code == 2 and err == "error: method must be one of akima, pchip, cubic, got 'linear'\n"


def test_real_command_lines(results: Path, tmp_path: Path) -> None:
    """The Hydra apps as users run them: a job dir (its name has '=') as results, comma lists,
    --help, Hydra-level errors in one line, and nothing written where they run."""
    job = results / "model=gaussian"
    out = tmp_path / "figs, gaussian"  # a path Hydra's grammar would misread
    r = cli("analysis.rd_curves", f"results={job}", "metrics=psnr,ms_ssim", "formats=png", f"out={out}", cwd=tmp_path)
    assert r.stdout.splitlines() == [f"wrote {out}/kodak-small-rd-psnr.{{png,csv}} (kodak-small, psnr: 1 curve)",
                                     f"wrote {out}/kodak-small-rd-ms_ssim.{{png,csv}} (kodak-small, ms_ssim: 1 curve)",
                                     f"wrote {out}/*.json (1 curve in CompressAI's format)"]
    assert sorted(p.name for p in out.iterdir()) == ["kodak-small-gaussian-pfr.json", *(
        f"kodak-small-rd-{m}.{e}" for m in ("ms_ssim", "psnr") for e in ("csv", "png"))]
    side = pd.read_csv(out / "kodak-small-rd-psnr.csv")
    want = expected_curve(load_results(job)[0], "gaussian", "psnr")
    np.testing.assert_allclose(side.loc[side["series"] == "codec", "value"], want["value"], rtol=1e-12)
    r = cli("analysis.report", f"results={job}", f"out={tmp_path / 'rep'}", "method=pchip", cwd=tmp_path)
    assert r.stdout.startswith(f"{tmp_path / 'rep'}.md: 3 rate points + 1 VAE rows, 0 BD-rate pairs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs, gaussian", "rep-bdrate.csv", "rep-points.csv",
                                                          "rep.md"]  # no outputs/, .hydra/, multirun/
    for module in ("analysis.rd_curves", "analysis.report"):
        r = cli(module, "--help", cwd=tmp_path)
        assert f"python -m {module} results=DIR" in r.stdout and "results: ???" in r.stdout
        for argv, needle in [(["bogus=1"], "error: unknown option 'bogus' (see --help"),
                             (["results=a", "method=a,b"] if module == "analysis.report" else ["results=a", "debug=a,b"],
                              "is a sweep: write [a,b] for a list"),
                             (["results"], "error: cannot parse 'results'"),
                             ([f"results={tmp_path / 'nope'}"], "does not exist")]:
            r = cli(module, *argv, cwd=tmp_path, ok=False)
            assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and needle in r.stderr, (argv, r.stderr)
            assert "Traceback" not in r.stderr


def test_importing_the_analysis_loads_neither_torch_nor_the_pipelines() -> None:
    code = ("import sys; import analysis.rd_curves, analysis.report, analysis.results; "
            "from omegaconf import OmegaConf; "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'pipelines'); "
            "assert not bad, bad; assert not OmegaConf.has_resolver('job_dirname'); print('clean')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "clean", r.stderr
    # and the check can fail: importing the pipelines does load torch
    r = subprocess.run([sys.executable, "-c", "import sys, pipelines.evaluate; assert 'torch' not in sys.modules"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "AssertionError" in r.stderr


def test_fid_figure_from_the_dataset_table(results: Path, tmp_path: Path) -> None:
    """FID/KID curves come from each job's fid.parquet (current config hash only), VAE dashed."""
    import json
    import shutil

    from analysis.rd_curves import render

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


@pytest.mark.parametrize("value", ["out/model=sdxl,dataset=kodak", "it's", "C:\\x\\", "a\\'b", "a b, c", "1", "",
                                   "[x]", "${oc.env:HOME}/x", "a\\\\'"])
def test_verbatim_values_reach_the_config_as_typed(value: str) -> None:
    """What a user types for a path or caption is what the command gets (Hydra's grammar would
    read most of these as something else, or fail)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from analysis.cli import normalize

    (arg,) = normalize([f"results={value}"], verbatim=["results"])
    assert OverridesParser.create().parse_override(arg).value() == value
    assert normalize([f"other={value}"], verbatim=["results"]) == [f"other={value}"]  # other keys untouched


def test_normalize_lists_null_and_sweeps() -> None:
    from analysis.cli import normalize

    got = normalize(["metrics=psnr,lpips", "formats=png", "metrics=[a,b]", "results=null", "results=plain/dir"],
                    verbatim=["results"], lists=["metrics", "formats"])
    assert got == ["metrics=[psnr,lpips]", "formats=[png]", "metrics=[a,b]", "results=null", "results=plain/dir"]
    # in multirun a comma is a sweep: left to Hydra; an unparsable path is still quoted
    assert normalize(["-m", "metrics=a,b", "results=a,b", "results=x=y"], verbatim=["results"], lists=["metrics"]) \
        == ["-m", "metrics=a,b", "results=a,b", "results='x=y'"]


def test_codecs_of_one_model_are_separate_curves(results: Path) -> None:
    """DDCM rows of a model are their own curve ('model (ddcm)'), never averaged into DiffC's."""
    from analysis.results import load_results, rate_points

    rows, _ = load_results(results)
    peer = rows[(rows["kind"] == "codec") & (rows["model"] == "gaussian")].copy()
    peer["codec"], peer["bpp"], peer["psnr"] = "ddcm", peer["bpp"] / 4, peer["psnr"] - 3
    alone, both = rate_points(rows, "psnr"), rate_points(pd.concat([rows, peer], ignore_index=True), "psnr")
    assert set(both["curve"]) == set(alone["curve"]) | {"gaussian (ddcm)"}
    mine = both[both["curve"] == "gaussian"].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, alone[alone["curve"] == "gaussian"].reset_index(drop=True))
    ddcm = both[both["curve"] == "gaussian (ddcm)"].reset_index(drop=True)
    np.testing.assert_allclose(ddcm["bpp"], mine["bpp"] / 4)
    np.testing.assert_allclose(ddcm["value"], mine["value"] - 3)


def test_bd_rate_below_the_overlap_threshold_is_indicative() -> None:
    """BD-rate over a sliver of shared quality range is flagged indicative (value kept, overlap and
    reason given, markdown 'VALUE (indicative)'); the threshold is ``min_overlap``."""
    bpp = [0.1, 0.2, 0.4, 0.8, 1.6]
    quality = [25.0, 28.0, 31.0, 34.0, 37.0]
    rows = frame(synthetic("a", bpp, quality) + synthetic("b", [b / 2 for b in bpp], quality)
                 + synthetic("e", [b * 2 for b in bpp], [q + 10 for q in quality]))
    bd = report.bd_table(rows, "a", "akima").set_index(["metric", "model"])
    full, sliver = bd.loc[("psnr", "b")], bd.loc[("psnr", "e")]
    assert full["overlap"] == 1.0 and not full["indicative"] and full["reason"] == ""
    # e covers 35..47 dB, a 25..37 dB: they share 2 of 22 dB
    assert sliver["overlap"] == pytest.approx(2 / 22) and sliver["indicative"]
    assert math.isfinite(sliver["bd_rate_pct"])
    assert sliver["reason"] == "indicative: the curves share 9% of their quality range (< min_overlap=0.75)"
    shown = report.bd_display(bd.reset_index()).set_index(["metric", "model"])
    assert shown.loc[("psnr", "e"), "bd_rate_pct"] == f"{sliver['bd_rate_pct']:.4g} (indicative)"
    assert shown.loc[("psnr", "b"), "bd_rate_pct"] == pytest.approx(-50.0, abs=1e-6)
    md = report.markdown(report.points_table(rows), bd.reset_index(), vae_ceiling(rows, "psnr"))
    assert f"| {sliver['bd_rate_pct']:.4g} (indicative) |" in md and "min_overlap=0.75" in md
    low = report.bd_table(rows, "a", "akima", min_overlap=0.05).set_index(["metric", "model"]).loc[("psnr", "e")]
    assert not low["indicative"] and low["reason"] == "" and low["bd_rate_pct"] == sliver["bd_rate_pct"]


def test_report_min_overlap_option_and_timing_scope(results: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_task(report.report, "report", [f"results={results}", f"out={tmp_path / 'r'}",
                                                      "min_overlap=0"], capsys)
    assert code == 0 and "indicative: overlap < min_overlap=0)" in out
    bd = pd.read_csv(tmp_path / "r-bdrate.csv")
    assert list(bd.columns) == report.BD_COLUMNS and not bd["indicative"].any()
    for bad in ("1.5", "-0.1", "abc"):
        code, _, err = run_task(report.report, "report", [f"results={results}", f"min_overlap={bad}"], capsys)
        assert code == 2 and err.startswith("error: min_overlap must be a number in [0, 1]") and err.count("\n") == 1
    # encode_s of a DiffC point is the whole progressive encode of the image: the same on every
    # point of the image, and the points table says so
    points = pd.read_csv(tmp_path / "r-points.csv")
    codec = points[points["kind"] == "codec"]
    assert set(codec["encode_scope"]) == {"image"} and points.loc[points["kind"] == "vae", "encode_scope"].isna().all()
    rows, _ = load_results(results)
    per_image = rows[rows["kind"] == "codec"].groupby(["model", "image"])["encode_s"].nunique()
    assert (per_image == 1).all()
    assert "encode_scope: image = the one progressive encode" in (tmp_path / "r.md").read_text()


def test_reference_points_that_match_nothing_say_so_once(results: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from analysis import rd_curves
    from analysis.make_published import figure_protocol, load_published

    code, out, _ = run_task(rd_curves.rd_curves, "rd_curves", [f"results={results}", "reference_points=true",
                                                               "formats=png", f"out={tmp_path}"], capsys)
    notes = [ln for ln in out.splitlines() if ln.startswith("reference_points:")]
    sets = rd_curves.published_sets(load_published())
    assert "kodak (crop512, native)" in sets and "div2k (native)" in sets
    protocol = figure_protocol("kodak-small", load_results(results)[0])
    assert code == 0 and notes == [f"reference_points: no published points match kodak-small under protocol "
                                   f"{protocol} (published: {sets}; docs/published.md)"]
    code, out, _ = run_task(rd_curves.rd_curves, "rd_curves", [f"results={results}", "formats=png", f"out={tmp_path}"],
                            capsys)
    assert code == 0 and "reference_points:" not in out


def test_demo_figure_is_gaussian_against_the_classic_codecs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's two evaluate commands (pipelines/demo.py), composed as the demo runs them on 2
    images of 32 px: the figure's sweep has JPEG / WebP / AVIF curves beside gaussian DiffC and no
    random-weight curve (read off the figure's own legend); the twins are reported apart."""
    from hydra import compose, initialize_config_dir

    from analysis import rd_curves
    from pipelines import demo
    from pipelines.common import CONF_DIR
    from pipelines.evaluate import run_job

    small = FAST[3:]  # kodak-small, 2 images of 32 px, small chunks
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for args in (demo.figure_job(str(tmp_path)), demo.twins_job(str(tmp_path))):
            overrides = [a for a in args if a != "-m" and not a.startswith("hydra/")]
            models = next((a.split("=", 1)[1].split(",") for a in overrides if a.startswith("model=")), [None])
            for model in models:
                cfg = compose("config", overrides=[o for o in overrides if not o.startswith("model=")]
                              + ([f"model={model}"] if model else []) + small)
                run_job(cfg, Path(cfg.root) / cfg.name / f"model={cfg.model.name}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "demo-twins"]
    legends = []
    close = plt.close

    def keep_legend(fig: plt.Figure) -> None:
        legends.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        close(fig)

    monkeypatch.setattr(plt, "close", keep_legend)
    done = rd_curves.render(tmp_path / "demo", ["psnr", "ms_ssim"], tmp_path / "figures", ["png"])
    # the legend names DiffC and its backbone; no lossless-VAE entry on either metric (issue 28), no twin
    assert legends == [["DiffC · gaussian", "avif", "jpeg", "webp"]] * 2
    side = pd.read_csv(tmp_path / "figures" / "kodak-small-rd-psnr.csv")
    assert set(side["model"].dropna()) == {"gaussian"} and not set(side["model"].dropna()) & set(demo.TWINS)
    jpeg = side[(side["series"] == "baseline") & (side["codec"] == "jpeg")]
    assert jpeg["quality"].tolist() == [5, 10, 15, 20, 30] and jpeg["bpp"].is_monotonic_increasing
    assert list(done) == [("kodak-small", "psnr"), ("kodak-small", "ms_ssim")]
    text = demo.summary(tmp_path / "demo")
    assert "DiffC, gaussian backbone" in text and "ONE progressive encode for all 3 rate points" in text
    assert "lossless (identity autoencoder): no ceiling" in text and "jpeg" in text and "tiny" not in text
    assert "next to JPEG's" in text and "diffc_cpu_s" in text and "diffc_over_jpeg" in text
    twins = demo.twins_summary(tmp_path / "demo-twins")
    assert twins.startswith("tiny-sd15 (RANDOM WEIGHTS, round-trip check only") and "6 files (2 images x 3" in twins


# ---- the visual comparison reads the job dir alone ---------------------------------------------
def test_png_round_trip_keeps_each_precision(tmp_path: Path) -> None:
    """8-bit images come back exactly; float images as 16-bit: k / 65535 exactly, others within
    half a 16-bit step; gray is repeated to RGB."""
    rng = np.random.default_rng(5)
    u8 = rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    k = rng.integers(0, 65536, (7, 11, 3))
    exact = (k / 65535).astype(np.float32)
    (tmp_path / "u8.png").write_bytes(images.encode_png(u8))
    (tmp_path / "f.png").write_bytes(images.encode_png(exact))
    (tmp_path / "off.png").write_bytes(images.encode_png(exact + np.float32(0.3 / 65535)))
    assert images.read_png(tmp_path / "u8.png").dtype == np.uint8
    np.testing.assert_array_equal(images.read_png(tmp_path / "u8.png"), u8)
    np.testing.assert_array_equal(images.read_png(tmp_path / "f.png"), exact)
    assert np.abs(images.read_png(tmp_path / "off.png") - exact).max() <= 0.5 / 65535
    from pipelines.datasets import read_image  # the pipelines' reader (a test may import both)

    for name in ("u8.png", "f.png"):  # the same arrays as the reader of every command gives
        want = read_image(tmp_path / name)
        assert want.dtype == images.read_png(tmp_path / name).dtype
        np.testing.assert_array_equal(images.read_png(tmp_path / name), want)
    Image.fromarray(u8[..., 0]).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(images.read_png(tmp_path / "gray.png"), np.repeat(u8[..., :1], 3, axis=-1))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match=r"cannot read .*bad\.png"):
        images.read_png(tmp_path / "bad.png")


def test_point_labels_name_the_saved_pngs() -> None:
    assert [images.point_label(700, math.nan), images.point_label(300, 0.1), images.point_label(None, math.nan)] \
        == ["t700", "bpp0.1", "vae"]
    assert images.recon_png("J", "kodim01", images.ORIGINAL) == Path("J/recon/kodim01/original.png")


def test_the_visual_comparison_runs_without_the_pipelines_or_torch(tmp_path: Path) -> None:
    """A job dir as the sweep writes it (rows, reconstructions, the originals: one 8-bit, one
    16-bit) drawn by ``render`` in a fresh interpreter: the figure and the originals come out, and
    neither ``pipelines`` (nor any ``pipelines.*``) nor torch was ever imported."""
    rng = np.random.default_rng(9)
    job = tmp_path / "model=m"
    refs = {"a": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
            "b": (rng.integers(0, 65536, (20, 24, 3)) / 65535).astype(np.float32)}
    rows = []
    for image, ref in refs.items():
        (job / "recon" / image).mkdir(parents=True)
        (job / "recon" / image / "original.png").write_bytes(images.encode_png(ref))
        np.save(tmp_path / f"{image}.npy", ref)
        for t, bpp in ((700, 0.2), (300, 0.6)):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(job / "recon" / image / f"t{t}.png")
            rows.append({"model": "m", "dataset": "d", "image": image, "kind": "codec", "codec": "pfr",
                         "recon_timestep": t, "target_bpp": math.nan, "bpp": bpp, "psnr": 20 + bpp,
                         "config_hash": "h", "width": 24, "height": 20})
    (job / "shards").mkdir()
    frame(rows).to_parquet(job / "shards" / "all.h.parquet")
    (job / "job.json").write_text('{"config_hash": "h"}')
    code = ("import sys; from pathlib import Path; import numpy as np; import analysis.visual_comparison as vc; "
            "root = Path(sys.argv[1]); "
            "t = vc.render(root, root / 'figs', 'vc', ['png'], bpp=0.5, crop=[2, 3, 16, 8]); "
            "refs = vc.originals(root / 'model=m', ['a', 'b']); "
            "assert all(np.array_equal(refs[i], np.load(root / f'{i}.npy')) for i in 'ab'); "
            "assert [(r.image, r.label) for r in t.itertuples()] == [('a', 't300'), ('b', 't300')], t; "
            "bad = sorted(m for m in sys.modules if m in ('torch', 'pipelines') or m.startswith('pipelines.')); "
            "print(bad or 'clean')")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "clean", r.stdout + r.stderr[-3000:]
    assert (tmp_path / "figs" / "vc.png").stat().st_size > 5_000
    (job / "recon" / "b" / "original.png").unlink()  # a job dir from before the sweep saved originals
    with pytest.raises(UsageError, match=r"no original .*b/original\.png \(1 missing.*delete .*done\.json and rerun"):
        visual_comparison.originals(job, ["a", "b"])


def test_the_sweep_saves_each_original_as_coded(tmp_path: Path) -> None:
    """With save.recon_png the job writes recon/IMAGE/original.png = the image it coded; a job dir
    without them gets them from a rerun once done.json is deleted, its shards untouched."""
    from hydra import compose, initialize_config_dir

    from pipelines.common import CONF_DIR
    from pipelines.datasets import load_dataset
    from pipelines.evaluate import run_job

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=gaussian", *FAST, "save.recon_png=true"])
    d = run_job(cfg, tmp_path / "job")
    coded = dict(load_dataset("kodak-small", ids=["kodim01", "kodim05"], size=32))  # cropped and resized
    for image, img in coded.items():
        assert img.shape == (32, 32, 3) and img.std() > 10
        np.testing.assert_array_equal(images.read_png(images.recon_png(d, image, images.ORIGINAL)), img)
    shards = {p: p.stat().st_mtime_ns for p in (d / "shards").glob("*.parquet")}
    images.recon_png(d, "kodim05", images.ORIGINAL).unlink()
    (d / "done.json").unlink()
    run_job(cfg, d)
    np.testing.assert_array_equal(images.read_png(images.recon_png(d, "kodim05", images.ORIGINAL)), coded["kodim05"])
    assert {p: p.stat().st_mtime_ns for p in (d / "shards").glob("*.parquet")} == shards and len(shards) == 2


def test_rows_written_before_format_9_read_with_todays_channel_names(tmp_path: Path) -> None:
    """Shards of older sweeps name DiffC's channel 'diffc' (and 'diffc-sparse-sum'), or hold no codec
    column at all: they read as 'pfr' / 'sparse-sum', one curve with today's rows of the same model."""
    job = tmp_path / "job"
    (job / "shards").mkdir(parents=True)
    base = {"model": "m", "dataset": "d", "kind": "codec", "target_bpp": math.nan, "config_hash": "h",
            "width": 8, "height": 8}
    rows = [base | {"image": "a", "codec": "diffc", "recon_timestep": 700, "bpp": 0.1, "psnr": 20.0},
            base | {"image": "b", "codec": "pfr", "recon_timestep": 700, "bpp": 0.3, "psnr": 22.0},
            base | {"image": "a", "codec": "diffc-sparse-sum", "recon_timestep": 300, "bpp": 0.2, "psnr": 21.0}]
    frame(rows).to_parquet(job / "shards" / "all.h.parquet")
    (job / "job.json").write_text('{"config_hash": "h"}')
    out, _ = load_results(tmp_path)
    assert sorted(out["codec"]) == ["pfr", "pfr", "sparse-sum"]
    curve = rate_points(out, "psnr")
    assert sorted(curve["curve"]) == ["m", "m (sparse-sum)"]
    assert curve.loc[curve["curve"] == "m", "bpp"].item() == pytest.approx(0.2)  # both images, one point
