"""``make demo``: the embedded default end to end, offline, on CPU (a few minutes).

1. the figure's job (``experiment=demo``): the ``gaussian`` backbone (the analytic Gaussian prior:
   real RD points) on ``kodak-small`` at the ``quick`` rate points, one progressive encode per
   image, real .diffc files decoded and checked, scored; JPEG / WebP / AVIF (Pillow) on the same
   images in the same job (conf/experiment/demo.yaml);
2. its rate-distortion figures (``analysis.rd_curves``): gaussian DiffC against the three classic
   codecs. The gaussian backbone's "VAE" is the identity (lossless): no ceiling line; and its
   self-contained HTML report (``analysis.report_html``: interactive curves, BD-rates, the image
   browser over the reconstructions the job kept), ``ROOT/demo/report.html``;
3. the round-trip check of the random-weight twins (``tiny-sd15`` = SD 1.5's architecture with
   tiny random weights) in a job of their own (``ROOT/demo-twins``): encoded, decoded and checked
   like real backbones, reported in the console only. Their rates and quality are meaningless,
   so they are in no figure;
4. tables of bpp / PSNR / times of the figure's curves;
5. the command-line round trip of one image: ``pipelines.compress`` then ``pipelines.decompress``,
   checking the decoded PNG equals the one the encoder reported.

Everything is written under ``ROOT/demo`` and ``ROOT/demo-twins`` (``root=DIR``, default
``outputs``; a Hydra app like every command: ``conf/demo.yaml``, ``--help``).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from analysis import cli

from .common import CONF_DIR, PipelineError, one_line_errors

#: random-weight twins: round-trip checks, never plotted
TWINS = ("tiny-sd15",)
QUIET = ("hydra/job_logging=disabled", "hydra/hydra_logging=disabled")


def figure_job(root: str) -> list[str]:
    """``pipelines.evaluate`` arguments of the figure's job (gaussian + JPEG/WebP/AVIF): ROOT/demo."""
    return ["experiment=demo", f"root={root}", *QUIET]


def twins_job(root: str) -> list[str]:
    """``pipelines.evaluate`` arguments of the twins' round-trip job: the default quick job
    (kodak-small, quick rate points, no classic codecs) per twin, in ROOT/demo-twins."""
    return ["-m", f"root={root}", "name=demo-twins", f"model={','.join(TWINS)}", *QUIET]


def run(*args: str) -> None:
    """Run ``python -m ARGS``; a failure stops the demo (the command printed its own error)."""
    cmd = [sys.executable, "-m", *args]
    print("$ python -m " + " ".join(args), flush=True)
    code = subprocess.call(cmd)
    if code:
        raise PipelineError(f"demo step failed (exit status {code}): python -m {' '.join(args)}")


def table(df: pd.DataFrame) -> str:
    return df.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def summary(results: Path) -> str:
    """The figure's curves as numbers: DiffC per rate point (decode time per point, the encode time
    once: one progressive encode serves every point), the VAE ceiling, the classic codecs per quality."""
    from analysis.report import points_table
    from analysis.results import load_results

    rows, _ = load_results(results)
    points = points_table(rows).rename(columns={"psnr": "psnr_db"})
    out = []
    for model, p in points[points["kind"] == "codec"].groupby("model"):
        out.append(f"DiffC, {model} backbone, {p['dataset'].iloc[0]}: mean over images per rate point")
        out.append(table(p[["recon_timestep", "n", "bpp", "kl_bpp", "psnr_db", "ms_ssim", "decode_s"]]))
        times = encode_times(rows, model)
        out.append(f"encode: {times['diffc_s'].mean():.1f} s per image, ONE progressive encode for all {len(p)} "
                   f"rate points; per image, next to JPEG's (one file, mean over its qualities):")
        out.append(table(times))
        vae = points[(points["kind"] == "vae") & (points["model"] == model)]["psnr_db"]
        ceiling = "lossless (identity autoencoder): no ceiling" if len(vae) and vae.iloc[0] == float("inf") \
            else f"{vae.mean():.2f} dB PSNR"
        out.append(f"VAE round trip: {ceiling}\n")
    base = points[points["kind"] == "baseline"]
    if len(base):
        out.append("Classic codecs on the same images (Pillow): mean over images per quality setting")
        out.append(table(base[["codec", "quality", "n", "bpp", "psnr_db", "ms_ssim", "encode_s", "decode_s"]]))
    return "\n".join(out)


