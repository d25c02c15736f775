"""The evaluation pipeline end to end, as real ``python -m pipelines.evaluate`` subprocesses.

The sweep is the issue's own command, ``-m model=gaussian,tiny-sd15 dataset=kodak-small
bitrate=quick metrics=offline`` (4 images of 64x64 px, the models' default codec settings; about
20 s on an idle 2-core CPU). Checked:
- row count = images x bitrates x models codec rows + images x models VAE rows, every docs/design.md
  section 2 column, bpp = 8 x size of the written .diffc file / pixels, NaN metrics with reasons;
- on a smaller version of the sweep (2 images of 32 px, 2^5 candidates per chunk): SIGKILL after
  its first shard appears, then a rerun gives the same rows as the uninterrupted run (all columns
  but timings), no duplicates, no partial shard, no temp files; and the joblib, submitit_local and
  (when installed) ray launchers give the same rows as the basic one;
- a done job is skipped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.results import load_results

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["gaussian", "tiny-sd15"]
IMAGES = ["kodim01", "kodim05", "kodim15", "kodim23"]  # conf/dataset/kodak-small.yaml
SIZE = 64
STOPS = [700, 300, 100]  # conf/bitrate/quick.yaml
ISSUE = ["dataset=kodak-small", "bitrate=quick", "metrics=offline", "progress=false"]
SWEEP = ["-m", f"model={','.join(MODELS)}", *ISSUE]
#: cheaper still, for the single-purpose tests: 1 image of 32 px, 2^5 candidates per chunk
FAST = ["dataset.options.ids=[kodim05]", "dataset.options.size=32", "codec.channel.chunk_bits=4", "codec.channel.padding_bits=1",
        "progress=false"]
#: docs/design.md §2
DESIGN_COLUMNS = ["model", "dataset", "image", "kind", "recon_timestep", "step_index", "bpp", "bits_total",
                  "bits_payload", "bits_side", "bits_header", "kl_bits", "psnr", "ms_ssim", "lpips", "dists",
                  "qalign", "encode_s", "decode_s", "config_hash"]
TIMING = ["encode_s", "decode_s", "encode_cpu_s", "decode_cpu_s"]
KEY = ["model", "dataset", "image", "kind", "recon_timestep"]
ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                    "RAY_USAGE_STATS_ENABLED": "0"}


def run_job_one_thread(cfg, job_dir: Path) -> None:
    """``run_job`` in this process at one torch thread (the thread count it restores after)."""
    import torch

    from pipelines.evaluate import run_job

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_job(cfg, job_dir)
    finally:
        torch.set_num_threads(threads)


def evaluate_cmd(args: list[str], root: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.evaluate", *args, f"root={root}"]


def evaluate(args: list[str], root: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(evaluate_cmd(args, root), cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stderr[-3000:]}"
    return out


def job_dirs(root: Path) -> dict[str, Path]:
    """{model: job dir} of a sweep root."""
    return {json.loads(p.read_text())["model"]: p.parent for p in root.rglob("job.json")}


def comparable(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows without timings, in a canonical order."""
    return rows.drop(columns=TIMING).sort_values(KEY, ignore_index=True)


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert not got.duplicated(KEY).any(), "duplicate rows"
    pd.testing.assert_frame_equal(comparable(got), comparable(want), check_exact=True)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp-*")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The uninterrupted sweep (basic launcher): (root, rows)."""
    root = tmp_path_factory.mktemp("sweep")
    evaluate(SWEEP, root)
    rows, _ = load_results(root)
    return root, rows


