"""Job directories of a sweep: flat, safe names (a slug of the overrides + a hash), the weights'
location out of names and config hashes, and the docs' duckdb / pandas one-liners on a real sweep."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from pipelines.common import CONF_DIR
from pipelines.evaluate import LOCATION_KEYS, SLUG_CHARS, job_dirname

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONPATH": str(ROOT)}
SAFE = re.compile(r"[A-Za-z0-9._-]+")


def evaluate(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pipelines.evaluate", *args, "progress=false"], cwd=cwd, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("overrides", [
    "", "model=sd15", "dataset.options.path=/a/b/c", "dataset.options.path=../../x,model=gaussian",
    "caption=a cat\\, sleeping/on a mat,model=sd15", "metrics.names=[psnr,lpips]", "codec.channel.chunk_bits=8" * 40])
def test_job_dirnames_are_one_safe_component(overrides: str) -> None:
    name = job_dirname(overrides, "0123456789ab")
    assert SAFE.fullmatch(name) and name not in (".", "..") and not name.startswith("."), name
    slug, _, digest = name.rpartition("-")
    assert re.fullmatch(r"[0-9a-f]{8}", digest) and len(slug) <= SLUG_CHARS
    assert "=" not in name and "/" not in name


def test_names_that_sanitise_alike_stay_apart() -> None:
    a, b = job_dirname("dataset.options.path=/a/b", "aaaa"), job_dirname("dataset.options.path=_a_b", "bbbb")
    assert a != b and a.rpartition("-")[0] == b.rpartition("-")[0]
    assert job_dirname("model=sd15", "aaaa") == job_dirname("model=sd15", "aaaa")  # deterministic


def test_one_config_one_directory_however_spelled(tmp_path: Path) -> None:
    """The bare command and the spelled-out defaults (issue 28) are one job: one config hash, one
    directory; a key given at its default value adds nothing; another value is named and hashed."""
    common = ["dry_run=true", f"root={tmp_path / 'out'}"]
    bare = job_line(evaluate(tmp_path, *common).stdout)
    spelled = job_line(evaluate(tmp_path, *common, "model=gaussian", "dataset=kodak-small", "bitrate=quick",
                                "metrics=offline", "codec=pfr", "codec.channel.chunk_bits=8").stdout)
    other = job_line(evaluate(tmp_path, *common, "model=gaussian", "codec.channel.chunk_bits=6").stdout)
    assert bare == spelled and Path(bare["dir"]).name == f"defaults-{bare['config_hash'][:8]}", (bare, spelled)
    assert Path(other["dir"]).name == f"codec.channel.chunk_bits-6-{other['config_hash'][:8]}" != Path(bare["dir"]).name


def test_location_keys_are_excluded_from_directory_names() -> None:
    excluded = set(OmegaConf.load(CONF_DIR / "config.yaml").hydra.job.config.override_dirname.exclude_keys)
    assert set(LOCATION_KEYS) <= excluded


def job_line(out: str) -> dict[str, str]:
    (line,) = [ln for ln in out.splitlines() if ln.startswith("job ")]
    return dict(re.findall(r"(config_hash|dir)=(\S+)", line))


def test_moving_the_weights_keeps_the_job(tmp_path: Path) -> None:
    """Two jobs that differ only in where the weights live: the same directory and config hash."""
    common = ["model=sdxl", "dataset=kodak-small", "dry_run=true", f"root={tmp_path / 'out'}"]
    a = job_line(evaluate(tmp_path, *common, "model.options.path=/data/models/sdxl-base",
                          "model.options.refiner_path=/data/models/sdxl-refiner").stdout)
    b = job_line(evaluate(tmp_path, *common, "model.options.path=/scratch/me/x/y/z/sdxl").stdout)
    c = job_line(evaluate(tmp_path, *common, "model.options.revision=abc").stdout)
    assert a == b, (a, b)
    assert a["dir"] != c["dir"] and a["config_hash"] != c["config_hash"]  # the weights' identity counts
    assert Path(a["dir"]).parent == tmp_path / "out" / "default"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-job sweep (gaussian, two chunk sizes) on a folder dataset given by an absolute path,
    as outputs/paper_kodak: the directory the docs' queries read."""
    cwd = tmp_path_factory.mktemp("sweep")
    images = cwd / "data" / "my images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(images / f"{name}.png")
    evaluate(cwd, "-m", "model=gaussian", "codec.channel.chunk_bits=6,7", "dataset=folder",
             f"dataset.options.path={images}", "bitrate=quick", "metrics=offline", "root=outputs",
             "name=paper_kodak")
    return cwd


def test_sweep_jobs_are_flat(sweep: Path) -> None:
    jobs = sorted(p.parent for p in (sweep / "outputs" / "paper_kodak").rglob("results.parquet"))
    assert len(jobs) == 2 and all(j.parent == sweep / "outputs" / "paper_kodak" for j in jobs), jobs
    assert all(SAFE.fullmatch(j.name) and "chunk_bits-" in j.name for j in jobs)


def docs_block(lang: str) -> str:
    """The ``lang`` code block of docs/experiments.md that reads ``*/results.parquet``."""
    text = (ROOT / "docs" / "experiments.md").read_text()
    (block,) = [b for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S) if "*/results.parquet" in b]
    return block


