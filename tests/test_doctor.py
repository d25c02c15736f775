"""pipelines.doctor: the first command on a new machine.

The offline default (``model=gaussian``) must pass here, where no real weights exist; a real model
whose weights are missing fails in one line naming the hub id and the cache looked in; weights in a
Hugging Face cache (tests/hub_twins.py: tiny pipelines in the real layout) or in a local copy are
found, and the round trip through them is bit-exact. The ``python -m`` path runs for the exit codes
and the one-line errors; the rest runs in process (``analysis.cli.call``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.cli import call
from hub_twins import REAL_MODELS, build_hub_cache, build_pipeline, install_in_cache, revision_of
from pipelines import doctor as dr
from pipelines.common import CONF_DIR, model_config, plain
from test_hub_cache import use_cache

ROOT = Path(__file__).resolve().parents[1]
SD15_ID = plain(model_config("sd15")["options"])["hub_id"]
#: a quick round trip through a real config's tiny twin (12 steps, 2^10 candidates per chunk)
QUICK = ["model.options.device=cpu", "codec.channel.chunk_bits=8"]


def doctor_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m pipelines.doctor ARGS`` against an empty HF cache and torch hub dir, offline."""
    (tmp / "hf").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not (k.startswith("DIFFC_") and k.endswith("_PATH"))}
    env |= {"HF_HUB_CACHE": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp / "torch"),
            "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipelines.doctor", *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)


def run(capsys: pytest.CaptureFixture, *overrides: str) -> tuple[int, str, str]:
    """The doctor in process: (exit status, stdout, stderr)."""
    code = call(dr.doctor, "doctor", list(overrides), CONF_DIR)
    out, err = capsys.readouterr()
    return code, out, err


def report_line(out: str, name: str) -> str:
    """The report line of check ``name`` (first match)."""
    return next(line for line in out.splitlines() if line.split()[:1] == [name])


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf_cache")
    build_hub_cache(root, list(REAL_MODELS))
    return root


