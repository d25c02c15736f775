"""What to run first on a new machine: is everything there that the commands need?

    python -m pipelines.doctor                         # offline: the environment + a gaussian round trip
    python -m pipelines.doctor model=sdxl              # SDXL's weights are needed; round trip through SDXL
    python -m pipelines.doctor model=sd15 metrics=all caption=auto

One screen, in this order:

- torch, its CUDA build and devices, and what ``device: auto`` resolves to (``diffc.device``);
- for every real backbone config (conf/model/*.yaml with ``options.hub_id``: its repositories, e.g.
  sdxl's refiner and the reference parity's VAE): whether the files its loader reads
  (diffc/backbones/*.py ``from_pretrained``) are there: in the local copy that ``model.options.path``
  or ``DIFFC_<NAME>_PATH`` names (the loader then never asks the hub), else in the Hugging Face hub
  cache at the config's hub id and revision (huggingface_hub's ``try_to_load_from_cache``: refs,
  snapshots and cached absences as the loaders see them). A component counts when its config file
  and its weights are there (the unsuffixed weights ``from_pretrained`` loads: safetensors or .bin,
  a sharded index with every shard);
- the metrics' weights (pipelines/metrics.py): LPIPS (torchvision's AlexNet in the torch hub
  checkpoints), DISTS (pyiqa's weights in its cache + torchvision's VGG16), Q-Align (the HF cache),
  Inception for FID (torch-fidelity's file in the torch hub checkpoints), or that the package is missing;
- the captioner of ``caption=auto`` (conf/captioner, pipelines/captions.py);
- a compress -> decompress round trip of a 64x64 image through the chosen backbone, in this process:
  the model's codec defaults on a short schedule (conf/doctor.yaml), the decoder rebuilt from the
  file's header (as pipelines/decompress.py), bit-exact or the drift (PSNR, dB), seconds per coded
  step, peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS).

Exit status: 0 when everything the chosen setting needs is there and the round trip holds the
determinism contract (diffc/determinism.py: bit-exact with ``deterministic=true``, else no
desynchronisation); 1 otherwise, with one ``error: ...`` line per missing piece on stderr and how to
get it. Needed: the chosen ``model``'s weights, the weights of an explicit ``metrics=`` choice, the
captioner with ``caption=auto``; all the rest is information. Bad options: one line, exit 2.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

import numpy as np
import torch
from omegaconf import DictConfig

from analysis import cli
from diffc import format as fmt
from diffc.backbones.diffusers_common import default_path, hub_cli, hub_offline_reason, path_env_var
from diffc.checks import checked_int
from diffc.codec import DiffcCodec, params_from_header
from diffc.determinism import desynchronised
from diffc.device import resolve_device

from .common import CONF_DIR, PipelineError, build_codec, config_names, model_config, one_line_errors, plain
from .datasets import to_tensor
from .target import request


# ---- what the loaders read ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Files:
    """A component's files: every one of ``names``, and one of ``weights`` when given (a
    ``*.index.json`` counts with all the shards it lists)."""

    names: tuple[str, ...]
    weights: tuple[str, ...] = ()


@functools.cache
def _kinds() -> dict[str, Files]:
    """The file names of each kind of component, from the libraries that read them (``model_index``:
    a diffusers pipeline's index, for a config not in ``COMPONENTS``)."""
    from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME
    from diffusers.utils import constants as dc
    from transformers import utils as tc
    from transformers.tokenization_utils_base import TOKENIZER_CONFIG_FILE

    return {
        "scheduler": Files((SCHEDULER_CONFIG_NAME,)),
        "tokenizer": Files((TOKENIZER_CONFIG_FILE,)),
        "processor": Files((tc.IMAGE_PROCESSOR_NAME,)),
        "diffusers": Files((dc.CONFIG_NAME,), (dc.SAFETENSORS_WEIGHTS_NAME, dc.WEIGHTS_NAME,
                                               dc.SAFE_WEIGHTS_INDEX_NAME, dc.WEIGHTS_INDEX_NAME)),
        "transformers": Files((tc.CONFIG_NAME,), (tc.SAFE_WEIGHTS_NAME, tc.WEIGHTS_NAME,
                                                  tc.SAFE_WEIGHTS_INDEX_NAME, tc.WEIGHTS_INDEX_NAME)),
        "model_index": Files(("model_index.json",)),
    }


#: a component: its subfolder (None = the repository root; a tuple: alternatives, as the loader
#: tries them) and its kind (a key of ``_kinds``)
Component = tuple[str | None | tuple[str | None, ...], str]

_SD: tuple[Component, ...] = (("scheduler", "scheduler"), ("unet", "diffusers"), ("vae", "diffusers"),
                              ("tokenizer", "tokenizer"), ("text_encoder", "transformers"))
_TEXT_2: tuple[Component, ...] = (("tokenizer_2", "tokenizer"), ("text_encoder_2", "transformers"))
_FLOW: tuple[Component, ...] = (("scheduler", "scheduler"), ("transformer", "diffusers"), ("vae", "diffusers"),
                                ("tokenizer", "tokenizer"), ("text_encoder", "transformers"), *_TEXT_2)
#: what each real backbone's ``from_pretrained`` loads (diffc/backbones/stable_diffusion.py, flux.py,
#: sd3.py, ddpm.py); a config of another name: a diffusers pipeline's model_index.json
COMPONENTS: dict[str, tuple[Component, ...]] = {
    "sd15": _SD, "sd21": _SD, "sdxl": _SD + _TEXT_2, "flux-dev": _FLOW,
    "sd35-medium": _FLOW + (("tokenizer_3", "tokenizer"), ("text_encoder_3", "transformers")),
    "ddpm-church": ((("scheduler", None), "scheduler"), (("unet", None), "diffusers")),
}
GENERIC: tuple[Component, ...] = ((None, "model_index"),)
REFINER: tuple[Component, ...] = (("scheduler", "scheduler"), ("unet", "diffusers"))
VAE_REPO: tuple[Component, ...] = (((None, "vae"), "diffusers"),)
#: BLIP-2: processor and model files at the repository root (pipelines/captions.py)
BLIP2: tuple[Component, ...] = ((None, "processor"), (None, "tokenizer"), (None, "transformers"))
#: Q-Align: pyiqa loads this repository (pyiqa/archs/qalign_arch.py) with transformers
QALIGN_HUB_ID = "q-future/one-align"
QALIGN: tuple[Component, ...] = ((None, "transformers"), (None, "processor"))


# ---- looking files up -----------------------------------------------------------------------------
#: a repository-relative file name -> its local path, or None when it is not there
Lookup = Callable[[str], "str | None"]


def cache_lookup(hub_id: str, revision: str | None) -> Lookup:
    """Files of ``hub_id`` at ``revision`` (None = main) in the HF hub cache (HF_HUB_CACHE)."""
    from huggingface_hub import try_to_load_from_cache

    def find(name: str) -> str | None:
        found = try_to_load_from_cache(hub_id, name, revision=revision)
        return found if isinstance(found, str) else None  # None, or the cached "does not exist"
    return find


def folder_lookup(root: str | os.PathLike) -> Lookup:
    """Files of a local copy (a diffusers-format folder)."""
    return lambda name: str(p) if (p := Path(root) / name).is_file() else None


def missing_weights(lookup: Lookup, prefix: str, names: tuple[str, ...]) -> str | None:
    """None when one of the weight files ``names`` under ``prefix`` is there (an index: with all
    its shards), else what is missing (the first missing shard of a present index first)."""
    gap = None
    for name in names:
        found = lookup(prefix + name)
        if found is None:
            continue
        if not name.endswith(".index.json"):
            return None
        shards = sorted(set(json.loads(Path(found).read_text()).get("weight_map", {}).values()))
        lost = next((s for s in shards if lookup(prefix + s) is None), None)
        if lost is None:
            return None
        gap = gap or f"{prefix}{lost} (a shard of {prefix}{name})"
    return gap or f"{prefix}{names[0]} (or its .bin / sharded form)"


def missing_file(lookup: Lookup, components: Iterable[Component]) -> str | None:
    """The first file the components need that ``lookup`` does not find (None: all there)."""
    kinds = _kinds()
    for where, kind in components:
        gaps = []
        for sub in where if isinstance(where, tuple) else (where,):
            prefix, files = f"{sub}/" if sub else "", kinds[kind]
            gap = next((prefix + n for n in files.names if lookup(prefix + n) is None), None)
            gap = gap or (missing_weights(lookup, prefix, files.weights) if files.weights else None)
            if gap is None:
                break
            gaps.append(gap)
        else:
            return gaps[0]
    return None


# ---- checks ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the report: ``found`` None = cannot be used here for another reason (a package
    is not installed); ``fix`` says how to get what is missing; ``needed`` makes it an error, told
    with ``full`` (the detail with the whole path looked in) when given."""

    name: str
    found: bool | None
    detail: str
    fix: str = ""
    needed: bool = False
    full: str = ""
    kind: str = ""  # model | metric | captioner: names the error

    @property
    def status(self) -> str:
        return {True: "found", False: "MISSING", None: "unusable"}[self.found]

    def line(self) -> str:
        return f"  {self.name:<16} {self.status:<9} {self.detail}"

    def error(self) -> str | None:
        """The ``error:`` line when needed and not found."""
        label = f"{self.kind} {self.name}" if self.kind else self.name
        return None if self.found or not self.needed else f"{label}: {self.full or self.detail}; {self.fix}"


@dataclasses.dataclass(frozen=True)
class Repo:
    """A repository of weights: ``hub_id`` at ``revision``, or the local copy ``path`` (which the
    option ``option`` or the environment variable ``env`` names)."""

    name: str
    hub_id: str
    revision: str | None
    path: str | None
    option: str  # "" = loaded by hub id only (Q-Align in pyiqa)
    env: str
    components: tuple[Component, ...]


def check_repo(repo: Repo, needed: bool, note: str = "") -> Check:
    """Whether ``repo``'s files are in its local copy, or (no local copy named) in the HF cache."""
    from huggingface_hub import constants

    rev = repo.revision or "main"
    ident = f"{repo.hub_id}@{rev}{note}"
    if repo.path is not None:
        where = full = f"{repo.option}={repo.path}"
        lookup = folder_lookup(repo.path)
    else:
        where, full = "the HF cache", f"the Hugging Face cache {constants.HF_HUB_CACHE}"
        lookup = cache_lookup(repo.hub_id, repo.revision)
    gap = missing_file(lookup, repo.components)
    if gap is None:
        commit = "" if repo.path else f" (commit {snapshot_dir(lookup, repo.components).name[:12]})"
        return Check(repo.name, True, f"{ident}{commit} in {where}", needed=needed)
    if repo.path is not None and not Path(repo.path).is_dir():
        gap, where, full = "", f"{where} is not a directory", f"{full} is not a directory"
    fetch = f"{hub_cli()} download {repo.hub_id}" + (f" --revision {repo.revision}" if repo.revision else "")
    fix = f"get it with `{fetch}` (on a machine with hub access; gated repos: log in first)"
    if repo.option:
        local = f"/data/models/{repo.hub_id.split('/')[-1]}"
        fix += f", or copy it to a folder (`{fetch} --local-dir {local}`) and set {repo.option}={local} (or {repo.env})"
    missing = f"{gap} not in " if gap else ""
    return Check(repo.name, False, f"{ident}: {missing}{where}", fix, needed, f"{ident}: {missing}{full}")


