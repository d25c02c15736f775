"""What a newcomer reads (issue 28): the license and citation files, the README's citation entries,
and ``--help``: each option with what it means, and only the config groups the command uses."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from analysis.cli import ANALYSIS_CONF_DIR, help_text, options_text
from pipelines.common import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("Lossy Compression with Gaussian Diffusion", "Lossy Compression with Pretrained Diffusion Models")


def test_license_and_citation_files_name_the_tool_and_both_papers() -> None:
    license = (ROOT / "LICENSE").read_text()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert declared == "MIT" and license.startswith("MIT License") and "WITHOUT WARRANTY" in license
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == declared and "diffc-pipeline" in cff["title"]
    refs = {r["title"]: r for r in cff["references"]}
    assert set(refs) == set(PAPERS)
    assert refs[PAPERS[0]]["authors"][0]["family-names"] == "Theis" and refs[PAPERS[0]]["year"] == 2022
    assert [a["family-names"] for a in refs[PAPERS[1]]["authors"]] == ["Vonderfecht", "Liu"]
    assert refs[PAPERS[1]]["year"] == 2025 and "ICLR" in refs[PAPERS[1]]["conference"]["name"]
    readme = (ROOT / "README.md").read_text()
    (bib,) = re.findall(r"```bibtex\n(.*?)```", readme, re.S)
    assert len(re.findall(r"^@\w+\{", bib, re.M)) == 3 and all(f"{{{t}}}" in bib for t in PAPERS)


@pytest.mark.parametrize("config, config_dir", [
    ("compress", CONF_DIR), ("decompress", CONF_DIR), ("fit_gaussian", CONF_DIR), ("demo", CONF_DIR),
    ("doctor", CONF_DIR), ("rd_curves", ANALYSIS_CONF_DIR), ("report", ANALYSIS_CONF_DIR)])
def test_help_says_what_each_option_means(config: str, config_dir: Path) -> None:
    """Every option line of the command's --help carries its comment (Hydra's own help printed the
    bare values)."""
    options = [ln for ln in options_text(config, config_dir).splitlines() if re.match(r"^\s*[a-z_]+:", ln)]
    assert options and all("#" in ln for ln in options), [ln for ln in options if "#" not in ln]


def test_compress_help_lists_only_the_groups_it_uses() -> None:
    r = subprocess.run([sys.executable, "-m", "pipelines.compress", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == help_text("compress", CONF_DIR).strip()
    groups = re.findall(r"^  ([a-z]+) \(default ", r.stdout, re.M)
    assert groups == ["model", "codec", "bitrate", "captioner"], groups  # bitrate: the shorthands fill it
    assert "input: ???" in r.stdout and "# image file" in r.stdout
