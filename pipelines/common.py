"""Pieces shared by the Hydra entry points: model configs -> codec, atomic files, one-line errors.

The command-line glue (argument normalization, one-line Hydra errors, ``require``) is
``analysis.cli``'s and the error reporting ``analysis.errors``': one convention for every command
(``pipelines`` imports ``analysis``, never the reverse). The pipelines' configs are ``CONF_DIR``.

A model config is ``conf/model/NAME.yaml``: ``name`` (the backbone registry name), ``options``
(keyword arguments of ``diffc.backbone.load_backbone``) and, in its defaults list, its codec profile
(``conf/codec/profile/``). The composed ``codec`` node is the spec tree of ``pipelines.codec_config``.
"""
from __future__ import annotations

import os
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from analysis import cli, errors
from analysis.cli import require  # noqa: F401  (re-exported for the entry points)
from diffc import format as fmt
from diffc.checks import InvalidValue
from diffc.format import DiffcFormatError

from .codec_config import codec_params

#: failures reported by their message alone (no type name, no traceback hint), besides
#: ``analysis.errors.UsageError`` and its subclasses (``PipelineError``, ``DatasetError``): the
#: core's bad files and bad settings (``diffc.checks.InvalidValue``), and the system's
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (DiffcFormatError, InvalidValue, OSError)


class PipelineError(errors.UsageError):
    """Bad input or an unusable setup: reported as one line, non-zero exit."""


def _conf_dir() -> Path:
    """The pipelines' Hydra configs: the installed package ``diffc_conf`` (a wheel's
    site-packages/diffc_conf, or the checkout's conf/ under an editable install); the checkout's
    conf/ when the package is not installed at all (sources on PYTHONPATH)."""
    import importlib.util

    spec = importlib.util.find_spec("diffc_conf")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(__file__).resolve().parents[1] / "conf"


#: the pipelines' configs (conf/ in the checkout); the analysis commands' are analysis/conf/
CONF_DIR = _conf_dir()


def config_names(group: str) -> list[str]:
    """Names of the options of the pipelines' config group ``conf/GROUP/*.yaml``."""
    return cli.config_names(group, CONF_DIR)


#: ``parity`` settings: ours (the better-justified defaults) or the reference implementation's
PARITY = fmt.PARITIES


def parity_value(project: Any, reference: Any, *, _root_: DictConfig) -> Any:
    """``${parity:PROJECT,REFERENCE}`` in conf/model/*.yaml: the value for the config's ``parity``
    setting (``project`` when the config has none, e.g. a model config loaded on its own).
    README "Paper parity" lists every switch; docs/parity.md the evidence."""
    mode = _root_.get("parity", "project") if "parity" in _root_ else "project"
    if mode not in PARITY:
        raise PipelineError(f"parity must be one of {PARITY}, got {mode!r}")
    return reference if mode == "reference" else project


OmegaConf.register_new_resolver("parity", parity_value, replace=True)


def plain(node: Any) -> dict[str, Any]:
    """A config mapping (or None) as a resolved plain dict."""
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return dict(OmegaConf.to_container(node, resolve=True))
    return dict(node)


def model_config(name: str, parity: str = "project") -> DictConfig:
    """``conf/model/NAME.yaml`` (how decompress finds the backbone named in a file header), its
    ``${parity:...}`` values resolved for ``parity`` (project | reference)."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        raise PipelineError(f"unknown model {name!r}; available: {', '.join(config_names('model'))}")
    model = OmegaConf.load(path)
    model.pop("defaults", None)  # its codec profile: the codec's business (pipelines/codec_config.py)
    return OmegaConf.merge({"parity": parity}, model)


def compose(config_name: str = "compress", overrides: Sequence[str] = ()) -> DictConfig:
    """A command's config (``conf/CONFIG_NAME.yaml``) composed with Hydra ``overrides``, outside a
    running Hydra app (benchmarks, tests, notebooks): ``build_codec(compose(overrides=["model=sd15",
    "codec.channel.chunk_bits=10"]))``."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def given_options(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The loading-option overrides that were given: every key but the unset ones (``???``, as in
    conf/decompress.yaml). null is a value: ``options.refiner_hub_id=null`` sets it to null."""
    if isinstance(overrides, DictConfig):
        return {k: v for k, v in plain(overrides).items() if not OmegaConf.is_missing(overrides, k)}
    return dict(overrides or {})


def load_model(model: DictConfig | Mapping[str, Any], option_overrides: Mapping[str, Any] | None = None):
    """The backbone of a model config, with the given option overrides (``given_options``: null
    included) applied; an option the model does not have is refused, and loading errors (missing
    weights, bad option values) become a one-line ``PipelineError``."""
    from diffc.backbone import load_backbone

    model = OmegaConf.create(plain(model)) if not isinstance(model, DictConfig) else model
    options, extra = plain(model.get("options")), given_options(option_overrides)
    foreign = sorted(set(extra) - set(options))
    if foreign:
        raise PipelineError(f"model {model.name} has no option {', '.join(foreign)} "
                            f"(its options: {', '.join(options) or 'none'})")
    try:
        return load_backbone(model.name, **(options | extra))
    except Exception as exc:  # missing weights, bad option values: one line for the user
        raise PipelineError(f"model {model.name}: {errors.describe(exc)}") from exc


def build_codec(cfg: DictConfig, option_overrides: Mapping[str, Any] | None = None, deterministic: bool = True):
    """Backbone + ``DiffcCodec`` of a command's composed config: ``cfg.model`` (with the given
    loading-option overrides) and ``cfg.codec`` (``pipelines.codec_config.codec_params``), the
    backbone's config resolved for ``cfg.parity`` (written in the file, so the decoder loads the
    same). ``deterministic`` False: the codec's speed opt-out (``diffc.determinism``)."""
    from diffc.codec import DiffcCodec

    try:
        params, search = codec_params(cfg.codec, cfg.get("parity") or "project")
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"codec: {exc}") from exc
    return DiffcCodec(load_model(cfg.model, option_overrides), params, deterministic=bool(deterministic), search=search)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + ``os.replace``:
    readers see the old file or the whole new one, never a partial file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding of a uint8 [H, W, 3] image."""
    buf = BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def one_line_errors(func: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Decorate a Hydra task: any failure (bad input, corrupt file, missing weights) prints
    ``error: ...`` on one line and exits 2; ``debug=true`` re-raises for the full traceback."""
    return errors.one_line_errors(*EXPECTED_ERRORS)(func)


def check_writable(path: str | os.PathLike, directory: bool = False, what: str = "output") -> None:
    """Refuse, before any work, an output that ``atomic_write`` could not write: ``path`` is a
    directory (or, with ``directory``, the directory to write into is a file), a file is where a
    directory must be created, or the nearest existing directory does not take a new file (a
    read-only filesystem, no permission). Probes with a temp file, deleted at once; creates nothing."""
    path = Path(path)
    if not directory and path.is_dir():
        raise PipelineError(f"{what} {path} is a directory")
    target = path if directory else path.parent
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise PipelineError(f"{what} {path}: cannot create {target}, {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise PipelineError(f"{what} {path}: cannot write in {existing} ({exc.strerror or errors.describe(exc)})") from exc