# ---- the command line -----------------------------------------------------------------------------
def test_gaussian_passes_offline(tmp_path: Path) -> None:
    """No weights at all: gaussian needs none, so exit 0; the others are reported missing; the
    round trip is bit-exact."""
    r = doctor_cli(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "error:" not in r.stderr
    trip = next(line for line in r.stdout.splitlines() if line.startswith("round trip gaussian"))
    assert "bit-exact (x_t and image)" in trip and "s/step (CPU " in trip and "peak RSS" in trip
    assert "device auto -> cpu" in r.stdout
    for name in REAL_MODELS:
        assert report_line(r.stdout, name).split()[1] == "MISSING"
    assert f"HF cache {tmp_path / 'hf'}" in r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # nothing written where it runs, nothing downloaded


def test_missing_backbone_fails_in_one_line(tmp_path: Path) -> None:
    r = doctor_cli(tmp_path, "model=sd15")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, r.stderr
    line = errors[0]
    assert line.startswith(f"error: model sd15: {SD15_ID}@main: scheduler/scheduler_config.json not in "
                           f"the Hugging Face cache {tmp_path / 'hf'}")
    assert f"download {SD15_ID}`" in line and "model.options.path=" in line and "DIFFC_SD15_PATH" in line
    assert "round trip sd15: skipped" in r.stdout


def test_help() -> None:
    r = subprocess.run([sys.executable, "-m", "pipelines.doctor", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pipelines.doctor" in r.stdout and "timestep: 300" in r.stdout and "metrics (default none): all, offline" in r.stdout  # the groups it uses


# ---- weights found --------------------------------------------------------------------------------
def test_found_in_hub_cache(hub_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Every real config's repositories are found in the cache, at the commit refs/main names;
    the round trip through sd15's config (tiny weights) is bit-exact."""
    use_cache(monkeypatch, hub_cache)
    code, out, err = run(capsys, "model=sd15", *QUICK)
    assert code == 0, err
    for name in REAL_MODELS:
        for repo in dr.model_repos(name, plain(model_config(name)["options"])):
            line = report_line(out, repo.name)
            assert line.split()[1] == "found", line
            assert f"{repo.hub_id}@main (commit {revision_of(repo.hub_id)[:12]}) in the HF cache" in line
    assert "(parity=reference only)" in report_line(out, "sdxl-vae")
    trip = next(line for line in out.splitlines() if line.startswith("round trip sd15"))
    assert "bit-exact (x_t and image)" in trip and "(float32)" in trip


def test_missing_file_is_what_the_loader_misses(hub_cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache without sd15's UNet weights: doctor names the file, and the loader indeed fails."""
    from pipelines.common import PipelineError, build_codec, compose

    root = tmp_path / "hf"
    shutil.copytree(hub_cache / f"models--{SD15_ID.replace('/', '--')}",
                    root / f"models--{SD15_ID.replace('/', '--')}", symlinks=True)
    snapshot = root / f"models--{SD15_ID.replace('/', '--')}" / "snapshots" / revision_of(SD15_ID)
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    use_cache(monkeypatch, root)
    repo = dr.model_repos("sd15", plain(model_config("sd15")["options"]))[0]
    check = dr.check_repo(repo, needed=True)
    assert check.found is False
    assert check.detail == (f"{SD15_ID}@main: unet/diffusion_pytorch_model.safetensors (or its .bin / sharded form) "
                            "not in the HF cache")
    with pytest.raises(PipelineError, match="unet"):
        build_codec(compose("compress", ["model=sd15"]), option_overrides={"device": "cpu"})


def repo_options() -> dict:
    """sd15's shipped loading options."""
    return plain(model_config("sd15")["options"])


def test_local_copy_by_option_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    """model.options.path (or DIFFC_SD15_PATH) is where the loader looks, the HF cache is not."""
    local = tmp_path / "sd15"
    build_pipeline("sd15", local)
    use_cache(monkeypatch, tmp_path / "empty")
    code, out, err = run(capsys, "model=sd15", f"model.options.path={local}", *QUICK)
    assert code == 0, err
    line = report_line(out, "sd15")
    assert line.split()[1] == "found" and line.endswith(f"{SD15_ID}@main in model.options.path={local}")
    monkeypatch.setenv("DIFFC_SD15_PATH", str(local))
    repo = dr.model_repos("sd15", repo_options())[0]
    assert repo.path == str(local) and dr.check_repo(repo, needed=True).found
    monkeypatch.setenv("DIFFC_SD15_PATH", str(tmp_path / "nowhere"))
    check = dr.check_repo(dr.model_repos("sd15", repo_options())[0], needed=True)
    assert check.found is False
    assert check.detail.endswith(f"model.options.path={tmp_path / 'nowhere'} is not a directory")


def test_sharded_weights_need_every_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BLIP-2 in the cache with a sharded model: found with both shards, missing with one (named)."""
    folder = tmp_path / "blip2"
    folder.mkdir()
    shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    for name in ("preprocessor_config.json", "tokenizer_config.json", "config.json", shards[0]):
        (folder / name).write_text("{}")
    index = {"weight_map": {"a.weight": shards[0], "b.weight": shards[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    captioner = blip2_config()
    hub_id = captioner.options.hub_id
    install_in_cache(tmp_path / "partial", hub_id, folder)
    (folder / shards[1]).write_text("{}")
    install_in_cache(tmp_path / "complete", hub_id, folder)

    use_cache(monkeypatch, tmp_path / "partial")
    check = dr.captioner_check(captioner, needed=True)
    assert check.found is False
    assert check.detail == (f"{hub_id}@main: {shards[1]} (a shard of model.safetensors.index.json) "
                            "not in the HF cache")
    assert "captioner.options.path=" in check.fix and "DIFFC_BLIP2_PATH" in check.fix
    use_cache(monkeypatch, tmp_path / "complete")
    assert dr.captioner_check(captioner, needed=True).found is True


def blip2_config():
    from omegaconf import OmegaConf

    return OmegaConf.load(ROOT / "conf" / "captioner" / "blip2.yaml")


# ---- what is needed -------------------------------------------------------------------------------
def test_explicit_metrics_and_caption_are_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """metrics=all needs LPIPS, DISTS, Q-Align and Inception weights, caption=auto the captioner's:
    with none of them here (empty torch hub dir and HF cache), one error line each; metrics=offline
    needs no weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    use_cache(monkeypatch, tmp_path / "hf")
    code, out, err = run(capsys, "metrics=all", "caption=auto")
    assert code == 1
    errors = err.splitlines()
    assert [e.split(":")[1].strip() for e in errors] == ["metric lpips", "metric dists", "metric qalign",
                                                         "metric fid (inception)", "captioner blip2"]
    assert "round trip gaussian" in out  # the model itself is fine
    code, _, err = run(capsys, "metrics=offline")
    assert code == 0, err
    assert dr.needed_metrics(None) == set()


def test_metric_files(tmp_path: Path) -> None:
    """A metric's files in the torch hub checkpoints dir: found / missing with the download line;
    a package that is not installed: unusable."""
    url = "https://example.org/weights/net-1234.pth"
    path = dr.torch_hub_file(url, tmp_path)
    assert path == tmp_path / "net-1234.pth"
    check = dr.metric_check("x", lambda: [(path, url)], "pip install x", needed=True)
    assert check.found is False and check.fix == f"download it there: curl -L --create-dirs -o {path} {url}"
    path.write_bytes(b"0")
    assert dr.metric_check("x", lambda: [(path, url)], "pip install x", needed=True).found is True

    def absent() -> list:
        import no_such_package_xyz  # noqa: F401
        return []

    check = dr.metric_check("x", absent, "pip install x", needed=True)
    assert check.found is None and check.detail == "package no_such_package_xyz not installed"
    assert check.error() == "x: package no_such_package_xyz not installed; pip install x"


def test_drift_fails_the_deterministic_contract(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A decode that is not bit-exact under deterministic=true is an error; with the speed opt-out
    only a desynchronisation (< 30 dB) is."""
    monkeypatch.setattr(dr.DiffcCodec, "drift", lambda self, point, decoded: (1e-3, 45.0))
    code, out, err = run(capsys, "deterministic=true")
    assert code == 1 and "NOT bit-exact: max |x_t diff| 0.001, drift 45.0 dB PSNR" in err
    code, _, err = run(capsys, "deterministic=false")
    assert code == 0, err
    monkeypatch.setattr(dr.DiffcCodec, "drift", lambda self, point, decoded: (0.5, 12.0))
    code, _, err = run(capsys, "deterministic=false")
    assert code == 1 and "drift 12.0 dB" in err


def test_every_real_config_has_its_components() -> None:
    """Each conf/model config with a hub id has the loader's component list (not the generic one)."""
    assert set(dr.real_models("project")) == set(REAL_MODELS) <= set(dr.COMPONENTS)


def test_other_configs_need_a_pipeline_index(tmp_path: Path) -> None:
    """A config not in COMPONENTS (a user's new diffusers backbone) needs its model_index.json."""
    lookup = dr.folder_lookup(tmp_path)
    assert dr.missing_file(lookup, dr.GENERIC) == "model_index.json"
    (tmp_path / "model_index.json").write_text("{}")
    assert dr.missing_file(lookup, dr.GENERIC) is None
