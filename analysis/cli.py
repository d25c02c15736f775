"""The command-line convention of every user-facing command: Hydra ``key=value`` overrides.

``pipelines.compress``, ``decompress``, ``evaluate``, ``demo``, ``fit_gaussian`` and
``analysis.rd_curves``, ``report``, ``report_html`` are Hydra apps (``conf/<command>.yaml``; the analysis
commands' in ``analysis/conf/``): options are
``key=value`` (``--help`` lists them), nothing is written into a Hydra output directory, and
bad input prints ONE line ``error: ...`` on stderr and exits 2 (``debug=true``: the traceback).
Benchmarks are the one exception (argparse ``--quick``, fixed by the benchmark contract).

This module is the torch-free glue every entry point shares (hydra and omegaconf only), so
``import analysis.rd_curves`` stays light; ``pipelines`` imports it (never the reverse). It knows
no app's configs: every function takes the config directory (``ANALYSIS_CONF_DIR`` here,
``pipelines.common.CONF_DIR`` for the pipelines' conf/).
Before Hydra sees the command line, ``prepare``:

- quotes verbatim options (paths and captions: ``results=out/model=sdxl``, ``input=a,b.png``,
  ``caption=a cat, sleeping`` are taken as typed, not as Hydra grammar; ``null`` stays null),
  and turns ``metrics=psnr,lpips`` into the list ``[psnr,lpips]`` for list options;
- composes the config once with the overrides and turns Hydra's multi-line composition errors
  (unknown key, unknown config-group option, unparsable value) into one line.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from omegaconf import ListConfig, OmegaConf

from .errors import UsageError, fail, first_line, one_line

#: the analysis commands' configs: a config dir of their own, so that their ``metrics=`` option is
#: not read as the pipelines' ``metrics`` config group (and the pipelines' --help lists no analysis)
ANALYSIS_CONF_DIR = Path(__file__).resolve().parent / "conf"
MULTIRUN_FLAGS = ("-m", "--multirun")


def config_names(group: str, config_dir: Path) -> list[str]:
    """Names of the options of a config group (``CONFIG_DIR/GROUP/*.yaml``)."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def quote(value: str) -> str:
    """``value`` as a Hydra single-quoted string that parses back to exactly ``value``
    (backslashes are escaped only where Hydra needs it: before a quote and at the end)."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"


def _reads_as(arg: str, value: str, multirun: bool) -> bool:
    """Whether Hydra reads the override ``arg`` as the single string ``value`` (in multirun: as
    anything at all, so that ``-m caption=a,b`` stays a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(arg)
    except Exception:  # hydra's grammar errors (an '=' in the value, brackets ...)
        return False
    return multirun or (not override.is_sweep_override() and override.value() == value)


def normalize(argv: Sequence[str], verbatim: Iterable[str] = (), lists: Iterable[str] = ()) -> list[str]:
    """Rewrite ``key=value`` arguments so Hydra reads them as meant: a value of a ``verbatim`` key
    that Hydra would read otherwise (``a,b``, ``x=y``, ``1``) is quoted (``null`` stays null; in
    multirun only values Hydra cannot parse at all, so that ``-m caption=a,b`` stays a sweep);
    ``lists`` keys given as ``a,b`` become ``[a,b]`` (not in multirun, where a comma is a sweep).
    Quoted or bracketed values, and values Hydra already reads as typed, are left alone."""
    verbatim, lists = set(verbatim), set(lists)
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and value[:1] not in ("'", '"') and value != "null":
            if key in verbatim and not _reads_as(arg, value, multirun):
                arg = f"{key}={quote(value)}"
            elif key in lists and not multirun and not value.startswith("["):
                arg = f"{key}=[{value}]"
        out.append(arg)
    return out


def known_keys(config_name: str, config_dir: Path) -> list[str]:
    """Every dotted key of ``CONFIG_NAME.yaml`` composed without overrides (hydra's node excluded)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name), resolve=False)

    def walk(node: Any, prefix: str) -> Iterable[str]:
        for k, v in node.items():
            yield f"{prefix}{k}"
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
    return sorted(walk(cfg, ""))


def _explain(exc: BaseException, config_name: str, config_dir: Path) -> str:
    """One line for a Hydra composition error."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        return f"unknown {group} {name!r}; available: {', '.join(exc.options or config_names(group, config_dir))}"
    if isinstance(exc.__cause__, (ConfigAttributeError, ConfigKeyError)) and exc.__cause__.full_key:
        key, typed = exc.__cause__.full_key, exc.__cause__.object_type
        if dataclasses.is_dataclass(typed):  # a structured config (e.g. a channel's: its keys are its spec's)
            fields = ", ".join(f.name for f in dataclasses.fields(typed))
            return f"unknown option {key!r}: {typed.__name__!r} has no {key.rpartition('.')[2]!r} (its keys: {fields})"
        near = [k for k in known_keys(config_name, config_dir) if k.endswith("." + key.rpartition(".")[2])]
        hint = f"did you mean {' or '.join(near[:3])}? " if near else ""
        return f"unknown option {key!r} ({hint}see --help; +KEY=VALUE adds a new key)"
    cause = f" {first_line(exc.__cause__)}" if exc.__cause__ is not None else ""
    return f"{first_line(exc)}{cause} (see --help)"


def preflight(config_name: str, argv: Sequence[str], config_dir: Path) -> None:
    """Compose ``CONFIG_DIR/CONFIG_NAME.yaml`` with the overrides of ``argv`` (in multirun: those that
    are not sweeps); any error exits with one line. Command lines with other flags (``--help``,
    ``--cfg``, ``-cn`` ...) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in argv):
        return
    parser, overrides = OverridesParser.create(), []
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    for arg in (a for a in argv if a not in MULTIRUN_FLAGS):
        try:
            override = parser.parse_override(arg)
        except Exception as exc:  # hydra's grammar errors: name the argument
            fail(f"cannot parse {arg!r}: {first_line(exc)} (see --help)")
        if not override.is_sweep_override():
            overrides.append(arg)
        elif not multirun:
            fail(f"{arg!r} is a sweep: write [a,b] for a list, quote the value for a text with commas, "
                 f"or add -m to sweep")
        elif (config_dir / override.key_or_group).is_dir() and isinstance(override.value(), ChoiceSweep):
            names = config_names(override.key_or_group, config_dir)
            for choice in override.sweep_string_iterator():
                if choice not in names:
                    fail(f"unknown {override.key_or_group} {choice!r}; available: {', '.join(names)}")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except Exception as exc:
        fail(_explain(exc, config_name, config_dir))


def resolved_cfg(argv: list[str]) -> list[str]:
    """``--cfg job`` prints the job's values, interpolations resolved (Hydra's ``--resolve``): the
    ``${parity:...}`` switches of conf/model/*.yaml show what the job runs with."""
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--cfg", "-c") and value == "job" and "--resolve" not in argv:
            return [*argv, "--resolve"]
    return argv


def check_flags(argv: Sequence[str], multirun: bool) -> None:
    """Fail in one line on a flag Hydra does not know (``--foo``; Hydra would print its whole usage),
    a flag missing its value, or ``-m`` for a command that runs one job (only ``pipelines.evaluate``
    sweeps: elsewhere a multirun would write a ``multirun/`` folder where the command was started)."""
    from hydra._internal.utils import get_args_parser

    if not multirun and any(a in MULTIRUN_FLAGS for a in argv):
        fail("-m/--multirun is for sweeps (python -m pipelines.evaluate -m ...); this command runs once")
    parser = get_args_parser()
    parser.error = lambda message: fail(f"{message} (see --help)")  # type: ignore[method-assign]
    _, extra = parser.parse_known_args(list(argv))
    flags = [a for a in extra if a.startswith("-")]
    if flags:
        fail(f"unknown flag {flags[0]!r}: options are key=value (see --help)")


def prepare(config_name: str, verbatim: Iterable[str] = (), lists: Iterable[str] = (), *,
            config_dir: Path, multirun: bool = False) -> None:
    """Before ``hydra.main``: normalize ``sys.argv`` in place and fail early in one line."""
    check_flags(sys.argv[1:], multirun)
    sys.argv[1:] = resolved_cfg(normalize(sys.argv[1:], verbatim, lists))
    preflight(config_name, sys.argv[1:], config_dir)


HELP_FLAGS = ("--help", "-h")


def defaults_groups(config_name: str, config_dir: Path) -> list[tuple[str, str]]:
    """(group, default choice) of the config groups in ``CONFIG_NAME.yaml``'s defaults list (not
    Hydra's own, not ``_self_``): the groups the command uses."""
    out = []
    conf = OmegaConf.to_container(OmegaConf.load(config_dir / f"{config_name}.yaml"))  # unresolved: defaults
    for entry in conf.get("defaults") or []:  # may interpolate other groups' choices
        if isinstance(entry, str) or len(entry) != 1:
            continue
        (group, choice), = entry.items()
        group = str(group)
        if not group.startswith(("override", "hydra")) and (config_dir / group).is_dir():
            shown = choice if isinstance(choice, str) else "[" + ",".join(map(str, choice or [])) + "]"
            out.append((group, "none" if choice is None else shown))
    return out


def options_text(config_name: str, config_dir: Path) -> str:
    """The options of ``CONFIG_NAME.yaml`` as written, with their comments (what each one means):
    the file without its leading comment block, its defaults list and its ``hydra:`` section."""
    lines, out, skipping = (config_dir / f"{config_name}.yaml").read_text().splitlines(), [], False
    for line in lines:
        top = line[:1] not in (" ", "#", "-", "")
        if top:
            skipping = line.startswith(("defaults:", "hydra:"))
        if skipping or (not out and (line.startswith("#") or not line.strip())):
            continue
        out.append(line)
    return "\n".join(out).strip()


def help_text(config_name: str, config_dir: Path) -> str:
    """``--help``: the config's ``hydra.help.template`` with ``$APP_CONFIG_GROUPS`` the groups this
    command uses (its defaults list: each group's options, the default first) and ``$CONFIG`` its
    options with their comments (Hydra's own ``--help`` prints the values without the comments,
    and every config group of conf/, used or not)."""
    template = str(OmegaConf.load(config_dir / f"{config_name}.yaml").hydra.help.template)
    groups = "\n".join(f"  {g} (default {c}): {', '.join(config_names(g, config_dir))}"
                       for g, c in defaults_groups(config_name, config_dir))
    return template.replace("$APP_CONFIG_GROUPS", groups).replace("$CONFIG", options_text(config_name, config_dir))


def main(task: Callable[[Any], Any], config_name: str, verbatim: Iterable[str] = (), lists: Iterable[str] = (), *,
         config_dir: Path, multirun: bool = False) -> None:
    """A command's ``__main__``: ``prepare``, then Hydra runs ``task(cfg)`` on
    ``CONFIG_DIR/CONFIG_NAME.yaml`` + the command line (or answers --help, --cfg ...).
    ``multirun``: the command accepts ``-m`` (sweeps).

    What Hydra itself would report is one line too: Ctrl-C anywhere (a sweep between or inside its
    jobs) is ``error: interrupted`` (exit 130), and a failure Hydra raises at the end of a sweep
    (``JobFailed`` of ``pipelines.evaluate``) its own message (exit 1), without Hydra's
    ``HYDRA_FULL_ERROR`` hint: ``debug=true`` is this project's switch for the traceback."""
    import hydra

    if any(a in HELP_FLAGS for a in sys.argv[1:]):
        print(help_text(config_name, config_dir))
        return
    prepare(config_name, verbatim, lists, config_dir=config_dir, multirun=multirun)
    debug = any(a.replace(" ", "").lower() in ("debug=true", "debug=1") for a in sys.argv[1:])
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its hint: reported below
    try:
        hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(task)()
    except KeyboardInterrupt:
        if debug:
            raise
        fail("interrupted", 130)
    except Exception as exc:
        from hydra.errors import CompactHydraException

        if debug:
            raise
        message = first_line(exc)
        if isinstance(exc, CompactHydraException) and message.startswith("error: "):
            fail(message.removeprefix("error: "), 1)  # ours: the end of a sweep with a failed job
        if isinstance(exc, CompactHydraException):  # a sweep's composition error (unknown key ...)
            fail(f"{message} (see --help)")
        fail(one_line(exc))


def call(task: Callable[[Any], Any], config_name: str, overrides: Sequence[str], config_dir: Path) -> int:
    """Run a command in process as its command line would (compose the config with ``overrides``,
    call ``task``): its exit status (0, or the status of its one-line error)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides))
    try:
        task(cfg)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def require(cfg: Any, *keys: str) -> None:
    """Fail in one line when a mandatory option (``???`` in the config) was not given."""
    missing = [k for k in keys if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise UsageError(f"missing required option(s): {', '.join(f'{k}=...' for k in missing)} (see --help)")


def as_list(value: Any) -> list[str] | None:
    """A list option: ``[a, b]``, ``'a,b'`` or ``a`` -> ['a', 'b'] / ['a']; null -> None."""
    if value is None:
        return None
    if isinstance(value, (ListConfig, list, tuple)):
        return [str(v) for v in value]
    return [t.strip() for t in str(value).strip().removeprefix("[").removesuffix("]").split(",") if t.strip()]
