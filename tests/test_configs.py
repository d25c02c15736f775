"""Every config in conf/ composes, and each experiment's sweep expands to the intended jobs.

Composition goes through Hydra's compose API (in process, fast); the sweep of an experiment is
expanded the way Hydra's basic sweeper does it (``hydra.sweeper.params`` + command-line
overrides -> one override list per job), then each job's config is composed and checked. One
test also runs the real entry point with ``dry_run=true`` (one printed line per job).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from pipelines.common import CONF_DIR, build_codec
from pipelines.evaluate import RatePlan, config_hash

ROOT = Path(__file__).resolve().parents[1]
SEED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "seed-settings.json"
GROUPS = ("model", "dataset", "bitrate", "metrics", "codec", "experiment")
REAL_MODELS = ["sd15", "sd21", "sdxl", "flux-dev"]
#: what each experiment must launch: {experiment: (dataset, [models])}
EXPERIMENTS = {
    "paper_kodak": ("kodak", REAL_MODELS),
    "paper_div2k": ("div2k", REAL_MODELS),
    "compare_backbones": ("kodak-small", ["gaussian", "tiny-sd15", "tiny-sd21", "tiny-sdxl", "tiny-flux"]),
    "demo": ("kodak-small", ["gaussian"]),
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def sweep(overrides: list[str]) -> list[DictConfig]:
    """The job configs of ``-m`` with ``overrides`` (experiment sweeper params included),
    expanded like Hydra's BasicSweeper."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    top = compose("config", overrides=fixed, return_hydra_config=True)
    params = top.hydra.sweeper.params or {}
    multirun = top.hydra.mode is not None and str(top.hydra.mode).endswith("MULTIRUN")
    parsed = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + overrides)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    if not multirun and not any(o.is_sweep_override() for o in parsed):
        jobs = [overrides]
    return [compose("config", overrides=job) for job in jobs]


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), group
    assert set(options("model")) >= {*REAL_MODELS, "tiny-sd15", "tiny-sd21", "tiny-sdxl", "tiny-flux", "gaussian"}
    assert set(options("dataset")) >= {"kodak", "div2k", "folder", "kodak-small"}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes(group: str, option: str) -> None:
    cfg = compose("config", overrides=[f"{group}={option}"])
    # everything but the deliberately required folder path resolves
    if not (group == "dataset" and option == "folder"):
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group == "model":
        assert cfg.model.name == option  # registry name == file stem
        assert set(cfg.model.codec) >= {"schedule", "chunk_bits", "padding_bits", "recon", "recon_steps"}
    if group == "dataset":
        assert cfg.dataset.name == option
    if group == "bitrate":
        plan = RatePlan.from_config(cfg.bitrate)
        assert plan.stop_timesteps == sorted(plan.stop_timesteps, reverse=True)
    if group == "metrics":
        assert set(cfg.metrics.names) >= {"psnr"} and "fid" in cfg.metrics
    assert config_hash(cfg)


def test_default_config_is_the_quick_cpu_job() -> None:
    cfg = compose("config")
    assert (cfg.model.name, cfg.dataset.name) == ("gaussian", "kodak-small")
    assert list(cfg.metrics.names) == ["psnr", "ms_ssim"] and not cfg.metrics.fid
    assert RatePlan.from_config(cfg.bitrate).stop_timesteps == [700, 300, 100]


def test_volatile_keys_do_not_change_the_hash() -> None:
    base = config_hash(compose("config"))
    for o in ["root=/elsewhere", "name=x", "progress=false", "dry_run=true", "save.recon_png=true"]:
        assert config_hash(compose("config", overrides=[o])) == base, o
    assert config_hash(compose("config", overrides=["codec.chunk_bits=6"])) != base


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_sweep_lists_intended_jobs(experiment: str) -> None:
    assert set(EXPERIMENTS) == set(options("experiment")), "new experiment: add it to EXPERIMENTS"
    dataset, models = EXPERIMENTS[experiment]
    jobs = sweep([f"experiment={experiment}"])
    assert [j.model.name for j in jobs] == models
    assert {j.dataset.name for j in jobs} == {dataset}
    assert {j.name for j in jobs} == {experiment}  # results under ${root}/<experiment>/<overrides>
    assert len({config_hash(j) for j in jobs}) == len(jobs)