def test_the_docs_duckdb_query_runs_as_written(sweep: Path) -> None:
    duckdb = pytest.importorskip("duckdb", reason="duckdb is in the test extras")
    cwd = os.getcwd()
    try:
        os.chdir(sweep)
        table = duckdb.sql(docs_block("sql")).df()
    finally:
        os.chdir(cwd)
    assert list(table.model) == ["gaussian"] * 3 and sorted(table.recon_timestep) == [100, 300, 700]
    assert (table.images == 4).all()  # 2 images x 2 jobs per rate point
    direct = pd.concat(map(pd.read_parquet, (sweep / "outputs" / "paper_kodak").glob("*/results.parquet")))
    codec = direct[direct.kind == "codec"]
    expected = codec.groupby("recon_timestep").psnr.mean()
    assert np.allclose(table.set_index("recon_timestep").psnr.sort_index(), expected.sort_index())


def test_the_docs_pandas_one_liner_runs_as_written(sweep: Path) -> None:
    scope: dict = {}
    cwd = os.getcwd()
    try:
        os.chdir(sweep)
        exec(docs_block("python"), scope)
    finally:
        os.chdir(cwd)
    rows = scope["rows"]
    assert len(rows[rows.kind == "codec"]) == 12 and set(rows.config_hash.unique()).__len__() == 2


def test_a_second_process_on_a_running_job_is_refused(tmp_path: Path) -> None:
    """One process at a time per job: while the job's lock is held, evaluate refuses in one line."""
    from filelock import FileLock

    from pipelines.evaluate import LOCK

    args = ["model=gaussian", "dataset=folder", f"dataset.options.path={tmp_path / 'images'}", "bitrate=quick",
            f"root={tmp_path / 'out'}"]
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    job = Path(job_line(evaluate(tmp_path, *args, "dry_run=true").stdout)["dir"])
    assert not job.exists()  # a dry run leaves nothing behind
    job.mkdir(parents=True)
    with FileLock(job / LOCK, timeout=0):
        r = subprocess.run([sys.executable, "-m", "pipelines.evaluate", *args, "progress=false"], cwd=tmp_path,
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "is being run by another process" in r.stderr and not (job / "done.json").exists()
    evaluate(tmp_path, *args)  # the lock is free again: the job runs
    assert (job / "done.json").exists()


def sweep_workers(sweep_pid: int) -> list[int]:
    """Pids of the loky workers started by the sweep process ``sweep_pid`` (by their environment)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if f"DIFFC_SWEEP_PID={sweep_pid}".encode() in env and b"loky" in cmd and int(proc.name) != sweep_pid:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads process environments from /proc")
def test_killing_a_joblib_sweep_stops_its_workers(tmp_path: Path) -> None:
    """kill -9 of a joblib sweep: its loky worker exits within seconds and writes nothing more."""
    import signal
    import time

    root = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.evaluate", "-m", "model=gaussian", "dataset=kodak-small",
                             "dataset.options.size=128", "codec.channel.chunk_bits=6,7", "bitrate=quick",
                             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"root={root}", "progress=false"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(root.rglob("shards/*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(root.rglob("shards/*.parquet")), "the sweep wrote no shard in time"
        assert sweep_workers(proc.pid), "no loky worker found"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while sweep_workers(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not sweep_workers(proc.pid), "a worker outlived its sweep"
    shards = sorted(root.rglob("shards/*.parquet"))
    time.sleep(3)
    assert sorted(root.rglob("shards/*.parquet")) == shards and not list(root.rglob("results.parquet"))


def test_ctrl_c_on_a_sweep_is_one_line(tmp_path: Path) -> None:
    """issue 28: SIGINT (Ctrl-C) during an ``evaluate -m`` sweep prints at most two lines (``error:
    interrupted``), no traceback, and exits 130; what the sweep printed before is not counted."""
    import signal
    import time

    root, log = tmp_path / "out", tmp_path / "output.txt"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.evaluate", "-m", "model=gaussian",
                                 "dataset=kodak-small", "dataset.options.size=128", "codec.channel.chunk_bits=6,7",
                                 "bitrate=quick", f"root={root}", "progress=false"],
                                cwd=tmp_path, env=ENV, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 240
        while not list(root.rglob("shards/*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(root.rglob("shards/*.parquet")), "the sweep wrote no shard in time"
        before = len(log.read_text())
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    after = log.read_text()[before:]
    assert proc.returncode == 130, log.read_text()[-3000:]
    assert len(after.strip().splitlines()) <= 2 and "Traceback" not in after and "error: interrupted" in after, after


def test_a_job_failing_before_its_first_image_says_why_in_its_folder(tmp_path: Path) -> None:
    """issue 28: a single job whose dataset cannot load fails in one line and leaves failed.json (the
    same line) in the folder Hydra made, not a bare job.lock and .hydra/."""
    import json

    r = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "dataset=folder",
                        f"dataset.options.path={tmp_path / 'missing'}", f"root={tmp_path / 'out'}", "progress=false"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "is not a directory" in r.stderr, r.stderr
    (failed,) = (tmp_path / "out").rglob("failed.json")
    assert json.loads(failed.read_text())["error"] == r.stderr.removeprefix("error: ").strip()