def snapshot_dir(lookup: Lookup, components: tuple[Component, ...]) -> Path:
    """The folder the files were found in (a cache snapshot or the local copy), from the first
    component's first alternative that is there."""
    where, kind = components[0]
    kinds = _kinds()
    for sub in where if isinstance(where, tuple) else (where,):
        name = (f"{sub}/" if sub else "") + kinds[kind].names[0]
        found = lookup(name)
        if found is not None:
            return Path(found).parents[len(Path(name).parts) - 1]
    raise AssertionError("snapshot_dir of a repository whose files are missing")


def model_repos(name: str, options: dict[str, Any]) -> list[Repo]:
    """The repositories model ``name`` loads with ``options`` (conf/model/NAME.yaml ``options``):
    its ``hub_id``; sdxl's ``refiner_hub_id`` and ``vae_hub_id`` when set (the base repo's VAE is
    then not read)."""
    vae_id, refiner_id = options.get("vae_hub_id"), options.get("refiner_hub_id")
    components = tuple(c for c in COMPONENTS.get(name, GENERIC) if not (vae_id and c[0] == "vae"))
    repos = [Repo(name, options["hub_id"], options.get("revision"), default_path(name, options.get("path")),
                  "model.options.path", path_env_var(name), components)]
    for suffix, hub_id, parts in (("refiner", refiner_id, REFINER), ("vae", vae_id, VAE_REPO)):
        if hub_id:
            sub = f"{name}-{suffix}"  # the loader's name: DIFFC_SDXL_REFINER_PATH, DIFFC_SDXL_VAE_PATH
            repos.append(Repo(sub, hub_id, options.get(f"{suffix}_revision"),
                              default_path(sub, options.get(f"{suffix}_path")), f"model.options.{suffix}_path",
                              path_env_var(sub), parts))
    return repos


