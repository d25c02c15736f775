"""The one image reader (``pipelines.datasets.read_image``) of compress, decompress and the datasets:
every sample type at its real precision, EXIF orientation, palettes / gray / CMYK converted,
alpha and extra frames refused unless an option says what to do, and the size limit checked from
the header before any pixel is decoded."""
from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from analysis.cli import call
from diffc import format as fmt
from pipelines import datasets as ds
from pipelines.common import CONF_DIR
from pipelines.compress import compress

ROOT = Path(__file__).resolve().parents[1]


def smooth(h: int, w: int, channels: int, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 test image [h, w, channels]: gradients plus some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 3 + yy, yy * 4 + 20, (xx + yy) * 2 + 40][:channels], -1)
    return np.clip(base + rng.integers(0, 30, (h, w, channels)), 0, 255).astype(np.uint8)


def run_compress(overrides: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """pipelines.compress in process on the gaussian backbone: (exit status, stdout, stderr)."""
    code = call(compress, "compress", ["model=gaussian", "progress=false", *overrides], CONF_DIR)
    out, err = capsys.readouterr()
    return code, out, err


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG of the given size: a valid signature and IHDR (8-bit RGB), an optional IDAT, IEND.
    Enough for Pillow to open it and report its size; decoding it would fail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + (chunk(b"IDAT", idat) if idat else b"")
            + chunk(b"IEND", b""))


# ---- sample types --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gray-png", "rgb-png", "rgb-tiff", "la-png"])
def test_16_bit_samples_are_read_at_16_bits(tmp_path: Path, kind: str) -> None:
    """16-bit files -> float32 / 65535, exactly (Pillow alone gives 16-bit gray as I;16 and keeps
    only the high bytes of 16-bit colour)."""
    channels = {"gray-png": 1, "rgb-png": 3, "rgb-tiff": 3, "la-png": 2}[kind]
    a16 = np.random.default_rng(1).integers(0, 65536, (9, 13, channels)).astype(np.uint16)
    path = tmp_path / f"x.{kind.split('-')[1]}"
    if kind == "gray-png":
        Image.fromarray(a16[..., 0]).save(path)
    elif kind == "rgb-tiff":
        path.write_bytes(imagecodecs.tiff_encode(a16))
    else:
        path.write_bytes(imagecodecs.png_encode(a16))
    if kind == "la-png":
        a16[..., 1] = 65535  # an opaque alpha: dropped without a word
        path.write_bytes(imagecodecs.png_encode(a16))
        a16 = a16[..., :1]
    img = ds.read_image(path)
    assert img.dtype == np.float32 and img.shape == (9, 13, 3)
    want = np.broadcast_to(a16 / 65535, (9, 13, 3))
    assert np.abs(img - want).max() < 1e-7  # 1/65535 resolution; truncation to 8 bits errs by up to 1/255
    assert np.array_equal(ds.to_tensor(img).permute(1, 2, 0).numpy(), img)  # reaches the codec as is


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_reconstructs_like_its_8_bit_version(tmp_path: Path, channels: int,
                                                       capsys: pytest.CaptureFixture) -> None:
    """compress ... recon_output= on a 16-bit PNG and on its 8-bit rounding (gaussian backbone):
    the same picture, so the reconstructions agree within the codec's noise; and a 16-bit file holding
    exactly 8-bit values (v x 257) codes to the same bytes as the 8-bit file. (The old reader read
    a 16-bit gray PNG as all white: mean 255, reconstruction mean 250.8.)"""
    a8 = smooth(40, 56, channels)
    detail = np.random.default_rng(2).integers(-128, 129, a8.shape)
    a16 = np.clip(a8.astype(np.int64) * 257 + detail, 0, 65535).astype(np.uint16)
    assert np.array_equal(np.round(a16 / 257), a8)
    files = {}
    for name, arr in [("a8", a8), ("a16", a16), ("exact16", a8.astype(np.uint16) * 257)]:
        src = tmp_path / f"{name}.png"
        if channels == 1:
            Image.fromarray(arr[..., 0]).save(src)
        else:
            src.write_bytes(imagecodecs.png_encode(arr))
        out, recon = tmp_path / f"{name}.diffc", tmp_path / f"{name}.recon.png"
        code, _, err = run_compress([f"input={src}", f"output={out}", "timestep=300", f"recon_output={recon}"], capsys)
        assert code == 0, err
        # a 16-bit input is told, in one line, that the decoded PNG is 8-bit (README); an 8-bit one is not
        assert ("writes an 8-bit PNG" in err) == (name != "a8"), err
        files[name] = (out.read_bytes(), np.asarray(Image.open(recon), dtype=np.float64))
    r8, r16 = files["a8"][1], files["a16"][1]
    assert r16.shape == (40, 56, 3)
    # two encodes of nearly the same picture take other candidates once a chunk's choice differs:
    # at t=300 their means then differ by noise, measured up to 3.9/255 over 8 seeds x skip_kl
    # {0, 0.001, 0.03} (and 0 where no choice differs); the old reader's white image was 134 away
    assert abs(r16.mean() - r8.mean()) <= 6.0
    # two draws of the codec's error once the chains differ (~sqrt(2) x the error apart, 0 where they
    # do not); the old reader's white image was ~9x the error away
    assert np.abs(r16 - r8).mean() < 2 * np.abs(r8 - a8).mean()
    assert files["exact16"][0] == files["a8"][0]


