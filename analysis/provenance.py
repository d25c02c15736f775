"""Where and with what a result was made: the git revision of the code and the machine (standard
library only; ``pipelines.evaluate`` records them in each job's done.json, ``analysis.report_html``
shows them and stamps its own)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the checkout this code runs from
CODE = Path(__file__).resolve().parents[1]


def git_revision(path: Path = CODE) -> str:
    """The git revision of the checkout holding ``path`` (12 hex digits, '-dirty' when tracked files
    have local changes), or '-' outside a checkout / without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        rev = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no") if rev else ""
    except (OSError, subprocess.SubprocessError):
        return "-"
    return (rev + ("-dirty" if dirty else "")) if rev else "-"


def machine() -> dict[str, Any]:
    """Host name, OS / architecture, CPU count and Python version of this process."""
    return {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0]}
