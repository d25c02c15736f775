"""``make demo``: the embedded default end to end, offline, on CPU (a few minutes).

1. a sweep job per backbone (``gaussian`` = the analytic Gaussian prior, ``tiny-sd15`` = SD 1.5's
   architecture with tiny random weights) on ``kodak-small`` at the ``quick`` rate points: one
   progressive encode per image, real .diffc files, decoded and checked bit for bit, scored;
2. the rate-distortion figures of the results (VAE ceilings dashed);
3. a table of bpp / PSNR / encode and decode time per model and rate point;
4. the command-line round trip of one image: ``pipelines.compress`` then ``pipelines.decompress``,
   checking the decoded PNG equals the one the encoder reported.

Everything is written under ``outputs/demo`` (``root=DIR`` changes where; a Hydra app like every
command: ``conf/demo.yaml``, ``--help``).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from analysis import cli

from .common import PipelineError, one_line_errors

MODELS = ("gaussian", "tiny-sd15")


def run(*args: str) -> None:
    """Run ``python -m ARGS``; a failure stops the demo (the command printed its own error)."""
    cmd = [sys.executable, "-m", *args]
    print("$ python -m " + " ".join(args), flush=True)
    code = subprocess.call(cmd)
    if code:
        raise PipelineError(f"demo step failed (exit status {code}): python -m {' '.join(args)}")


def summary(results: Path) -> str:
    """Mean bpp / PSNR / times per model and rate point (codec rows), and the VAE ceilings."""
    from analysis.results import load_results

    rows, _ = load_results(results)
    codec = rows[rows["kind"] == "codec"]
    table = codec.groupby(["model", "recon_timestep"]).agg(
        images=("image", "size"), bpp=("bpp", "mean"), psnr_db=("psnr", "mean"), ms_ssim=("ms_ssim", "mean"),
        encode_s=("encode_s", "mean"), decode_s=("decode_s", "mean"))
    table = table.sort_values(["model", "bpp"])
    vae = rows[rows["kind"] == "vae"].groupby("model")["psnr"].mean().rename("vae_psnr_db")
    return table.to_string(float_format=lambda v: f"{v:.3f}") + "\n\nVAE round trip (ceiling):\n" + vae.to_string()


@one_line_errors
def demo(cfg: DictConfig) -> None:
    """The demo's steps; a step that fails, or a decoded PNG that differs, is an error."""
    root = str(cfg.root)
    results = Path(root) / "demo"
    run("pipelines.evaluate", "-m", "experiment=demo", f"root={root}", f"model={','.join(MODELS)}",
        "hydra/job_logging=disabled", "hydra/hydra_logging=disabled")
    run("analysis.rd_curves", f"results={results}")

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
    print("\n(tiny-sd15 has random weights: its rates and quality are meaningless; it exercises SD 1.5's\n"
          " real architecture end to end. The gaussian backbone's figures are real RD points.)")
    print(f"\nresults (parquet shards): {results}/*/shards\nfigures: {results}/figures\n"
          f"command-line round trip: {results}/cli")
    if not same:
        raise PipelineError(f"the decoded PNG {decoded} differs from the encoder's {reported}")


if __name__ == "__main__":
    cli.main(demo, "demo", verbatim=("root",))