def test_float_images_in_unit_range_are_read_others_refused(tmp_path: Path) -> None:
    plane = np.random.default_rng(3).random((7, 11), dtype=np.float32)
    Image.fromarray(plane).save(tmp_path / "f.tif")  # Pillow mode F
    img = ds.read_image(tmp_path / "f.tif")
    assert img.dtype == np.float32 and np.array_equal(img, np.repeat(plane[..., None], 3, -1))
    Image.fromarray(plane * 300).save(tmp_path / "hdr.tif")
    with pytest.raises(ds.DatasetError, match=r"float samples in \[.*\]; a float image must lie in \[0, 1\]"):
        ds.read_image(tmp_path / "hdr.tif")
    Image.fromarray(np.arange(77, dtype=np.int32).reshape(7, 11) * 100000).save(tmp_path / "i32.tif")
    with pytest.raises(ds.DatasetError, match="only 8- and 16-bit images are read"):
        ds.read_image(tmp_path / "i32.tif")


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "LA-opaque", "RGBA-opaque"])
def test_palette_gray_cmyk_become_rgb(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(smooth(10, 14, 3))
    base = mode.split("-")[0]
    im = rgb.convert(base)
    path = tmp_path / ("x.jpg" if base == "CMYK" else "x.png")
    im.save(path)
    img = ds.read_image(path)
    assert img.dtype == np.uint8 and img.shape == (10, 14, 3)
    assert np.array_equal(img, np.asarray(Image.open(path).convert("RGB")))


# ---- orientation ---------------------------------------------------------------------------------
def jpeg_with_orientation(path: Path, pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Save ``pixels`` as a JPEG tagged with ``orientation``; returns the decoded, unrotated pixels."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_exif_orientation_6_is_coded_upright(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Orientation 6 (a phone held upright): the stored 48x24 picture is shown turned 90 degrees
    clockwise, 24 wide and 48 high; compress codes that upright picture."""
    path = tmp_path / "phone.jpg"
    stored = jpeg_with_orientation(path, smooth(24, 48, 3), 6)
    img = ds.read_image(path)
    assert np.array_equal(img, np.rot90(stored, k=-1))
    recon = tmp_path / "r.png"
    code, _, err = run_compress([f"input={path}", f"output={tmp_path / 'p.diffc'}", "timestep=300",
                                 f"recon_output={recon}"], capsys)
    assert code == 0, err
    header, _ = fmt.read((tmp_path / "p.diffc").read_bytes())
    assert (header.width, header.height) == (24, 48) and Image.open(recon).size == (24, 48)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / "o.jpg"
    jpeg_with_orientation(path, smooth(12, 20, 3, seed=orientation), orientation)
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(ds.read_image(path), want)


def test_orientation_applies_to_16_bit_colour(tmp_path: Path) -> None:
    a16 = np.random.default_rng(4).integers(0, 65536, (6, 10, 3)).astype(np.uint16)
    path = tmp_path / "o.png"
    exif = Image.Exif()
    exif[0x0112] = 8  # shown turned 90 degrees counter-clockwise
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(path, exif=exif.tobytes())
    # the same file with 16-bit samples: rewrite IHDR + IDAT, keep the eXIf chunk Pillow wrote
    raw = path.read_bytes()
    start = raw.index(b"eXIf") - 4
    exif_chunk = raw[start:start + 12 + struct.unpack(">I", raw[start:start + 4])[0]]
    plain = imagecodecs.png_encode(a16)
    cut = plain.index(b"IDAT") - 4
    path.write_bytes(plain[:cut] + exif_chunk + plain[cut:])
    img = ds.read_image(path)
    assert np.abs(img - np.rot90(a16, k=1) / 65535).max() < 1e-7


# ---- alpha and frames ----------------------------------------------------------------------------
def test_alpha_is_refused_unless_told(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rgba = np.concatenate([smooth(16, 24, 3), np.full((16, 24, 1), 255, np.uint8)], -1)
    rgba[4:12, 6:18, 3] = 64  # a translucent patch
    path = tmp_path / "logo.png"
    Image.fromarray(rgba).save(path)
    out = tmp_path / "l.diffc"
    code, stdout, err = run_compress([f"input={path}", f"output={out}", "timestep=300"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out.exists()
    assert "transparent pixels" in err and "alpha=drop" in err and "alpha=white" in err
    assert np.array_equal(ds.read_image(path, alpha="drop"), rgba[..., :3])
    a = rgba[..., 3:] / 255
    white = ds.read_image(path, alpha="white")
    assert white.dtype == np.float32 and np.abs(white - (rgba[..., :3] / 255 * a + 1 - a)).max() < 1e-6
    code, _, err = run_compress([f"input={path}", f"output={out}", "timestep=300", "alpha=white"], capsys)
    assert code == 0 and out.exists(), err
    with pytest.raises(ds.DatasetError, match="alpha must be null"):
        ds.read_image(path, alpha="black")


@pytest.mark.parametrize("fmt_name", ["GIF", "PNG"])
def test_extra_frames_are_refused_unless_one_is_chosen(tmp_path: Path, fmt_name: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    frames = [Image.fromarray(smooth(16, 24, 3, seed=s)) for s in range(3)]
    path = tmp_path / f"anim.{fmt_name.lower()}"
    frames[0].save(path, format=fmt_name, save_all=True, append_images=frames[1:])
    out = tmp_path / "a.diffc"
    code, _, err = run_compress([f"input={path}", f"output={out}", "timestep=300"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out.exists()
    assert "has 3 frames" in err and "frame=0..2" in err
    with Image.open(path) as im:
        im.seek(1)
        want = np.asarray(im.convert("RGB"))
    assert np.array_equal(ds.read_image(path, frame=1), want)
    if fmt_name == "PNG":  # APNG frames are stored losslessly
        assert np.array_equal(want, np.asarray(frames[1]))
    code, _, err = run_compress([f"input={path}", f"output={out}", "timestep=300", "frame=1"], capsys)
    assert code == 0, err
    with pytest.raises(ds.DatasetError, match=r"frame=3, but it has 3 frames"):
        ds.read_image(path, frame=3)


# ---- size ----------------------------------------------------------------------------------------
def test_a_huge_header_is_one_line_naming_max_pixels(tmp_path: Path) -> None:
    """100000 x 100000 (Pillow: DecompressionBombError, was reported as unexpected): the one size
    line, nothing else on stdout or stderr, no output. The real command line."""
    src, out = tmp_path / "huge.png", tmp_path / "huge.diffc"
    src.write_bytes(png_header(100000, 100000))
    r = subprocess.run([sys.executable, "-m", "pipelines.compress", "model=gaussian", f"input={src}",
                        f"output={out}", "timestep=300", "progress=false"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == "" and not out.exists()
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: image {src} is 100000x100000 (10000000000 pixels), above max_pixels=16777216")


def test_a_pillow_bomb_warning_is_the_same_size_error_and_prints_nothing(tmp_path: Path) -> None:
    src = tmp_path / "96mp.png"
    src.write_bytes(png_header(9800, 9800))  # 96 MP: above Pillow's warning threshold (89.5 MP)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ds.DatasetError, match=r"is 9800x9800 \(96040000 pixels\), above max_pixels=16777216"):
            ds.read_image(src)
    assert caught == []


def test_the_size_check_reads_the_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """9000 x 9000 (81 MP, over the format's 8192^2): refused from the header; no pixel is decoded
    (Pillow's load is never called)."""
    src = tmp_path / "9000.png"
    src.write_bytes(png_header(9000, 9000, idat=zlib.compress(b"\0" * 27001)))

    def no_decode(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(Image.Image, "load", no_decode)
    with pytest.raises(ds.DatasetError, match=r"is 9000x9000 \(81000000 pixels\), above max_pixels=16777216"):
        ds.read_image(src)
    with pytest.raises(ds.DatasetError, match=r"is 9000x9000 .* above max_pixels=1000000"):
        ds.read_image(src, max_pixels=1_000_000)


#: runs a command and prints its exit status, peak RSS (KiB, Linux) and CPU seconds, then its stderr
MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(r.returncode, u.ru_maxrss, u.ru_utime + u.ru_stime); print(r.stdout + r.stderr, end='')")


def test_an_8192_square_input_is_refused_by_default_before_it_costs_anything(tmp_path: Path) -> None:
    """8192^2 (the format's limit, 2^26 pixels; a valid PNG): above the default max_pixels =
    fmt.DEFAULT_MAX_PIXELS = 2^24, so compress refuses it from the header in one line naming the
    option, no output; the process's peak memory and CPU time measured (decoding it as float32 RGB
    alone would be 800 MB, the encode took > 9 GB and minutes before max_pixels had a default)."""
    assert fmt.DEFAULT_MAX_PIXELS == 1 << 24 and fmt.MAX_PIXELS == 1 << 26
    src, out = tmp_path / "8k.png", tmp_path / "8k.diffc"
    Image.new("1", (8192, 8192), 1).save(src)  # 1 bit per pixel, deflated: a few kB on disk
    assert src.stat().st_size < 100_000
    r = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "pipelines.compress", "model=gaussian",
                        f"input={src}", f"output={out}", "timestep=300", "progress=false"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    status, rss_kib, cpu_s = r.stdout.splitlines()[0].split()
    said = r.stdout.splitlines()[1:]
    assert int(status) == 2 and not out.exists(), r.stdout
    assert said == [f"error: image {src} is 8192x8192 (67108864 pixels), above max_pixels=16777216 (raise the "
                    f"limit with max_pixels=N, at most 67108864, the .diffc format's limit)"]
    assert int(rss_kib) < 1024 ** 2, f"peak RSS {int(rss_kib) / 1024:.0f} MiB"  # importing torch is most of it
    assert float(cpu_s) < 10, f"{float(cpu_s):.1f} CPU s"
    a = ds.read_image(src, max_pixels=fmt.MAX_PIXELS)  # the limit raised to the format's: the file is read
    assert a.shape == (8192, 8192, 3) and a.dtype == np.uint8 and a.min() == 255


def test_max_pixels_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "s.png"
    Image.fromarray(smooth(20, 30, 3)).save(src)
    out = tmp_path / "s.diffc"
    code, _, err = run_compress([f"input={src}", f"output={out}", "timestep=300", "max_pixels=599"], capsys)
    assert code == 2 and "is 30x20 (600 pixels), above max_pixels=599" in err and not out.exists()
    code, _, err = run_compress([f"input={src}", f"output={out}", "timestep=300", "max_pixels=0"], capsys)
    assert code == 2 and "max_pixels must be an integer in 1..67108864" in err


def test_a_tiny_image_is_told_the_container_dominates_its_bpp(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """issue 28: a 1x1 image codes at ~500 bpp, almost all of it header: compress says so in one note
    line on stderr (the file is still written: it is a valid file); a 64x64 image of noise, whose
    payload outweighs the header, gets no note."""
    rng = np.random.default_rng(5)
    for shape, noted in [((1, 1, 3), True), ((64, 64, 3), False)]:
        src, out = tmp_path / f"{shape[0]}.png", tmp_path / f"{shape[0]}.diffc"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(src)
        code, stdout, err = run_compress([f"input={src}", f"output={out}", "timestep=300"], capsys)
        assert code == 0 and out.exists(), err
        assert ("the container" in err) == noted and len(err.splitlines()) == int(noted), err