def encode_times(rows: pd.DataFrame, model: str) -> pd.DataFrame:
    """Per image: DiffC's encode seconds (wall, and the process's CPU seconds: far less CPU than
    wall x threads = a busy machine) next to JPEG's for one file (mean over its qualities; NaN
    without JPEG rows), and their ratio."""
    codec = rows[(rows["kind"] == "codec") & (rows["model"] == model)].groupby("image")[["encode_s", "encode_cpu_s"]].first()
    jpeg = rows[(rows["kind"] == "baseline") & (rows["codec"] == "jpeg")].groupby("image")["encode_s"].mean()
    out = pd.DataFrame({"diffc_s": codec["encode_s"], "diffc_cpu_s": codec["encode_cpu_s"],
                        "jpeg_s": jpeg.reindex(codec.index)})
    out["diffc_over_jpeg"] = out["diffc_s"] / out["jpeg_s"]
    return out.reset_index()


def twins_summary(results: Path) -> str:
    """One line per random-weight twin: what was encoded, decoded and checked (rates in bpp as
    written, no quality: the weights are random)."""
    from analysis.results import load_results

    rows, _ = load_results(results)
    lines = []
    for model, c in rows[rows["kind"] == "codec"].groupby("model"):
        drift = c["drift_xt_max"].astype(float).max()
        lines.append(f"{model} (RANDOM WEIGHTS, round-trip check only; rates and quality meaningless, in no "
                     f"figure): {len(c)} files ({c['image'].nunique()} images x {c['recon_timestep'].nunique()} "
                     f"rate points), {c['bpp'].min():.2f}-{c['bpp'].max():.2f} bpp, decoded by the decoder "
                     f"with max |x_t - encoder's x_t| = {drift:.3g}")
    return "\n".join(lines)


@one_line_errors
def demo(cfg: DictConfig) -> None:
    """The demo's steps; a step that fails, or a decoded PNG that differs, is an error."""
    root = str(cfg.root)
    results, twins = Path(root) / "demo", Path(root) / "demo-twins"
    run("pipelines.evaluate", *figure_job(root))
    run("analysis.rd_curves", f"results={results}")
    run("analysis.report_html", f"results={results}")
    run("pipelines.evaluate", *twins_job(root))

    image = results / "cli" / "kodim23.png"
    from PIL import Image

    from pipelines.datasets import load_dataset

    image.parent.mkdir(parents=True, exist_ok=True)
    img = dict(load_dataset("kodak-small"))["kodim23"]
    Image.fromarray(img).save(image)
    diffc_file, reported, decoded = (results / "cli" / n for n in ("kodim23.diffc", "kodim23-encoder.png", "kodim23-decoded.png"))
    run("pipelines.compress", "model=gaussian", f"input={image}", f"output={diffc_file}", "bpp=0.5",
        f"recon_output={reported}", "progress=false")
    run("pipelines.decompress", f"input={diffc_file}", f"output={decoded}", "progress=false")
    same = reported.read_bytes() == decoded.read_bytes()
    print(f"decoded PNG {'equals' if same else 'DIFFERS FROM'} the encoder's reported PNG")

    print("\n" + summary(results))
    print("\n" + twins_summary(twins))
    print(f"\nresults (parquet shards): {results}/*/shards (figure), {twins}/*/shards (twins)\n"
          f"figures: {results}/figures\nHTML report (open in a browser): {results / 'report.html'}\n"
          f"command-line round trip: {results}/cli")
    if not same:
        raise PipelineError(f"the decoded PNG {decoded} differs from the encoder's {reported}")


if __name__ == "__main__":
    cli.main(demo, "demo", verbatim=("root",), config_dir=CONF_DIR)
