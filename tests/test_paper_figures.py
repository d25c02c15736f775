"""The paper's figures from one command each, on what ``experiment=paper_kodak`` writes: the RD
curves under the paper's names (``analysis.rd_curves style=paper``: ``kodak-rd-curves-Qalign`` ...,
dashed VAE ceilings, FID/KID from fid.parquet) and the visual comparison
(``analysis.visual_comparison``: per image and backbone the rate point closest to a target bpp,
the same crop of each, next to the original).

The results come from the pipeline's job function (``pipelines.evaluate.run_job``) in process,
with ``experiment=paper_kodak`` (so ``save.recon_png`` is the experiment's) on three tiny
random-weight backbones, two kodak-small images of 32 px and the quick rate points. LPIPS and
Q-Align need downloaded networks, so the sweep scores them with stand-ins registered in
``pipelines.metrics.REGISTRY`` (mean absolute error / 255 and a sharpness score), and FID/KID use
test_fid's fixed random feature network: the values differ from the real metrics, the columns,
files and the analysis path are the real ones. Every expected number is recomputed here from the
job dirs' own tables, not through the analysis.
"""
from __future__ import annotations

import functools
import os
import shutil
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

from analysis import rd_curves, visual_comparison  # noqa: E402
from analysis.cli import ANALYSIS_CONF_DIR, call  # noqa: E402
from analysis.visual_comparison import choose_points, default_targets, draw, originals  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["tiny-flux", "tiny-sd15", "tiny-sd21"]
IMAGES = ["kodim01", "kodim23"]
SWEEP = ["experiment=paper_kodak", "dataset=kodak-small", f"dataset.options.ids=[{','.join(IMAGES)}]",
         "dataset.options.size=32", "bitrate=quick", "metrics.names=[psnr,lpips,qalign]", "metrics.fid_patch=16",
         "codec.channel.chunk_bits=4", "codec.channel.padding_bits=1", "progress=false"]
PAPER = {"qalign": "Qalign", "lpips": "LPIPS", "psnr": "PSNR", "fid": "FID", "kid": "KID"}
ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def mean_abs_error(ref: np.ndarray, rec: np.ndarray) -> float:
    """LPIPS stand-in: mean |ref - rec| / 255 (lower is better)."""
    return float(np.abs(ref.astype(float) - rec.astype(float)).mean() / 255)


def sharpness(ref: np.ndarray, rec: np.ndarray) -> float:
    """Q-Align stand-in (no reference): 1 + mean |horizontal gradient| / 64."""
    return float(1 + np.abs(np.diff(rec.astype(float), axis=1)).mean() / 64)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paper_kodak sweep directory (one job dir per tiny backbone) written by ``run_job``."""
    from hydra import compose, initialize_config_dir
    from test_fid import RandomFeatures

    from pipelines import evaluate, metrics
    from pipelines.common import CONF_DIR

    root = tmp_path_factory.mktemp("paper_kodak")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and the cores are shared
    try:
        with pytest.MonkeyPatch.context() as mp, initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            mp.setitem(metrics.REGISTRY, "lpips", lambda device: mean_abs_error)
            mp.setitem(metrics.REGISTRY, "qalign", lambda device: sharpness)
            mp.setattr(evaluate, "fid_kid", functools.partial(metrics.fid_kid, feature=RandomFeatures().eval()))
            for model in MODELS:
                cfg = compose("config", overrides=[f"model={model}", *SWEEP])
                assert cfg.save.recon_png and cfg.metrics.fid  # the experiment's, not set here
                evaluate.run_job(cfg, root / f"model={model}")
    finally:
        torch.set_num_threads(threads)
    return root


def job_tables(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, fid) straight from each job dir's results.parquet / fid.parquet, with the job dir."""
    rows = [pd.read_parquet(d / "results.parquet").assign(job=str(d)) for d in sorted(results.glob("model=*"))]
    fid = [pd.read_parquet(d / "fid.parquet") for d in sorted(results.glob("model=*"))]
    return pd.concat(rows, ignore_index=True), pd.concat(fid, ignore_index=True)


