"""One-line error reporting, THE convention of every command line (standard library only:
importing it loads neither torch nor Hydra).

It lives in ``analysis``, the lowest layer that has command lines: ``analysis`` uses it, and
``pipelines`` and ``benchmarks`` import it from here (``pipelines`` -> ``analysis`` is the one arrow
between the two apps). The codec core (``diffc``) has no command line: it raises its own exception
types (``diffc.format.DiffcFormatError`` ...) and never imports this module.

Convention: a command that fails on bad input or an unusable setup prints ONE line
``error: <message>`` on stderr and exits with status 2; ``debug=true`` re-raises instead (full
traceback). Expected failures (``UsageError`` and the types a command passes as ``expected``)
print their message's first line; anything else is prefixed with its type name and a hint.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, NoReturn, TypeVar

T = TypeVar("T")


class UsageError(Exception):
    """Bad input or an unusable setup: reported to the user as one line, non-zero exit."""


def first_line(exc: BaseException | str, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (or of a text), cut to about ``limit``
    chars at a word boundary, with ``…`` where it was cut (never mid-word)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if limit is None else shorten(line, limit)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at the last space before it, ``…`` appended
    (one word longer than ``limit`` is cut inside, the only case that is)."""
    if len(text) <= limit:
        return text
    head = text[:limit].rstrip()
    cut = head.rfind(" ")
    return (head[:cut].rstrip(" ,;:(") if cut > 0 else head[:max(limit - 1, 1)]) + "…"


def describe(exc: BaseException, limit: int | None = None) -> str:
    """``TypeName: first line`` of an exception (``TypeName`` alone when it has no message)."""
    text = first_line(exc, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def one_line(exc: BaseException, expected: tuple[type[BaseException], ...] = ()) -> str:
    """The message to show for ``exc``: its first line when it is an expected failure, else its
    type and first line plus how to see the traceback."""
    if isinstance(exc, (UsageError, *expected)):
        return first_line(exc)
    return f"{describe(exc)} (debug=true shows the traceback)"


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` (one line) on stderr and exit with ``code``."""
    print(f"error: {first_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def one_line_errors(*expected: type[BaseException]) -> Callable[[Callable[[Any], T]], Callable[[Any], T]]:
    """Decorate a command's task ``func(cfg)``: any failure prints one ``error: ...`` line and
    exits 2 (Ctrl-C: ``error: interrupted``, exit 130); ``cfg.get("debug")`` true re-raises."""

    def decorate(func: Callable[[Any], T]) -> Callable[[Any], T]:
        @functools.wraps(func)
        def wrapper(cfg: Any) -> T:
            try:
                return func(cfg)
            except KeyboardInterrupt:
                fail("interrupted", 130)
            except Exception as exc:
                if cfg.get("debug", False):
                    raise
                fail(one_line(exc, expected))

        return wrapper

    return decorate