def real_models(parity: str) -> list[str]:
    """The backbone configs that load weights (``options.hub_id``)."""
    return [n for n in config_names("model") if "hub_id" in plain(model_config(n, parity).get("options"))]


def backbone_checks(cfg: DictConfig) -> list[Check]:
    """Every real backbone's repositories at ``cfg.parity`` (the chosen model's with its options,
    needed), then those only the other parity loads (information)."""
    checks = []
    for name in real_models(cfg.parity):
        chosen = name == cfg.model.name
        options = plain(cfg.model.options) if chosen else plain(model_config(name, cfg.parity).options)
        repos = model_repos(name, options)
        checks += [check_repo(r, chosen) for r in repos]
        other = "reference" if cfg.parity == "project" else "project"
        seen = {r.hub_id for r in repos}
        extra = [r for r in model_repos(name, plain(model_config(name, other).options)) if r.hub_id not in seen]
        checks += [check_repo(r, False, f" (parity={other} only)") for r in extra]
    return checks


# ---- metrics and captioner --------------------------------------------------------------------------
METRICS_EXTRA = "pip install '.[metrics]' (lpips, pyiqa, torchvision)"


def torch_hub_file(url: str, folder: str | os.PathLike | None = None) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` keeps ``url``'s file: <hub dir>/checkpoints/<name>
    (or ``folder``/<name>)."""
    return Path(folder or Path(torch.hub.get_dir()) / "checkpoints") / os.path.basename(urlparse(url).path)


def check_files(name: str, files: list[tuple[Path, str]], needed: bool) -> Check:
    """``files`` ((path, url) pairs, downloaded by the metric's package on first use) all present?"""
    lost = [(p, u) for p, u in files if not p.is_file()]
    if not lost:
        return Check(name, True, ", ".join(str(p) for p, _ in files), needed=needed)
    path, url = lost[0]
    return Check(name, False, f"{path} not found", f"download it there: curl -L --create-dirs -o {path} {url}", needed)


def _torchvision_url(weights: str) -> str:
    """The ImageNet weights' URL of a torchvision model (``AlexNet_Weights``, ``VGG16_Weights``)."""
    from torchvision import models

    return getattr(models, weights).IMAGENET1K_V1.url


def _lpips_files() -> list[tuple[Path, str]]:
    """lpips' AlexNet variant: torchvision's ImageNet AlexNet (its linear heads ship in the package)."""
    import lpips  # noqa: F401  (optional dependency)

    url = _torchvision_url("AlexNet_Weights")
    return [(torch_hub_file(url), url)]


def _dists_files() -> list[tuple[Path, str]]:
    """pyiqa's DISTS: its weights in pyiqa's cache, and torchvision's ImageNet VGG16."""
    from pyiqa.archs.dists_arch import default_model_urls
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

    url, vgg = default_model_urls["url"], _torchvision_url("VGG16_Weights")
    return [(torch_hub_file(url, DEFAULT_CACHE_DIR), url), (torch_hub_file(vgg), vgg)]


def _inception_files() -> list[tuple[Path, str]]:
    """torch-fidelity's InceptionV3 (torchmetrics' FID/KID feature network)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return [(torch_hub_file(URL_INCEPTION_V3), URL_INCEPTION_V3)]


def metric_check(name: str, files: Callable[[], list[tuple[Path, str]]], install: str, needed: bool) -> Check:
    """A metric's weight files, or 'unusable' when its package (or where it keeps them) is missing."""
    try:
        paths = files()
    except ImportError as exc:
        return Check(name, None, f"package {exc.name or exc} not installed", install, needed)
    except (AttributeError, KeyError) as exc:  # a package version that keeps its weights elsewhere
        return Check(name, None, f"cannot tell where this version keeps its weights ({exc!r})", install, needed)
    return check_files(name, paths, needed)


def metric_checks(names: set[str]) -> list[Check]:
    """LPIPS, DISTS, Q-Align and Inception (FID); ``names``: those needed (``fid`` for FID/KID)."""
    checks = [metric_check("lpips", _lpips_files, METRICS_EXTRA, "lpips" in names),
              metric_check("dists", _dists_files, METRICS_EXTRA, "dists" in names)]
    try:
        import pyiqa  # noqa: F401  (optional dependency)
    except ImportError:
        checks.append(Check("qalign", None, "package pyiqa not installed", METRICS_EXTRA, "qalign" in names))
    else:
        repo = Repo("qalign", QALIGN_HUB_ID, None, None, "", "", QALIGN)
        checks.append(check_repo(repo, "qalign" in names))
    checks.append(metric_check("fid (inception)", _inception_files, "pip install torch-fidelity", "fid" in names))
    return checks


def captioner_check(captioner: DictConfig | None, needed: bool) -> Check:
    """The captioner of ``caption=auto``: BLIP-2's files, or a twin that needs none."""
    if captioner is None:
        return Check("captioner", False, "no captioner config", "captioner=blip2", needed)
    options = plain(captioner.get("options"))
    if "hub_id" not in options:
        return Check(str(captioner.name), True, "random weights, nothing to load", needed=needed)
    name = str(captioner.name)
    repo = Repo(name, options["hub_id"], options.get("revision"), default_path(name, options.get("path")),
                "captioner.options.path", path_env_var(name), BLIP2)
    return check_repo(repo, needed)


# ---- environment ------------------------------------------------------------------------------------
def torch_line() -> str:
    """torch's version, its CUDA build and devices, and what ``device: auto`` resolves to."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cuda = (f"CUDA {torch.version.cuda}: {torch.cuda.device_count()} device(s), {props.name} "
                f"{props.total_memory / 2**30:.0f} GiB")
    elif torch.version.cuda:
        cuda = f"CUDA {torch.version.cuda} build, no usable GPU"
    else:
        cuda = "CPU-only build"
    return (f"torch {torch.__version__} ({cuda}); device auto -> {resolve_device('auto')}; "
            f"{torch.get_num_threads()} CPU threads")


def libraries_line() -> str:
    import diffusers
    import huggingface_hub
    import transformers

    return (f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
            f"huggingface_hub {huggingface_hub.__version__}")


def caches_line() -> str:
    """Where weights are looked for, and whether the hub can be asked (one 3-second probe)."""
    from huggingface_hub import constants

    hub = hub_offline_reason() or "reachable"
    return f"HF cache {constants.HF_HUB_CACHE} (hub: {hub}); torch hub {torch.hub.get_dir()}"


# ---- the round trip ---------------------------------------------------------------------------------
def sample_image(size: int) -> torch.Tensor:
    """A deterministic ``size`` x ``size`` RGB test image [3, size, size] in [0, 1], 8-bit values:
    smooth colour gradients plus seeded texture (numpy generator, seed 0), no file needed."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (xx + 0.3 * yy)), 0.5 + 0.4 * np.cos(3 * np.pi * yy),
                       0.2 + 0.6 * xx * yy], -1)
    noisy = smooth + np.random.default_rng(0).normal(0.0, 0.05, smooth.shape)
    return to_tensor(np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8))


def per_step(wall_s: float, cpu_s: float, n: int) -> str:
    """Seconds per step, wall and CPU (all threads): "0.5 s/step (CPU 0.9 s)"; a CPU time far below
    the wall time x threads says the machine was busy with something else."""
    return f"{wall_s / n:.3g} s/step (CPU {cpu_s / n:.3g} s)"


def peak_memory(device: torch.device) -> str:
    """Peak CUDA memory allocated on ``device`` (since the last reset), else the process's peak RSS."""
    if device.type == "cuda":
        return f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return f"peak RSS {rss / 2**30:.2f} GiB (process)"


@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """A compress -> decompress round trip: the report line and whether it holds the contract."""

    line: str
    ok: bool


def round_trip(cfg: DictConfig) -> RoundTrip:
    """Encode the test image to ``cfg.timestep`` with the chosen model, decode the file with a codec
    rebuilt from its header (the loaded backbone reused, as pipelines/decompress.py builds it from
    the header), and compare the decoder's x_t and image with the encoder's (``DiffcCodec.drift``)."""
    codec = build_codec(cfg, deterministic=cfg.deterministic)
    backbone = codec.backbone
    device = torch.device(getattr(backbone, "device", "cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    size = checked_int("size", cfg.size, 1, fmt.MAX_SIDE)
    rate = request({"stop_timesteps": cfg.timestep}, {"stop_timesteps": "timestep"}).rate
    try:
        encoded = codec.encode(sample_image(size), rate)
    except ValueError as exc:  # a stop below the schedule
        raise PipelineError(str(exc)) from None
    point = encoded.points[-1]
    header, _ = fmt.read(point.data)
    decoder = DiffcCodec(backbone, params_from_header(header), deterministic=cfg.deterministic)
    if decoder.fingerprint() != header.fingerprint:
        return RoundTrip("round trip: the header's parameters do not rebuild the encoder's codec", False)
    decoded = decoder.decode(point.data)
    xt_max, drift_db = decoder.drift(point, decoded)
    n = point.step_index
    if xt_max == 0.0:
        verdict, ok = "bit-exact (x_t and image)", True
    else:
        verdict = f"NOT bit-exact: max |x_t diff| {xt_max:.3g}, drift {drift_db:.1f} dB PSNR"
        ok = not desynchronised(drift_db) and not cfg.deterministic
    dtype = str(getattr(backbone, "dtype", torch.float32)).removeprefix("torch.")
    line = (f"round trip {backbone.name} on {device} ({dtype}): {size}x{size} to t={point.timestep} ({n} steps), "
            f"{len(point.data)} B = {point.bpp:.3f} bpp: {verdict}; encode {per_step(encoded.encode_s, encoded.encode_cpu_s, n)}, "
            f"decode {per_step(decoded.decode_s, decoded.decode_cpu_s, n)} (reconstruction included); {peak_memory(device)}")
    return RoundTrip(line, ok)


# ---- the command ------------------------------------------------------------------------------------
def needed_metrics(metrics: DictConfig | None) -> set[str]:
    """The metrics an explicit ``metrics=`` choice needs weights for (``fid``: FID/KID); none without one."""
    if metrics is None:
        return set()
    return set(cli.as_list(metrics.get("names")) or []) | ({"fid"} if metrics.get("fid") else set())


def section(kind: str, title: str, checks: list[Check]) -> list[Check]:
    """Print a titled block of checks; the checks, marked with their ``kind``."""
    print(title)
    for check in checks:
        print(check.line(), flush=True)
    return [dataclasses.replace(c, kind=kind) for c in checks]


@one_line_errors
def doctor(cfg: DictConfig) -> None:
    print(f"diffc doctor: model={cfg.model.name}, parity={cfg.parity}")
    print(torch_line())
    print(libraries_line())
    print(caches_line(), flush=True)
    backbones = section("model", "backbone weights:", backbone_checks(cfg))
    checks = backbones + section("metric", "metric weights:", metric_checks(needed_metrics(cfg.get("metrics"))))
    checks += section("captioner", "captioner (caption=auto):",
                      [captioner_check(cfg.get("captioner"), cfg.caption == "auto")])
    problems = [e for e in (c.error() for c in checks) if e]
    if any(c.needed and not c.found for c in backbones):
        print(f"round trip {cfg.model.name}: skipped (its weights are missing)")
    else:
        trip = round_trip(cfg)
        print(trip.line)
        if not trip.ok:
            problems.append(f"{trip.line} (diffc/determinism.py: bit-exact on the same device with deterministic=true)")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    cli.main(doctor, "doctor", verbatim=("model.options.path", "model.options.params_path",
                                        "model.options.refiner_path", "model.options.vae_path",
                                        "captioner.options.path"),
             config_dir=CONF_DIR)
