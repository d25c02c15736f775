"""Command lines: pipelines.compress / pipelines.decompress round trips and bad input, and the one
convention of every command (Hydra key=value, --help, one-line errors, paths taken verbatim).

Bad input must give one line on stderr, a non-zero exit and no output file. Most cases run the
Hydra task in-process (compose + call) for speed; the real ``python -m`` path runs a few times.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.cli import call
from diffc import format as fmt
from pipelines.common import CONF_DIR
from pipelines.compress import compress
from pipelines.decompress import decompress

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def odd_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 77x53 RGB test image (smooth + texture, deterministic)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:53, 0:77]
    img = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 40, (53, 77, 3))
    path = tmp_path_factory.mktemp("img") / "odd.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def run_task(task, config: str, overrides: list[str], capsys: pytest.CaptureFixture,
             progress: bool = False) -> tuple[int, str, str]:
    """Run a command in process (``analysis.cli.call``: compose ``conf/CONFIG.yaml`` + ``overrides``, and
    ``progress=false`` unless the command has no progress bar): (exit status, stdout, stderr)."""
    code = call(task, config, overrides + ([] if progress else ["progress=false"]), CONF_DIR)
    out, err = capsys.readouterr()
    return code, out, err


def cli(module: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args, "progress=false"], cwd=cwd,
                          env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def encoded(odd_image: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real CLIs: compress (with the encoder's reconstruction) and decompress."""
    d = tmp_path_factory.mktemp("cli")
    files = {"diffc": d / "a.diffc", "reported": d / "reported.png", "decoded": d / "decoded.png"}
    r = cli("pipelines.compress", "model=gaussian", f"input={odd_image}", f"output={files['diffc']}",
            "timestep=300", f"recon_output={files['reported']}")
    assert r.returncode == 0, r.stderr
    assert "bpp" in r.stdout
    r = cli("pipelines.decompress", f"input={files['diffc']}", f"output={files['decoded']}")
    assert r.returncode == 0, r.stderr
    return files


def test_cli_round_trip_gives_the_reported_png(encoded: dict[str, Path], odd_image: Path) -> None:
    assert encoded["decoded"].read_bytes() == encoded["reported"].read_bytes()
    decoded = np.asarray(Image.open(encoded["decoded"]))
    assert decoded.shape == (53, 77, 3)  # original size, not the padded 80x56
    header, _ = fmt.read(encoded["diffc"].read_bytes())
    assert (header.backbone, header.width, header.height) == ("gaussian", 77, 53)
    original = np.asarray(Image.open(odd_image)).astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((decoded - original) ** 2))
    assert 12 < psnr < 60  # a real, lossy reconstruction of this image