@pytest.mark.parametrize("experiment", ["paper_kodak", "paper_div2k"])
def test_paper_experiments_use_reference_settings(experiment: str) -> None:
    if not SEED.exists():
        pytest.skip(f"no {SEED}")
    ref = json.loads(SEED.read_text())["settings"]
    by_model = {"sd15": "SD-1.5-base", "sd21": "SD-2.1-base", "sdxl": "SDXL-base", "flux-dev": "Flux-base"}
    from diffc.schedule import encoding_timesteps

    for job in sweep([f"experiment={experiment}"]):
        r = ref[by_model[job.model.name]]
        plan = RatePlan.from_config(job.bitrate)
        assert plan.targets is None and plan.stop_timesteps == r["recon_timesteps"]
        assert job.codec.chunk_bits + job.codec.padding_bits == r["candidate_bits_per_chunk"]
        assert job.codec.padding_bits == r["padding_bits_per_chunk"]
        schedule = job.codec.schedule or job.model.codec.schedule
        assert encoding_timesteps(schedule, 1000) == r["encoding_timesteps"], job.model.name
        assert list(job.metrics.names) == ["psnr", "ms_ssim", "lpips", "dists", "qalign"] and job.metrics.fid
        if job.model.name == "sdxl":
            assert job.model.options.refiner_hub_id  # the reference's SDXL used the refiner


def test_command_line_sweep_expands() -> None:
    jobs = sweep(["model=gaussian,tiny-sd15", "dataset=kodak-small", "bitrate=quick", "metrics=offline"])
    assert [j.model.name for j in jobs] == ["gaussian", "tiny-sd15"]
    jobs = sweep(["experiment=compare_backbones", "model=gaussian,tiny-flux"])  # command line wins
    assert [j.model.name for j in jobs] == ["gaussian", "tiny-flux"]


@pytest.mark.parametrize("model", ["gaussian"])  # tiny-sd15: built by test_pipeline
def test_offline_models_build(model: str) -> None:
    cfg = compose("config", overrides=[f"model={model}"])
    codec = build_codec(cfg.model, cfg.codec)
    assert codec.backbone.name == model
    for t in RatePlan.from_config(cfg.bitrate).stop_timesteps:
        codec.stop_step_for(t)


@pytest.mark.parametrize("launcher,plugin", [("joblib", "hydra_plugins.hydra_joblib_launcher"),
                                             ("submitit_local", "hydra_plugins.hydra_submitit_launcher"),
                                             ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher"),
                                             ("slurm_gpu", "hydra_plugins.hydra_submitit_launcher"),
                                             ("ray_gpu", "hydra_plugins.hydra_ray_launcher")])
def test_launcher_configs_compose(launcher: str, plugin: str) -> None:
    pytest.importorskip(plugin, reason=f"launcher plugin {plugin} not installed (optional)")
    cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_
    if launcher == "slurm_gpu":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.max_num_timeout > 0
    if launcher == "ray_gpu":
        assert cfg.hydra.launcher.ray.remote.num_gpus == 1


def test_dry_run_prints_one_line_per_job(tmp_path: Path) -> None:
    """The real entry point: ``experiment=paper_kodak dry_run=true`` lists the 4 jobs, runs nothing."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    out = subprocess.run([sys.executable, "-m", "pipelines.evaluate", "experiment=paper_kodak", "dry_run=true",
                          f"root={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("job ")]
    assert [ln.split()[1] for ln in lines] == [f"model={m}" for m in REAL_MODELS]
    assert all("dataset=kodak " in ln and "state=todo" in ln for ln in lines)
    assert not list(tmp_path.rglob("shards"))  # nothing ran
