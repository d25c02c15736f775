"""Outputs are checked before the work: compress, decompress and evaluate refuse an output they
could not write (a directory, a file in the way, a read-only location) in one line, before any
backbone is loaded (``pipelines.common.check_writable``); decompress refuses trailing data."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from analysis.cli import call
from diffc import format as fmt
from pipelines import evaluate
from pipelines.common import CONF_DIR, PipelineError, check_writable
from pipelines.compress import compress
from pipelines.decompress import decompress


def _sys_is_read_only() -> bool:
    """/sys takes no new file, even for root (sysfs): the read-only location of these tests."""
    try:
        with tempfile.TemporaryFile(dir="/sys/kernel"):
            return False
    except OSError:
        return True


READ_ONLY = pytest.param("/sys/kernel/diffc-test/out.FILE",
                         marks=pytest.mark.skipif(not _sys_is_read_only(), reason="/sys is writable here"))


@pytest.fixture
def no_backbone(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if any backbone is loaded; returns the names asked for."""
    asked: list[str] = []

    def refuse(name: str, **options):
        asked.append(name)
        raise AssertionError(f"backbone {name} loaded before the output was checked")

    monkeypatch.setattr("diffc.backbone.load_backbone", refuse)
    return asked


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "i.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def diffc_file(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "i.diffc"
    assert call(compress, "compress", ["model=gaussian", f"input={image}", f"output={out}", "timestep=300",
                                       "progress=false"], CONF_DIR) == 0
    return out


def bad_output(kind: str, tmp_path: Path, suffix: str) -> str:
    """An output path that cannot be written: a directory, a path below a file, read-only."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory must go")
    (tmp_path / "adir").mkdir(exist_ok=True)
    return {"file-in-the-way": f"{blocker}/sub/out.{suffix}", "directory": str(tmp_path / "adir")}.get(
        kind, kind.replace("FILE", suffix))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("kind", ["file-in-the-way", "directory", READ_ONLY])
@pytest.mark.parametrize("key", ["output", "recon_output"])
def test_compress_checks_its_outputs_before_loading_the_backbone(kind: str, key: str, image: Path, tmp_path: Path,
                                                                 no_backbone: list[str],
                                                                 capsys: pytest.CaptureFixture) -> None:
    target = bad_output(kind, tmp_path, "diffc" if key == "output" else "png")
    outputs = {"output": str(tmp_path / "ok.diffc"), "recon_output": str(tmp_path / "ok.png"), key: target}
    code = call(compress, "compress", ["model=gaussian", f"input={image}", "timestep=300", "progress=false",
                                       *(f"{k}={v}" for k, v in outputs.items())], CONF_DIR)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"error: {key} {target}")
    assert ("is a directory" if kind == "directory" else "is a file" if kind == "file-in-the-way"
            else "cannot write in /sys") in line
    assert no_backbone == [] and not (tmp_path / "ok.diffc").exists()


def test_compress_with_real_weights_missing_names_the_output_not_the_weights(image: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "blocker").write_text("")
    code = call(compress, "compress", ["model=sd15", "model.options.path=/nonexistent/weights", f"input={image}",
                                       f"output={tmp_path}/blocker/x.diffc", "timestep=300", "progress=false"],
                CONF_DIR)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "output" in line and "is a file" in line and "weights" not in line


@pytest.mark.parametrize("kind", ["file-in-the-way", "directory", READ_ONLY])
def test_decompress_checks_its_output_before_loading_the_backbone(kind: str, diffc_file: Path, tmp_path: Path,
                                                                  no_backbone: list[str],
                                                                  capsys: pytest.CaptureFixture) -> None:
    target = bad_output(kind, tmp_path, "png")
    code = call(decompress, "decompress", [f"input={diffc_file}", f"output={target}", "progress=false"], CONF_DIR)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"error: output {target}") and no_backbone == []


def test_evaluate_checks_the_job_directory_before_any_work(tmp_path: Path, no_backbone: list[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The job directory under ``root`` cannot be made (a file is in the way): refused before
    the dataset is loaded or a backbone built."""
    monkeypatch.setattr(evaluate, "load_dataset", lambda *a, **k: pytest.fail("dataset loaded"))
    (tmp_path / "root").write_text("not a directory")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=gaussian", f"root={tmp_path / 'root'}", "progress=false"])
    with pytest.raises(PipelineError, match=r"job directory .*: cannot create .*root.* is a file"):
        evaluate.run_job(cfg, tmp_path / "root" / "default" / "job")
    assert no_backbone == []


def test_check_writable_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.png"
    check_writable(target)
    check_writable(tmp_path / "jobs" / "j", directory=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(PipelineError, match="is a file"):
        check_writable(tmp_path / "f", directory=True)


def test_decompress_refuses_trailing_junk(diffc_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Junk after the payload (its CRC forged to match, so only the decoder can tell) is refused in
    one line with no output; the file itself decodes."""
    header, payload = fmt.read(diffc_file.read_bytes())
    junk = tmp_path / "junk.diffc"
    junk.write_bytes(fmt.write(header, payload + bytes(8 << 20)))
    out = tmp_path / "out.png"
    code = call(decompress, "decompress", [f"input={junk}", f"output={out}", "progress=false"], CONF_DIR)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and f"{8 << 20} bytes of trailing data" in line and not out.exists()
    assert call(decompress, "decompress", [f"input={diffc_file}", f"output={out}", "progress=false"], CONF_DIR) == 0
    assert out.exists()


def test_the_compress_command_refuses_a_bad_output_before_importing_torch(tmp_path: Path) -> None:
    """The real command line: a file in the way of ``output=`` is refused before torch (and so any
    model) is imported, which is what keeps the refusal near a second instead of torch's import."""
    import os
    import subprocess
    import sys

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "in.png")
    (tmp_path / "afile").write_bytes(b"")
    code = ("import runpy, sys\n"
            f"sys.argv = ['compress', 'model=sd15', 'input={tmp_path / 'in.png'}', "
            f"'output={tmp_path / 'afile' / 'sub' / 'out.diffc'}', 'timestep=300']\n"
            "try:\n    runpy.run_module('pipelines.compress', run_name='__main__')\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=os.environ | {"PYTHONPATH": str(root)})
    assert r.stdout.split() == ["2", "False"], (r.stdout, r.stderr)
    assert r.stderr.strip() == f"error: output {tmp_path / 'afile' / 'sub' / 'out.diffc'}: cannot create " \
                               f"{tmp_path / 'afile' / 'sub'}, {tmp_path / 'afile'} is a file"
