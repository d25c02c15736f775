"""``key=value`` command lines for the analysis tools (Hydra-style, without Hydra's machinery).

Errors (unknown key, bad value, missing required key) exit with status 2 and one line on
stderr; ``--help`` / ``-h`` prints the options and exits 0. ``debug=true`` shows tracebacks.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence


class UsageError(Exception):
    """Bad command-line or input: reported as one line."""


@dataclass(frozen=True)
class Option:
    """One ``key=value`` option: parser, default (None = required unless ``optional``), help."""

    parse: Callable[[str], Any]
    default: Any
    help: str
    optional: bool = False


def as_list(text: str) -> list[str]:
    """'a,b' or '[a,b]' -> ['a', 'b'] ('' -> [])."""
    text = text.strip().removeprefix("[").removesuffix("]")
    return [t.strip() for t in text.split(",") if t.strip()]


def as_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse(argv: Sequence[str], options: dict[str, Option], prog: str, about: str) -> dict[str, Any]:
    """Parse ``key=value`` arguments against ``options``; handles --help and errors."""
    spec = dict(options) | {"debug": Option(as_bool, False, "show tracebacks on errors")}
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: python -m {prog} " + " ".join(
            f"{k}=..." if o.default is None and not o.optional else f"[{k}=...]" for k, o in spec.items()))
        print(f"\n{about}\n")
        for k, o in spec.items():
            default = "required" if o.default is None and not o.optional else f"default: {o.default}"
            print(f"  {k:<10} {o.help} ({default})")
        sys.exit(0)
    values: dict[str, Any] = {k: o.default for k, o in spec.items()}
    for arg in argv:
        key, sep, raw = arg.partition("=")
        key = key.lstrip("+")
        if not sep:
            fail(f"expected key=value, got {arg!r} (see --help)")
        if key not in spec:
            fail(f"unknown option {key!r}; known: {', '.join(spec)}")
        try:
            values[key] = spec[key].parse(raw)
        except ValueError as exc:
            fail(f"{key}: {exc}")
    missing = [k for k, o in spec.items() if values[k] is None and o.default is None and not o.optional]
    if missing:
        fail(f"missing required option(s): {', '.join(f'{m}=...' for m in missing)}")
    return values


def run(main: Callable[[dict[str, Any]], None], argv: Sequence[str], options: dict[str, Option],
        prog: str, about: str) -> None:
    """Parse, call ``main(values)``; a UsageError (or any error without debug=true) is one line."""
    values = parse(argv, options, prog, about)
    try:
        main(values)
    except UsageError as exc:
        fail(str(exc))
    except Exception as exc:  # unexpected: still one line unless debug=true
        if values["debug"]:
            raise
        fail(f"{type(exc).__name__}: {exc}", code=1)