@pytest.mark.parametrize("target", [0.3, 1.0])
def test_bpp_target_picks_highest_rate_within_target(odd_image: Path, tmp_path: Path, target: float,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "b.diffc"
    code, _, err = run_task(compress, "compress", ["model=gaussian", f"input={odd_image}", f"output={out}",
                                                   f"bpp={target}"], capsys)
    assert code == 0, err
    bpp = out.stat().st_size * 8 / (77 * 53)
    assert bpp <= target
    header, _ = fmt.read(out.read_bytes())
    # one more step would exceed the target: re-encode at the next schedule step and compare
    from diffc.codec import DiffcCodec, params_from_header
    from diffc.backbone import load_backbone
    from pipelines.datasets import read_image, to_tensor

    codec = DiffcCodec(load_backbone("gaussian"), params_from_header(header))
    if header.n_steps + 1 < len(codec.timesteps):
        nxt = codec.encode(to_tensor(read_image(odd_image)),
                           stop_timesteps=[codec.timesteps[header.n_steps + 1]]).points[-1]
        assert nxt.bpp > target


def test_decompress_reports_drift_from_a_reference(encoded: dict[str, Path], odd_image: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """``recon_reference=``: the encoder's PNG gives 'inf' (identical); an unrelated image is a
    desync: one line, a non-zero exit, and no output file."""
    out = tmp_path / "d.png"
    code, stdout, err = run_task(decompress, "decompress", [f"input={encoded['diffc']}", f"output={out}",
                                                            f"recon_reference={encoded['reported']}"], capsys)
    assert code == 0, err
    assert "drift vs" in stdout and "inf dB PSNR" in stdout and out.read_bytes() == encoded["reported"].read_bytes()
    other = tmp_path / "other.png"
    Image.fromarray(255 - np.asarray(Image.open(encoded["reported"]))).save(other)
    out2 = tmp_path / "d2.png"
    code, _, err = run_task(decompress, "decompress", [f"input={encoded['diffc']}", f"output={out2}",
                                                       f"recon_reference={other}"], capsys)
    assert code != 0 and "desynchronised" in err and len(err.strip().splitlines()) == 1 and not out2.exists()


def test_deterministic_opt_out_from_the_command_line(odd_image: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """``deterministic=false``: the file records that no thread count was fixed; the default fixes
    this process's count."""
    threads = {}
    for flag in ("true", "false"):
        f = tmp_path / f"{flag}.diffc"
        code, _, err = run_task(compress, "compress", ["model=gaussian", f"input={odd_image}", f"output={f}",
                                                       "timestep=500", f"deterministic={flag}"], capsys)
        assert code == 0, err
        threads[flag] = fmt.read(f.read_bytes())[0].provenance.threads
    assert threads["false"] == 0 and threads["true"] >= 1


def test_tiny_sd15_cli_round_trip(odd_image: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f, rep, dec = tmp_path / "t.diffc", tmp_path / "rep.png", tmp_path / "dec.png"
    code, out, err = run_task(compress, "compress", ["model=tiny-sd15", f"input={odd_image}", f"output={f}",
                                                     "timestep=500", f"recon_output={rep}"], capsys)
    assert code == 0, err
    assert f"{f.stat().st_size} B" in out
    code, _, err = run_task(decompress, "decompress", [f"input={f}", f"output={dec}"], capsys)
    assert code == 0, err
    assert dec.read_bytes() == rep.read_bytes()


def test_reference_parity_files_decode_with_the_header_parity(odd_image: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A file written with the reference's settings (parity=reference: its timestep labels and
    reconstruction grid) says so in its header and decodes with decompress's defaults to the
    encoder's PNG; told parity=project, the fingerprint refuses it in one line."""
    f, rep, dec = tmp_path / "r.diffc", tmp_path / "rep.png", tmp_path / "dec.png"
    code, _, err = run_task(compress, "compress", ["model=tiny-sd15", "parity=reference", f"input={odd_image}",
                                                   f"output={f}", "timestep=500", "codec.recon.mode=ode",
                                                   f"recon_output={rep}"], capsys)
    assert code == 0, err
    header = fmt.read(f.read_bytes())[0]
    assert (header.recon.grid, header.parity) == ("reference", "reference")
    code, _, err = run_task(decompress, "decompress", [f"input={f}", f"output={dec}"], capsys)
    assert code == 0, err
    assert dec.read_bytes() == rep.read_bytes()
    code, _, err = run_task(decompress, "decompress", [f"input={f}", f"output={tmp_path / 'p.png'}",
                                                       "parity=project"], capsys)
    assert code != 0 and "fingerprint" in err and len(err.strip().splitlines()) == 1


def _bad_files(tmp: Path, good: bytes) -> dict[str, Path]:
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    cases = {"empty": b"", "truncated": good[: len(good) // 2], "foreign": b"\x89PNG\r\n\x1a\n" + bytes(64),
             "bitflip": bytes(flipped), "header-only": good[:12]}
    paths = {}
    for name, data in cases.items():
        paths[name] = tmp / f"{name}.diffc"
        paths[name].write_bytes(data)
    paths["missing"] = tmp / "missing.diffc"
    return paths


@pytest.mark.parametrize("case", ["empty", "truncated", "foreign", "bitflip", "header-only", "missing"])
def test_decompress_bad_file_one_line_no_output(case: str, encoded: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    bad = _bad_files(tmp_path, encoded["diffc"].read_bytes())[case]
    out = tmp_path / "out.png"
    code, _, err = run_task(decompress, "decompress", [f"input={bad}", f"output={out}"], capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    if case != "missing":  # the kind's prefix, once (diffc/format.py DiffcFormatError.prefix)
        kind = next(k for k in (fmt.NotADiffcFile, fmt.TruncatedFile, fmt.CorruptFile) if k.prefix in err)
        assert lines[0].startswith(f"error: {kind.prefix}") and err.count(".diffc file") == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out.png*"))


@pytest.mark.parametrize("overrides, needle", [
    (["input=MISSING", "output=OUT", "timestep=300"], "cannot read image"),
    (["input=NOTIMAGE", "output=OUT", "timestep=300"], "cannot read image"),
    (["input=IMG", "output=OUT"], "exactly one of timestep"),
    (["input=IMG", "output=OUT", "timestep=300", "bpp=0.5"], "exactly one of timestep"),
    (["input=IMG", "output=OUT", "timestep=0"], "positive integers"),
    (["input=IMG", "output=OUT", "bpp=0.001"], "no rate point within"),
    (["input=IMG", "timestep=300"], "missing required option"),
    (["input=IMG", "output=OUT", "timestep=300", "codec.channel.chunk_bits=40"], "chunk_bits"),
    (["input=IMG", "output=OUT", "timestep=300", "model.options.params_path=/nope.npz"], "not found"),
])
def test_compress_bad_input_one_line_no_output(overrides: list[str], needle: str, odd_image: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.diffc"
    notimage = tmp_path / "notimage.png"
    notimage.write_bytes(b"this is not an image")
    subst = {"MISSING": str(tmp_path / "missing.png"), "NOTIMAGE": str(notimage), "IMG": str(odd_image),
             "OUT": str(out)}
    args = [o.split("=")[0] + "=" + subst.get(o.split("=", 1)[1], o.split("=", 1)[1]) for o in overrides]
    code, _, err = run_task(compress, "compress", ["model=gaussian", *args], capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not out.exists() and not list(tmp_path.glob(".out.diffc*"))


def test_decompress_refuses_other_weights(encoded: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A file from the shipped Kodak fit, decoded with other prior parameters: fingerprint mismatch."""
    import pipelines.decompress as dmod
    from pipelines.common import model_config

    with np.load(ROOT / "diffc/backbones/params/gaussian_kodak.npz") as f:
        np.savez(tmp_path / "other.npz", mean=f["mean"], var=f["var"] * 1.01)

    def other_weights(name: str, parity: str = "project"):
        cfg = model_config(name, parity)
        cfg.options.params_path = str(tmp_path / "other.npz")
        return cfg

    monkeypatch.setattr(dmod, "model_config", other_weights)
    out = tmp_path / "o.png"
    code, _, err = run_task(decompress, "decompress", [f"input={encoded['diffc']}", f"output={out}"], capsys)
    assert code != 0 and "fingerprint" in err and len(err.strip().splitlines()) == 1
    assert "Gaussian prior" in err and str(tmp_path / "other.npz") in err and "options.params_path=" in err
    assert "refiner" not in err  # what differs for this backbone, not SDXL's advice (issue 28)
    assert not out.exists()


def test_decompress_bad_recon_steps_is_one_line(encoded: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """The codec validates recon_steps (the pipelines keep no copy of the rule): one line, no file."""
    out = tmp_path / "o.png"
    code, _, err = run_task(decompress, "decompress", [f"input={encoded['diffc']}", f"output={out}",
                                                       "recon_steps=0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "recon_steps must be an integer in 1..1000" in err, err
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["model=nope", "input=x", "output=y", "timestep=1"], "error: unknown model 'nope'; available: "),
    (["bogus=1", "input=x", "output=y"], "error: unknown option 'bogus' (see --help"),
    (["model.options.bogus=1", "input=x", "output=y"], "error: unknown option 'model.options.bogus'"),
    (["input=x", "output=y", "timestep=1,2"], "error: 'timestep=1,2' is a sweep: write [a,b] for a list"),
    (["input=x", "output=y", "timestep=[1"], "error: cannot parse 'timestep=[1'"),
    (["--foo", "input=x", "output=y"], "error: unknown flag '--foo': options are key=value"),
    (["--cfg", "nope", "input=x", "output=y"], "error: argument --cfg/-c: invalid choice: 'nope'"),
    (["-m", "input=x", "output=y", "timestep=1,2"], "error: -m/--multirun is for sweeps"),
    (["input=x", "output=y", "recon=ode"], "error: unknown option 'recon' (did you mean codec.recon"),
    # a key the chosen channel does not have is refused at composition (issue 25)
    (["codec=ddcm", "codec.channel.chunk_bits=8", "input=x", "output=y"],
     "error: unknown option 'codec.channel.chunk_bits': 'ddcm' has no 'chunk_bits' (its keys: name, codebook_bits)"),
    (["codec.channel.codebook_bits=8", "input=x", "output=y"], "error: unknown option 'codec.channel.codebook_bits': 'pfr'"),
    (["codec.channel.chunk_bits=x", "input=x", "output=y"], "error: "),
])
def test_real_cli_hydra_errors_are_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    r = cli("pipelines.compress", *args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(needle) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    if "unknown model" in needle:  # the list of the model configs there are
        listed = r.stderr.strip().split("available: ")[1].split(", ")
        assert listed == sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")) and "gaussian" in listed
    assert not list(tmp_path.iterdir())  # nothing written, no Hydra output dir


def test_compress_timestep_must_be_an_integer(odd_image: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for bad in ("abc", "3.5"):
        code, _, err = run_task(compress, "compress", ["model=gaussian", f"input={odd_image}",
                                                       f"output={tmp_path / 'a.diffc'}", f"timestep={bad}"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: timestep must be an integer >= 0, got ") and bad in err
    assert not (tmp_path / "a.diffc").exists()


def test_the_documented_reconstruction_keys_work(odd_image: Path, tmp_path: Path) -> None:
    """README: codec.recon.mode / codec.recon.steps on compress (stored in the file), recon= on decompress."""
    f = tmp_path / "a.diffc"
    r = cli("pipelines.compress", "model=gaussian", f"input={odd_image}", f"output={f}", "timestep=300",
            "codec.recon.mode=ode", "codec.recon.steps=3", f"recon_output={tmp_path / 'enc.png'}")
    assert r.returncode == 0, r.stderr
    assert fmt.read(f.read_bytes())[0].recon.mode == "ode"
    r = cli("pipelines.decompress", f"input={f}", f"output={tmp_path / 'dec.png'}", "recon=denoise")
    assert r.returncode == 0, r.stderr
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "dec.png")), np.asarray(Image.open(tmp_path / "enc.png")))


def test_real_cli_errors_and_help(tmp_path: Path) -> None:
    r = cli("pipelines.decompress", f"input={tmp_path / 'none.diffc'}", f"output={tmp_path / 'o.png'}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "No such file" in r.stderr
    for module in ("pipelines.compress", "pipelines.decompress"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "input" in r.stdout and "output" in r.stdout
    for module, usage in [("pipelines.demo", "python -m pipelines.demo [root=outputs]"),
                          ("pipelines.fit_gaussian", "python -m pipelines.fit_gaussian out=FILE.npz [images=DIR]"),
                          ("pipelines.evaluate", "python -m pipelines.evaluate [-m] model=NAME dataset=NAME")]:
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and usage in r.stdout, (module, r.stdout[-500:])


def test_paths_are_taken_verbatim(odd_image: Path, tmp_path: Path) -> None:
    """Paths with ',' '=' and spaces (a sweep, an override and Hydra grammar, unquoted) round-trip;
    nothing is written where the command runs."""
    d = tmp_path / "model=x,dataset=y" / "a b"
    d.mkdir(parents=True)
    img, f, rep, dec = d / "in,1.png", d / "k=1.diffc", d / "rep, 1.png", d / "dec=1.png"
    img.write_bytes(odd_image.read_bytes())
    work = tmp_path / "cwd"
    work.mkdir()
    r = cli("pipelines.compress", "model=gaussian", f"input={img}", f"output={f}", "timestep=300",
            f"recon_output={rep}", "caption=a cat, sleeping", cwd=work)
    assert r.returncode == 0, r.stderr
    assert fmt.read(f.read_bytes())[0].caption == "a cat, sleeping"
    r = cli("pipelines.decompress", f"input={f}", f"output={dec}", cwd=work)
    assert r.returncode == 0, r.stderr
    assert dec.read_bytes() == rep.read_bytes()
    assert not list(work.iterdir())


def test_fit_gaussian(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The prior fit as a command: the file it writes is the fit of the folder's images and loads as
    the backbone's prior; the old module name runs the same command; an empty folder is one line."""
    from diffc.backbones.gaussian import GaussianBackbone
    from diffc.backbones.gaussian_fit import fit
    from pipelines.fit_gaussian import fit_gaussian

    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(tmp_path / f"i{i}.png")
    out = tmp_path / "fit" / "prior.npz"
    code, stdout, err = run_task(fit_gaussian, "fit_gaussian", [f"images={tmp_path}", f"out={out}"], capsys, True)
    assert code == 0 and stdout.startswith(f"fitted on 2 images -> {out} ") and "params_path" in stdout, err
    mean, var = fit(sorted(tmp_path.glob("i*.png")))
    with np.load(out) as got:
        np.testing.assert_array_equal(got["mean"], mean)
        np.testing.assert_array_equal(got["var"], var)
    assert mean.shape == (3, 8, 8) and (var > 0).all()
    GaussianBackbone(params_path=out)
    r = subprocess.run([sys.executable, "-m", "diffc.backbones.gaussian_fit", f"images={tmp_path}",
                        f"out={tmp_path / 'again.npz'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again.npz").read_bytes() == out.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_task(fit_gaussian, "fit_gaussian", [f"images={empty}", f"out={tmp_path / 'x.npz'}"], capsys,
                            True)
    assert code == 2 and err == f"error: no images (.png, .jpg, .jpeg) in {empty}\n"
    assert not (tmp_path / "x.npz").exists()


def test_fit_gaussian_never_writes_into_the_package(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """issue 28: with no arguments the command asks for out= (one line) instead of overwriting the
    shipped prior, which every gaussian file's fingerprint names; out= inside the package is refused."""
    from pipelines.fit_gaussian import fit_gaussian

    shipped = ROOT / "diffc/backbones/params/gaussian_kodak.npz"
    before = (shipped.read_bytes(), shipped.stat().st_mtime_ns)
    r = subprocess.run([sys.executable, "-m", "pipelines.fit_gaussian"], cwd=tmp_path, capture_output=True, text=True,
                       env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 2 and r.stderr == "error: missing required option(s): out=... (see --help)\n", r.stderr
    code, _, err = run_task(fit_gaussian, "fit_gaussian", [f"out={shipped}"], capsys, True)
    assert code == 2 and "inside the diffc package" in err and len(err.splitlines()) == 1, err
    assert (shipped.read_bytes(), shipped.stat().st_mtime_ns) == before and not list(tmp_path.iterdir())


def test_decompress_prints_the_provenance_line(encoded: dict[str, Path], tmp_path: Path) -> None:
    """A file from another setting (here: a forged CUDA fp16 provenance) decodes, and decompress says
    on stderr, in one line, what differs."""
    import dataclasses

    header, payload = fmt.read(encoded["diffc"].read_bytes())
    other = dataclasses.replace(header, provenance=fmt.Provenance("cuda", "float16", 0, (2, 5, 1), (0, 36, 0)))
    forged = tmp_path / "forged.diffc"
    forged.write_bytes(fmt.write(other, payload))
    r = cli("pipelines.decompress", f"input={forged}", f"output={tmp_path / 'out.png'}")
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note: decoding with")]
    assert len(notes) == 1 and "cuda" in notes[0] and "dtype" in notes[0], r.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(Image.open(encoded["decoded"])))
    r = cli("pipelines.decompress", f"input={encoded['diffc']}", f"output={tmp_path / 'same.png'}")
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr


def test_a_fitted_prior_reaches_the_decoder(odd_image: Path, tmp_path: Path) -> None:
    """compress model.options.params_path=F writes a file that decompress options.params_path=F decodes
    to the encoder's PNG; without it the file is refused (another prior: fingerprint mismatch)."""
    from diffc.backbones.gaussian_fit import fit

    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(tmp_path / f"i{i}.png")
    mean, var = fit(sorted(tmp_path.glob("i*.png")))
    prior = tmp_path / "prior.npz"
    np.savez(prior, mean=mean, var=var)
    f, enc, dec = tmp_path / "a.diffc", tmp_path / "enc.png", tmp_path / "dec.png"
    r = cli("pipelines.compress", "model=gaussian", f"model.options.params_path={prior}", f"input={odd_image}",
            f"output={f}", "timestep=300", f"recon_output={enc}")
    assert r.returncode == 0, r.stderr
    r = cli("pipelines.decompress", f"input={f}", f"output={dec}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not dec.exists(), r.stderr
    r = cli("pipelines.decompress", f"input={f}", f"output={dec}", f"options.params_path={prior}")
    assert r.returncode == 0, r.stderr
    assert dec.read_bytes() == enc.read_bytes()
