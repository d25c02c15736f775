"""The packages' layering (docs/design.md §6, README "Layout"): conf/ -> pipelines/ -> {diffc/, analysis/}.

``pipelines`` -> ``analysis`` is the one arrow between the two apps: ``analysis`` reads results
(parquet) and imports no ``diffc`` and no ``pipelines`` module, and the codec core ``diffc`` imports
neither app. Checked twice, so that neither check passes by accident: importing every ``analysis``
module in a fresh interpreter leaves no such module in ``sys.modules``, and a walk of every module's
syntax tree (imports inside functions too, relative ones resolved) finds no import of one.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the repository's own top-level packages (conf/ is installed as ``diffc_conf``)
OWN = ("diffc", "pipelines", "analysis", "benchmarks", "tests", "conf", "diffc_conf")
#: package -> the repository packages its modules may import (itself included)
ALLOWED = {"analysis": {"analysis"}, "diffc": {"diffc"}}


def modules(package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (subpackages included)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module that ``source`` (the text of ``module``) imports, as absolute dotted names:
    ``import`` and ``from`` statements anywhere (in functions too; relative ones resolved against
    ``module``'s package, '<beyond top level>' when they climb out of it), and the string argument of
    ``importlib.import_module`` / ``__import__`` calls."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module or "")
            elif node.level - 1 > len(package) - 1:
                names.add("<beyond top level>")
            else:
                base = package[:len(package) - (node.level - 1)]
                names.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def forbidden(names: set[str], package: str) -> list[str]:
    """The names among ``names`` that are repository packages ``package`` may not import."""
    return sorted(n for n in names if n == "<beyond top level>"
                  or (n.split(".")[0] in OWN and n.split(".")[0] not in ALLOWED[package]))


def test_the_import_walk_sees_every_spelling() -> None:
    """The walk below cannot pass by missing an import: top-level, in a function, relative beyond the
    package, through importlib, each is found (and the package's own relative imports are allowed)."""
    source = ("import numpy\nfrom . import cli\nfrom .schema import COLUMNS\n"
              "def f():\n    from diffc.codec import DiffcCodec\n    import pipelines.common\n"
              "def g():\n    from ..diffc import errors\n"
              "import importlib\nimportlib.import_module('diffc.format')\n__import__('pipelines')\n")
    names = imported(source, "analysis.report")
    assert {"numpy", "analysis", "analysis.schema", "diffc.codec", "pipelines.common", "diffc.format",
            "pipelines"} <= names
    assert forbidden(names, "analysis") == ["<beyond top level>", "diffc.codec", "diffc.format", "pipelines",
                                            "pipelines.common"]
    assert imported("from .rcc.pfr import search\n", "diffc", is_package=True) == {"diffc.rcc.pfr"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_module_imports_across_the_layers(package: str) -> None:
    """No ``analysis`` module imports ``diffc`` or ``pipelines`` (it reads parquet alone), and no
    ``diffc`` module imports ``analysis`` or ``pipelines`` (the core knows no app), anywhere in its
    source."""
    found = modules(package)
    assert len(found) > 5, found
    crossing = {name: bad for name, path in found.items()
                if (bad := forbidden(imported(path.read_text(), name, path.name == "__init__.py"), package))}
    assert not crossing, crossing


def test_importing_every_analysis_module_loads_no_diffc_and_no_pipelines() -> None:
    """In a fresh interpreter, importing every ``analysis`` module (the commands rd_curves, report,
    report_html, export, visual_comparison, make_published; the glue cli and errors; the results
    contract schema ...) leaves no ``diffc``, ``pipelines`` or ``diffc_conf`` module in sys.modules."""
    names = sorted(modules("analysis"))
    assert {"analysis.cli", "analysis.errors", "analysis.schema", "analysis.rd_curves", "analysis.report",
            "analysis.report_html", "analysis.export", "analysis.visual_comparison",
            "analysis.make_published"} <= set(names), names
    code = ("import importlib, json, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {OWN!r})))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(names) <= set(loaded)  # every one was imported
    assert [m for m in loaded if m.split(".")[0] != "analysis"] == []


@pytest.mark.parametrize("package", ["diffc", "pipelines", "analysis", "benchmarks"])
def test_every_import_of_our_own_modules_names_one_that_exists(package: str) -> None:
    """Imports inside functions run only on some paths (a missing metric's error message, say): each
    one of ``diffc`` / ``pipelines`` / ``analysis`` names a module or package of the repository, so a
    moved module cannot leave one behind (``from diffc.errors import ...`` after errors moved)."""
    known = {name for pkg in ("diffc", "pipelines", "analysis") for name in modules(pkg)}
    missing = {}
    for name, path in modules(package).items():
        names = imported(path.read_text(), name, path.name == "__init__.py")
        gone = sorted(n for n in names if n.split(".")[0] in ("diffc", "pipelines", "analysis") and n not in known)
        if gone:
            missing[name] = gone
    assert not missing, missing