def test_sweep_rows_and_columns(reference: tuple[Path, pd.DataFrame]) -> None:
    root, rows = reference
    assert set(DESIGN_COLUMNS) <= set(rows.columns)
    codec, vae = rows[rows["kind"] == "codec"], rows[rows["kind"] == "vae"]
    assert len(codec) == len(IMAGES) * len(STOPS) * len(MODELS)
    assert len(vae) == len(IMAGES) * len(MODELS)
    assert len(rows) == len(codec) + len(vae) and not rows.duplicated(KEY).any()
    assert sorted(set(rows["model"])) == sorted(MODELS) and set(rows["dataset"]) == {"kodak-small"}
    for (model, image), grp in codec.groupby(["model", "image"]):
        assert sorted(grp["recon_timestep"], reverse=True) == STOPS
        by_t = grp.sort_values("recon_timestep", ascending=False)
        # progressive: lower timestep = more steps = more bits
        assert np.all(np.diff(by_t["step_index"].to_numpy(int)) > 0)
        assert np.all(np.diff(by_t["bits_total"].to_numpy(int)) >= 0)
        assert np.all(np.diff(by_t["kl_bits"].to_numpy(float)) > 0)
    # every codec row's rate is its real file
    dirs = job_dirs(root)
    for r in codec.itertuples():
        f = dirs[r.model] / "diffc" / r.image / f"t{r.recon_timestep}.diffc"
        size = f.stat().st_size
        assert r.bits_total == 8 * size
        assert r.bpp == pytest.approx(8 * size / (r.width * r.height), rel=1e-12)
        assert r.bits_header + r.bits_side + r.bits_payload == pytest.approx(r.bits_total, abs=1e-6)
        assert r.bits_header > 0 and r.bits_payload > 0 and r.kl_bits > 0
        assert r.timestep <= r.recon_timestep and r.encode_s > 0 and r.decode_s > 0
        assert r.encode_cpu_s > 0 and r.decode_cpu_s > 0  # CPU seconds next to the wall seconds
        assert (r.width, r.height) == (SIZE, SIZE)
    # the vae rows: no rate, a reconstruction score
    assert vae["bpp"].isna().all() and vae["recon_timestep"].isna().all() and vae["kl_bits"].isna().all()
    # the decoder's image is scored, and it is the encoder's here (same machine: bit-exact)
    assert (codec["drift_xt_max"] == 0).all() and (codec["drift_psnr_db"] == np.inf).all()
    assert vae["drift_xt_max"].isna().all() and vae["drift_psnr_db"].isna().all()
    assert (vae.loc[vae["model"] == "gaussian", "psnr"] == np.inf).all()  # identity "VAE": lossless
    assert np.isfinite(vae.loc[vae["model"] == "tiny-sd15", "psnr"]).all()
    # metrics: requested ones computed; every NaN has its reason
    assert np.isfinite(codec["psnr"]).all() and np.isfinite(codec["ms_ssim"]).all()
    for r in rows.itertuples():
        for m in ("psnr", "ms_ssim", "lpips", "dists", "qalign"):
            if pd.isna(getattr(r, m)):
                assert f"{m}: " in r.metric_errors, (m, r.metric_errors)
    assert (rows["metric_errors"].str.contains("lpips: not requested")).all()
    # one config hash per job, the one in job.json and done.json
    for model, d in dirs.items():
        chash = json.loads((d / "job.json").read_text())["config_hash"]
        assert set(rows.loc[rows["model"] == model, "config_hash"]) == {chash}
        done = json.loads((d / "done.json").read_text())
        assert done["config_hash"] == chash and done["rows"] == len(IMAGES) * (len(STOPS) + 1)
        assert (d / "job.yaml").exists()
        whole = pd.read_parquet(d / "results.parquet")  # the job's table, once complete
        assert_same_rows(whole, rows[rows["model"] == model])
        assert len(whole) == done["rows"]
        assert sorted(p.name.split(".")[0] for p in (d / "shards").glob("*.parquet")) == IMAGES
    assert not temp_files(root)


