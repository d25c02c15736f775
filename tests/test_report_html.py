"""The HTML report (``analysis.report_html``) of a real gaussian + JPEG sweep of kodak-small: one
self-contained file (no network reference; nothing requested when opened in headless Chromium with
networking blocked), no console errors, figures and pictures laid out, a non-blank screenshot
(kept in outputs/test-artefacts/ for a person to look at), torch-free."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.cli import ANALYSIS_CONF_DIR, call
from analysis.report_html import load_jobs, rd_figure, report_html, spread

from headless import chromium, open_page

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
ARTEFACTS = ROOT / "outputs" / "test-artefacts"
#: the sweep: gaussian DiffC at the quick rate points and JPEG at 3 qualities, PNGs and JPEG files kept
SWEEP = ["model=gaussian", "dataset=kodak-small", "bitrate=quick", "metrics=offline", "baselines=[jpeg]",
         "baselines.jpeg.quality=[5,15,30]", "save.recon_png=true", "save.baselines=true", "name=sweep",
         "progress=false", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
#: a URL that leaves the file: http(s) or protocol-relative
REMOTE = re.compile(r"^\s*(?:https?:)?//", re.I)
CSS_URL = re.compile(r"""(?:url\(\s*["']?|@import\s+["']?)\s*(?:https?:)?//""", re.I)


class References(HTMLParser):
    """Every attribute of the page's markup that holds a URL, and the text of its style sheets
    (script text is code, not markup: what it fetches shows up in the browser test's requests)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action", "poster", "data", "srcset")]
        self.css += [v or "" for k, v in attrs if k == "style"]

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.css.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    r = subprocess.run([sys.executable, "-m", "pipelines.evaluate", f"root={root}", *SWEEP], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "sweep"


def write_report(capsys: pytest.CaptureFixture, *overrides: str) -> tuple[int, str, str]:
    code = call(report_html, "report_html", list(overrides), config_dir=ANALYSIS_CONF_DIR)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def report(sweep: Path) -> Path:
    """The report, written by the command line in a fresh interpreter that must load neither torch
    nor the pipelines."""
    code = ("import sys; from analysis.cli import ANALYSIS_CONF_DIR, call; from analysis.report_html import report_html; "
            "code = call(report_html, 'report_html', [f'results={sys.argv[1]}'], config_dir=ANALYSIS_CONF_DIR); "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'pipelines'); "
            "print(code, bad or 'clean')")
    r = subprocess.run([sys.executable, "-c", code, str(sweep)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("0 clean"), r.stdout + r.stderr[-3000:]
    assert "self-contained" in r.stdout
    return sweep / "report.html"


def test_report_is_one_self_contained_file(report: Path, sweep: Path) -> None:
    text = report.read_text(encoding="utf-8")
    refs = References()
    refs.feed(text)
    assert refs.urls and not [u for u in refs.urls if REMOTE.match(u)], refs.urls
    assert not [c for c in refs.css if CSS_URL.search(c)]
    assert "<script src" not in text and "<link" not in text and "<iframe" not in text
    # the curves (plotly, inlined), the BD-rate table, every image with its reconstructions
    assert text.count('class="fig"') == 2  # PSNR and MS-SSIM (metrics=offline)
    assert "Plotly.newPlot" in text and "kodim23" in text and "jpeg" in text
    pictures = re.findall(r'"src": "data:(image/[a-z]+);base64,', text)
    # per image: 3 DiffC points, the VAE, 3 JPEG files (and the original, below)
    assert sorted(set(pictures)) == ["image/jpeg", "image/png"] and len(pictures) == 4 * (3 + 1 + 3)
    assert text.count('"original": "data:image/png;base64,') == 4
    assert text.count("<details><summary>kodak-small / ") == 4  # the per-image tables
    assert "indicative" in text or "bd_rate_pct" in text
    assert len(text) < 8 * 2**20  # plotly.js (4.7 MB) + the data
    # provenance: the sweep recorded its run in done.json, the report shows it
    run = json.loads(next(sweep.rglob("done.json")).read_text())["provenance"]
    assert run["device"] == "cpu" and run["wall_s"] > 0 and run["git"] != ""
    assert f"<td>{run['git']}</td>" in text and f"<td>{run['torch']}</td>" in text


def test_report_in_headless_chromium(report: Path) -> None:
    """No console error, no request outside the file, figures and pictures with their size, a
    non-blank screenshot; moving the rate slider picks other reconstructions."""
    if chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; `make test` does it as root)")
    pytest.importorskip("aiohttp", reason="the DevTools client (aiohttp) is not installed")
    probe = """(() => {
      const box = e => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
      const figs = [...document.querySelectorAll('.fig .js-plotly-plot')].map(f =>
        ({size: box(f), traces: f.querySelectorAll('.scatterlayer .trace').length}));
      const pics = [...document.querySelectorAll('#grid img, #compare img')].map(i =>
        ({ok: i.complete && i.naturalWidth > 0, size: box(i)}));
      const caption = () => [...document.querySelectorAll('#grid .cap')].map(c => c.textContent).join(' | ');
      const before = caption(); const rate = document.getElementById('rate');
      rate.value = 0; rate.dispatchEvent(new Event('input'));
      const after = caption(); rate.value = rate.max; rate.dispatchEvent(new Event('input'));
      const table = document.querySelector('#points table.sortable');
      const th = [...table.querySelectorAll('th')].find(h => h.textContent === 'bpp');
      const column = () => [...table.tBodies[0].rows].map(r => parseFloat(r.cells[th.cellIndex].dataset.v));
      th.click(); const up = column(); th.click(); const down = column();
      const urls = [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'));
      return {figs, pics, before, after, urls, up, down, tables: document.querySelectorAll('table.sortable').length};
    })()"""
    run = open_page(report, probe)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "report-html-chromium.png"
    shot.write_bytes(run.screenshot)
    print(f"screenshot: {shot}")
    assert not run.errors, run.errors
    assert run.requests and not run.remote, run.remote  # the file itself, and nothing else
    v = run.value
    assert not [u for u in v["urls"] if REMOTE.match(u)], v["urls"]  # nor in what the scripts built
    # gaussian mean curve, its images, JPEG (+ the VAE ceiling where finite: MS-SSIM 1)
    assert len(v["figs"]) == 2 and all(f["size"][0] > 300 and f["size"][1] > 300 and f["traces"] >= 3
                                       for f in v["figs"]), v["figs"]
    # original + gaussian DiffC + its VAE + JPEG, and the two sides of the before/after slider
    assert len(v["pics"]) == 4 + 2 and all(p["ok"] and min(p["size"]) > 0 for p in v["pics"]), v["pics"]
    assert v["before"] != v["after"] and "t700" in v["after"], (v["before"], v["after"])
    assert v["tables"] >= 3 + 4
    finite = [b for b in v["up"] if b is not None]  # a click sorts a column (NaN last), a second reverses it
    assert len(finite) > 3 and finite == sorted(finite) and v["down"][:len(finite)] == sorted(finite, reverse=True)
    img = np.asarray(Image.open(io.BytesIO(run.screenshot)).convert("L"), dtype=float)
    assert img.shape[0] > 1000 and img.std() > 20, img.std()  # text, curves and pictures: not blank


def test_report_of_several_folders_and_of_a_sweep_without_pictures(sweep: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(sweep, bare, ignore=shutil.ignore_patterns("recon", "baselines", "report.html", "diffc"))
    code, out, err = write_report(capsys, f"results=[{sweep},{bare}]", f"out={tmp_path / 'two.html'}")
    assert code == 0, err
    assert "2 figures, 4 images in the browser (32 pictures embedded)" in out  # the bare copy adds rows only
    text = (tmp_path / "two.html").read_text()
    assert text.count(": resolved config (job.yaml)</summary>") == 2  # provenance: one entry per job
    code, out, err = write_report(capsys, f"results={bare}")
    assert code == 0 and "0 images in the browser" in out and "save.recon_png=true" in (bare / "report.html").read_text()


def test_report_downscales_pictures_above_max_side(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The size cap: 64 px pictures with max_side=32 are embedded as 32 px PNGs (the JPEG files
    too, decoded), and the browser says so; max_images and max_points cut the rest."""
    import base64

    out = tmp_path / "small.html"
    code, stdout, err = write_report(capsys, f"results={sweep}", f"out={out}", "max_side=32", "max_images=1",
                                     "max_points=2")
    assert code == 0, err
    assert "1 images in the browser (6 pictures embedded)" in stdout  # original, 2 DiffC points, VAE, 2 JPEG files
    text = out.read_text()
    uris = re.findall(r'"(?:src|original)": "data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)', text)
    assert len(uris) == 6 and {m for m, _ in uris} == {"image/png"}
    assert all(Image.open(io.BytesIO(base64.b64decode(b))).size == (32, 32) for _, b in uris)
    assert text.count("downscaled from 64x64") == 6


def test_report_draws_the_dataset_level_metrics(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """FID/KID (a job's fid.parquet, current config hash only) get figures of their own, with the VAE's."""
    import math

    import pandas as pd

    from analysis.schema import FID_COLUMNS

    root = tmp_path / "r"
    shutil.copytree(sweep, root, ignore=shutil.ignore_patterns("report.html"))
    job = next(root.rglob("job.json")).parent
    chash = json.loads((job / "job.json").read_text())["config_hash"]
    recs = [{"model": "gaussian", "dataset": "kodak-small", "protocol": "native", "kind": "codec", "recon_timestep": t,
             "target_bpp": math.nan, "bpp_mean": b, "fid": f, "kid": f / 1000, "n_patches": 8, "reason": "",
             "config_hash": chash} for t, b, f in [(700, 0.2, 91.5), (300, 0.5, 60.0), (100, 1.2, 30.0)]]
    recs.append(recs[0] | {"kind": "vae", "recon_timestep": pd.NA, "bpp_mean": math.nan, "fid": 5.25})
    recs.append(recs[0] | {"fid": 1e6, "config_hash": "0ldc0nf1g000"})  # an older config's row: ignored
    df = pd.DataFrame(recs, columns=list(FID_COLUMNS))
    df["recon_timestep"] = df["recon_timestep"].astype("Int64")
    df.to_parquet(job / "fid.parquet", index=False)
    code, out, err = write_report(capsys, f"results={root}")
    assert code == 0 and "4 figures" in out, err
    assert 'id="rd-kodak-small-fid"' in (root / "report.html").read_text()
    rows, fid, _ = load_jobs([root])
    traces = {t.name: t for t in rd_figure(rows, fid, "kodak-small", "fid", None).data}
    assert list(traces["gaussian"].y) == [91.5, 60.0, 30.0] and list(traces["gaussian"].x) == [0.2, 0.5, 1.2]
    assert set(traces["gaussian VAE ceiling"].y) == {5.25}


def test_report_bad_input_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for overrides, needle in [([f"results={tmp_path / 'nope'}"], "does not exist"),
                              ([f"results={tmp_path}"], "no result shards"),
                              ([f"results={tmp_path}", "max_images=0"], "max_images must be a positive integer")]:
        code, _, err = write_report(capsys, *overrides)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.glob("*.html"))


def test_spread_keeps_the_ends() -> None:
    assert spread(3, 5) == [0, 1, 2] and spread(10, 3) == [0, 4, 9] and spread(10, 1) == [9]