def test_paper_rd_curves_one_command(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "figs"
    code = call(rd_curves.rd_curves, "rd_curves", [f"results={results}", "style=paper", "formats=[png]", f"out={out}"],
                ANALYSIS_CONF_DIR)
    stdout = capsys.readouterr().out
    assert code == 0
    stems = [f"kodak-small-rd-curves-{name}" for name in PAPER.values()]
    assert stdout.splitlines()[:-1] == [f"wrote {out / s}.{{png,csv}} (kodak-small, {m}: {len(MODELS)} curves)"
                                        for s, m in zip(stems, PAPER)]
    assert stdout.splitlines()[-1].startswith(f"wrote {out}/*.json (")
    assert sorted(p.name for p in out.glob("*-rd-*")) == sorted(f"{s}.{e}" for s in stems for e in ("csv", "png"))
    for stem in stems:
        assert (out / f"{stem}.png").stat().st_size > 10_000
    rows, fid = job_tables(results)
    codec, vae = rows[rows["kind"] == "codec"], rows[rows["kind"] == "vae"]
    for metric, name in PAPER.items():
        side = pd.read_csv(out / f"kodak-small-rd-curves-{name}.csv")
        assert sorted(set(side["model"])) == MODELS
        for model in MODELS:
            got = side[(side["model"] == model) & (side["series"] == "codec")].sort_values("bpp")
            ceiling = side[(side["model"] == model) & (side["series"] == "vae")]["value"]
            if metric in ("fid", "kid"):  # the dataset-level table, one value per rate point
                f = fid[(fid["model"] == model) & (fid["kind"] == "codec")].sort_values("bpp_mean")
                want_bpp, want = f["bpp_mean"], f[metric]
                want_vae = fid.loc[(fid["model"] == model) & (fid["kind"] == "vae"), metric]
            else:
                g = codec[codec["model"] == model].groupby("recon_timestep").agg(bpp=("bpp", "mean"),
                                                                                value=(metric, "mean"))
                g = g.sort_values("bpp")
                want_bpp, want = g["bpp"], g["value"]
                want_vae = [vae.loc[vae["model"] == model, metric].mean()]
            assert len(got) == 3 and np.isfinite(got["value"]).all()
            np.testing.assert_allclose(got["bpp"], want_bpp, rtol=1e-12)
            np.testing.assert_allclose(got["value"], want, rtol=1e-12)
            np.testing.assert_allclose(ceiling, want_vae, rtol=1e-12)  # the dashed VAE line


def test_default_style_names_are_unchanged(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "figs"
    code = call(rd_curves.rd_curves, "rd_curves", [f"results={results}", "metrics=[psnr,dists]", "formats=[png]",
                                                   f"out={out}"], ANALYSIS_CONF_DIR)
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0] == f"wrote {out}/kodak-small-rd-psnr.{{png,csv}} (kodak-small, psnr: 3 curves)"
    assert lines[-1] == "dists: no finite values, no figure"  # named in metrics=: said; others: quiet
    assert sorted(p.name for p in out.glob("*-rd-*")) == ["kodak-small-rd-psnr.csv", "kodak-small-rd-psnr.png"]


def expected_targets(codec: pd.DataFrame) -> dict[str, float]:
    """Per image: median bpp of the rate points inside [max_m min, min_m max] (or the gap's middle)."""
    out = {}
    for image, c in codec.groupby("image"):
        lo = max(c[c["model"] == m]["bpp"].min() for m in set(c["model"]))
        hi = min(c[c["model"] == m]["bpp"].max() for m in set(c["model"]))
        inside = c["bpp"][(c["bpp"] >= lo) & (c["bpp"] <= hi)]
        out[image] = float(np.median(inside)) if len(inside) else (lo + hi) / 2
    return out


def check_sidecar(side: pd.DataFrame, rows: pd.DataFrame, images: list[str], models: list[str],
                  targets: dict[str, float]) -> None:
    """The sidecar's rows: grid order, each the closest rate point, numbers equal to the job's rows."""
    assert list(zip(side["image"], side["model"])) == [(i, m) for i in images for m in models]
    codec = rows[rows["kind"] == "codec"]
    for r in side.itertuples():
        assert r.target == pytest.approx(targets[r.image], rel=1e-12)
        cand = codec[(codec["model"] == r.model) & (codec["image"] == r.image)]
        dist = (cand["bpp"] - r.target).abs()
        mine = cand[cand["recon_timestep"] == r.recon_timestep]
        assert len(mine) == 1 and abs(r.bpp - r.target) == dist.min()  # no rate point is closer
        assert r.bpp == mine["bpp"].iloc[0] and r.psnr == pytest.approx(mine["psnr"].iloc[0], rel=1e-12)
        assert r.label == f"t{r.recon_timestep}"
        assert Path(r.recon) == Path(mine["job"].iloc[0]) / "recon" / r.image / f"{r.label}.png"


def test_visual_comparison_defaults(results: Path, capsys: pytest.CaptureFixture) -> None:
    code = call(visual_comparison.visual_comparison, "visual_comparison", [f"results={results}", "formats=[png]"],
                ANALYSIS_CONF_DIR)
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    figs = results / "figures"
    with Image.open(figs / "visual-comparison.png") as im:
        assert im.size[0] > 1.5 * im.size[1] > 600  # 2 rows of 4 panels
    side = pd.read_csv(figs / "visual-comparison.csv")
    rows, _ = job_tables(results)
    targets = expected_targets(rows[rows["kind"] == "codec"])
    check_sidecar(side, rows, IMAGES, MODELS, targets)
    assert (side[["crop_x", "crop_y", "crop_w", "crop_h"]].to_numpy() == [0, 0, 32, 32]).all()  # 256 clipped
    assert f"{figs / 'visual-comparison'}: 2 images x 3 models" in stdout
    assert sum(line.startswith(("kodim01: target", "kodim23: target")) for line in stdout.splitlines()) == 2


def test_visual_comparison_command_line(results: Path, tmp_path: Path) -> None:
    """As a user runs it: chosen images, models in the given order, a target bpp, a crop window."""
    out = tmp_path / "vc"
    r = subprocess.run([sys.executable, "-m", "analysis.visual_comparison", f"results={results}", "images=kodim23",
                        "models=tiny-sd21,tiny-flux", "bpp=0.6", "crop=[8,4,16,12]", "formats=png,pdf", f"out={out}",
                        "name=vc"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["vc.csv", "vc.pdf", "vc.png"]
    side = pd.read_csv(out / "vc.csv")
    rows, _ = job_tables(results)
    check_sidecar(side, rows, ["kodim23"], ["tiny-sd21", "tiny-flux"], {"kodim23": 0.6})
    assert (side[["crop_x", "crop_y", "crop_w", "crop_h"]].to_numpy() == [8, 4, 16, 12]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vc"]  # nothing written where it runs


def test_panels_are_the_crops_of_the_original_and_the_chosen_reconstructions(results: Path) -> None:
    table = visual_comparison.render(results, results / "panels", "vc", ["png"], images=["kodim01"], bpp=0.9,
                                     crop=[3, 5, 20, 10])
    refs = originals(results / "model=tiny-sd15", ["kodim01"])
    fig = draw(table, refs, MODELS, ["kodim01"], {"kodim01": (3, 5, 20, 10)})
    try:
        axes = fig.axes
        assert len(axes) == 1 + len(MODELS)
        np.testing.assert_array_equal(axes[0].images[0].get_array(), refs["kodim01"][5:15, 3:23])
        assert axes[0].get_title() == "kodim01 (original)\ntarget 0.9 bpp"
        for ax, r in zip(axes[1:], table.itertuples()):
            recon = np.asarray(Image.open(r.recon).convert("RGB"))
            np.testing.assert_array_equal(ax.images[0].get_array(), recon[5:15, 3:23])
            assert ax.get_title() == f"{r.model} ({r.label})\n{r.bpp:.3g} bpp"
        # the reconstructions differ from each other and from the original: the panels are not one image
        assert len({ax.images[0].get_array().tobytes() for ax in axes}) == len(axes)
    finally:
        plt.close(fig)


def test_default_targets_and_closest_points() -> None:
    """The rule on numbers worked out by hand (binary fractions: exact ties)."""
    def pts(spec: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
        return pd.DataFrame([{"image": i, "model": m, "bpp": b} for (i, m), bs in spec.items() for b in bs])

    # x: both reach [0.25, 1]; inside: 0.25, 0.5, 1 (a), 0.25, 0.375 (b) -> median 0.375, where a's
    # 0.25 and 0.5 tie (0.125 away) and the lower rate is taken
    # y: no overlap (a reaches 0.25 at most, b starts at 0.75) -> the gap's middle 0.5
    p = pts({("x", "a"): [0.125, 0.25, 0.5, 1.0], ("x", "b"): [0.25, 0.375, 2.0],
             ("y", "a"): [0.125, 0.25], ("y", "b"): [0.75, 1.5]})
    assert default_targets(p).to_dict() == {"x": 0.375, "y": 0.5}
    got = choose_points(p, None).set_index(["image", "model"])["bpp"].to_dict()
    assert got == {("x", "a"): 0.25, ("x", "b"): 0.375, ("y", "a"): 0.25, ("y", "b"): 0.75}
    # a given target applies to every image; a tie goes to the lower rate whatever the row order
    got = choose_points(pts({("z", "a"): [0.75, 0.25, 2.0], ("w", "a"): [0.5, 1.0]}), 0.5)
    assert got.set_index("image")["bpp"].to_dict() == {"z": 0.25, "w": 0.5} and set(got["target"]) == {0.5}


@pytest.mark.parametrize("argv, needle", [
    (["images=[kodim05]"], "images ['kodim05'] lack rate points of some model; images with all: kodim01, kodim23"),
    (["models=[tiny-sd15,sd15]"], "models ['sd15'] have no pfr rate points on kodak-small"),
    (["crop=[20,0,16,16]"], "crop=[20,0,16,16] (x, y, width, height) does not fit an image of 32x32"),
    (["crop=[1,2]"], "crop must be 4 integers"),
    (["bpp=-1"], "bpp must be a positive number"),
    (["codec=ddcm"], "no rate points of codec 'ddcm'"),
    (["DELETE"], "recon/kodim01/t700.png (1 missing): run the sweep with save.recon_png=true"),
])
def test_visual_comparison_errors_are_one_line(argv: list[str], needle: str, results: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    root = results
    if argv == ["DELETE"]:
        root = tmp_path / "r"
        shutil.copytree(results, root, ignore=shutil.ignore_patterns("figures", "panels"))
        (root / "model=tiny-sd21" / "recon" / "kodim01" / "t700.png").unlink()
        argv = ["bpp=0.1", "models=[tiny-sd21]"]
    code = call(visual_comparison.visual_comparison, "visual_comparison",
                [f"results={root}", f"out={tmp_path / 'out'}", *argv], ANALYSIS_CONF_DIR)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "out").exists()


def test_importing_the_figures_loads_neither_torch_nor_the_pipelines() -> None:
    code = ("import sys, analysis.rd_curves, analysis.visual_comparison; "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'pipelines'); "
            "assert not bad, bad; print('clean')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "clean", r.stderr