def test_done_job_is_skipped(reference: tuple[Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_dir

    import pipelines.evaluate as ev
    from pipelines.common import CONF_DIR
    from pipelines.evaluate import run_job

    def no_model(*args, **kwargs):
        raise AssertionError("a done job loaded its model")

    monkeypatch.setattr(ev, "build_codec", no_model)
    root, _ = reference
    d = job_dirs(root)["tiny-sd15"]
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny-sd15", *ISSUE, f"root={root}"])
    run_job(cfg, d)  # would load the model (and fail) if it did not skip
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} == before


#: kill/resume and launchers: the same two-model sweep on 2 images of 32 px with cheap chunks
SMALL_SWEEP = ["-m", f"model={','.join(MODELS)}", "dataset.options.ids=[kodim01,kodim05]", *FAST[1:]]


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """SMALL_SWEEP through the basic launcher: the rows a resumed run and every launcher must give."""
    root = tmp_path_factory.mktemp("small")
    evaluate(SMALL_SWEEP, root)
    rows, _ = load_results(root)
    assert len(rows) == len(MODELS) * 2 * (len(STOPS) + 1)
    return rows


def test_killed_sweep_resumes_to_the_same_rows(small_reference: pd.DataFrame, tmp_path: Path) -> None:
    want = small_reference
    n_images = 2
    root = tmp_path / "killed"
    proc = subprocess.Popen(evaluate_cmd(SMALL_SWEEP, root), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(root.rglob("shards/*.parquet")):
            assert proc.poll() is None, f"sweep ended before its first shard: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no shard after 300 s"
            time.sleep(0.02)
        assert proc.poll() is None, "sweep finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    shards = list(root.rglob("shards/*.parquet"))
    assert 1 <= len(shards) < len(MODELS) * n_images, "killed midway"
    assert len(list(root.rglob("done.json"))) < len(MODELS)
    for s in shards:  # shards are written atomically: whatever is there is whole
        assert len(pd.read_parquet(s)) == len(STOPS) + 1
    # what a kill in the middle of a write leaves: a temp file, never a shard
    partial = shards[0].parent / f".{shards[0].name}.tmp-999999"
    partial.write_bytes(b"PAR1 partial")
    evaluate(SMALL_SWEEP, root)
    got, _ = load_results(root)
    assert_same_rows(got, want)
    assert not temp_files(root), temp_files(root)
    assert len(list(root.rglob("shards/*.parquet"))) == len(MODELS) * n_images
    assert len(list(root.rglob("done.json"))) == len(MODELS)


LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
    "ray": ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
            "+hydra.launcher.ray.init.include_dashboard=false"],
}
PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_local": "hydra_plugins.hydra_submitit_launcher",
           "ray": "hydra_plugins.hydra_ray_launcher"}


def test_local_launcher_jobs_get_their_share_of_the_cores() -> None:
    """jobs at once x threads per job <= cores for the local launchers; SLURM jobs take their
    allocation; the basic launcher leaves torch's default."""
    from pipelines.evaluate import job_threads

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert job_threads({"_target_": joblib, "n_jobs": 2}, 16, {}) == 8
    assert job_threads({"_target_": joblib, "n_jobs": 2}, 2, {}) == 1
    assert job_threads({"_target_": joblib, "n_jobs": -1}, 16, {}) == 1  # joblib's default: a job per core
    assert job_threads({"_target_": joblib, "n_jobs": -5}, 16, {}) == 1  # 12 jobs at once
    assert job_threads({"_target_": joblib, "n_jobs": -13}, 16, {}) == 4  # 4 jobs at once
    assert job_threads({"_target_": joblib, "n_jobs": 64}, 16, {}) == 1
    assert job_threads({"_target_": local, "cpus_per_task": None}, 16, {}) == 1
    assert job_threads({"_target_": local, "cpus_per_task": 4}, 16, {}) == 4
    assert job_threads({"_target_": slurm}, 64, {"SLURM_CPUS_PER_TASK": "8"}) == 8
    assert job_threads({"_target_": slurm}, 64, {}) is None
    assert job_threads({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 16, {}) is None


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_launchers_give_the_same_rows(launcher: str, small_reference: pd.DataFrame, tmp_path: Path) -> None:
    pytest.importorskip(PLUGINS[launcher], reason=f"{launcher} launcher not installed (ray: pip install '.[ray]')")
    if launcher == "ray":
        pytest.importorskip("ray", reason="ray not installed (pip install '.[ray]')")
    want = small_reference
    evaluate([*SMALL_SWEEP, *LAUNCHERS[launcher]], tmp_path)
    got, _ = load_results(tmp_path)
    assert_same_rows(got, want)
    assert sorted(job_dirs(tmp_path)) == sorted(MODELS)


def test_bpp_targets_pick_real_files(tmp_path: Path) -> None:
    """bitrate=bpp: per target, the highest-rate point whose real file fits; none fits -> NaN + reason."""
    from hydra import compose, initialize_config_dir

    from pipelines.common import CONF_DIR

    targets = [0.001, 1.0, 4.0]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=gaussian", *FAST, "bitrate=bpp",
                                           f"bitrate.bpp=[{','.join(map(str, targets))}]"])
    run_job_one_thread(cfg, tmp_path)
    rows, _ = load_results(tmp_path)
    codec = rows[rows["kind"] == "codec"].sort_values("target_bpp")
    assert list(codec["target_bpp"]) == targets
    none = codec.iloc[0]
    assert pd.isna(none["bpp"]) and pd.isna(none["psnr"]) and "no rate point at or below" in none["metric_errors"]
    for r in codec.iloc[1:].itertuples():
        size = (tmp_path / "diffc" / r.image / f"bpp{r.target_bpp:g}.diffc").stat().st_size
        assert r.bpp == 8 * size / (32 * 32) <= r.target_bpp
        assert r.recon_timestep in cfg.bitrate.stop_timesteps and np.isfinite(r.psnr)
    assert codec.iloc[2]["bpp"] >= codec.iloc[1]["bpp"]


def test_failing_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    """Multirun: a job that fails is reported (one line + failed.json), the others still run, exit != 0."""
    out = subprocess.run(evaluate_cmd(["-m", "model=gaussian", "bitrate.stop_timesteps=[0],[700]", *FAST], tmp_path),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "error: job bitrate.stop_timesteps-0__" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1].startswith("error: job bitrate.stop_timesteps-0__")  # ours, last
    assert "HYDRA_FULL_ERROR" not in out.stderr  # debug=true is our switch
    (bad,) = [p.parent for p in tmp_path.rglob("failed.json")]
    assert "positive integers" in json.loads((bad / "failed.json").read_text())["error"]
    (good,) = [p.parent for p in tmp_path.rglob("done.json")]
    assert "stop_timesteps-700__" in good.name and len(list((good / "shards").glob("*.parquet"))) == 1


def test_one_metric_list() -> None:
    """The metric registry, the results columns and the metric configs all follow analysis.schema."""
    from omegaconf import OmegaConf

    from analysis.schema import COLUMNS, DATASET_METRICS, FID_COLUMNS, METRICS, PER_IMAGE_METRICS, frame
    from pipelines.common import CONF_DIR
    from pipelines.metrics import REGISTRY, MetricSet

    assert tuple(REGISTRY) == PER_IMAGE_METRICS == ("psnr", "ms_ssim", "lpips", "dists", "qalign")
    assert DATASET_METRICS == ("fid", "kid") and set(METRICS) == {*PER_IMAGE_METRICS, *DATASET_METRICS}
    assert [c for c in COLUMNS if c in METRICS] == list(PER_IMAGE_METRICS)
    assert [c for c in FID_COLUMNS if c in METRICS] == list(DATASET_METRICS)
    assert list(frame([{"psnr": 30.0}]).columns) == list(COLUMNS)
    for path in (CONF_DIR / "metrics").glob("*.yaml"):
        assert set(OmegaConf.load(path).names) <= set(PER_IMAGE_METRICS), path
    with pytest.raises(ValueError, match=r"unknown metrics \['fid'\]; available: psnr, ms_ssim, lpips, dists, qalign"):
        MetricSet(["fid"])
    values, reasons = MetricSet(["psnr"]).compute(np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 1, np.uint8))
    assert values["psnr"] == pytest.approx(10 * np.log10(255**2)) and set(values) == set(PER_IMAGE_METRICS)
    assert reasons == {m: "not requested" for m in PER_IMAGE_METRICS if m != "psnr"}


@pytest.mark.parametrize("args, needle", [
    (["-m", "model=gaussian,nope"], "error: unknown model 'nope'; available: "),
    (["bogus=1"], "error: unknown option 'bogus' (see --help"),
    (["dataset=nope"], "error: unknown dataset 'nope'; available: "),
    (["model=gaussian,tiny-sd15"], "error: 'model=gaussian,tiny-sd15' is a sweep"),
])
def test_evaluate_command_line_errors_are_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    out = subprocess.run(evaluate_cmd([*args, "dry_run=true"], tmp_path / "root"), cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith(needle) and len(out.stderr.strip().splitlines()) == 1, \
        out.stderr
    assert not list(tmp_path.iterdir())  # no job dir, no Hydra output dir


def test_metric_set_uses_a_scorer_it_is_given() -> None:
    """A quality target's scorer handed to the job's metrics is the one they score with (the
    metric's model is not loaded twice)."""
    from pipelines.metrics import MetricSet

    calls = []
    given = lambda ref, rec: calls.append(1) or 42.0
    values, _ = MetricSet(["psnr"], loaded={"psnr": given}).compute(np.zeros((16, 16, 3), np.uint8),
                                                                   np.full((16, 16, 3), 1, np.uint8))
    assert values["psnr"] == 42.0 and calls == [1]
