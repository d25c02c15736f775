"""Rules written once (issue 25): the validated integer (``diffc.checks.checked_int``), the prefix of
each kind of .diffc error (``diffc.format.DiffcFormatError.prefix``) and the one ``max_pixels`` check
(``diffc.format.check_pixels``), the same for an input image, a file and the API."""
from __future__ import annotations

import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.cli import call
from diffc import format as fmt
from diffc.checks import InvalidValue, checked_int
from diffc.codec import CodecParams, DiffcCodec, UnknownChannel
from pipelines.common import CONF_DIR, EXPECTED_ERRORS
from diffc.rcc.spec import PfrSpec
from pipelines.compress import compress
from pipelines.datasets import DatasetError, read_image
from pipelines.decompress import decompress

ROOT = Path(__file__).resolve().parents[1]
KINDS = (fmt.NotADiffcFile, fmt.UnsupportedVersion, fmt.TruncatedFile, fmt.CorruptFile, fmt.FingerprintMismatch,
         UnknownChannel)


# ---- the validated integer ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 7, 255, np.int64(9), np.uint8(255)])
def test_an_integer_in_range_comes_back_as_an_int(value) -> None:
    got = checked_int("n", value, 0, 255)
    assert got == value and type(got) is int


@pytest.mark.parametrize("value, lo, hi, said", [
    (-1, 0, 255, "n must be an integer in 0..255, got -1"),
    (256, 0, 255, "n must be an integer in 0..255, got 256"),
    (True, 0, 255, "n must be an integer in 0..255, got True"),  # bool is an int to Python, never a count
    (False, 0, 255, "n must be an integer in 0..255, got False"),
    (3.0, 0, 255, "n must be an integer in 0..255, got 3.0"),  # not rounded on the quiet
    ("3", 0, 255, "n must be an integer in 0..255, got '3'"),  # not parsed either
    (None, 0, 255, "n must be an integer in 0..255, got None"),
    (0, 1, None, "n must be a positive integer, got 0"),
    (-3, 0, None, "n must be an integer >= 0, got -3"),
    (2**40, 0, 2**32 - 1, "n must be an integer in 0..4294967295, got 1099511627776"),
])
def test_anything_else_is_one_line_naming_the_setting_and_its_range(value, lo, hi, said) -> None:
    with pytest.raises(InvalidValue) as err:
        checked_int("n", value, lo, hi)
    assert str(err.value) == said
    # a ValueError to the code that passed it, an expected error (one line, no traceback) to a command's user
    assert isinstance(err.value, ValueError) and isinstance(err.value, EXPECTED_ERRORS)


@pytest.mark.parametrize("build, said", [
    (lambda: PfrSpec(chunk_bits=True), "chunk_bits must be an integer in 1..23, got True"),
    (lambda: PfrSpec(padding_bits=2.0), "padding_bits must be an integer in 0..8, got 2.0"),
    (lambda: CodecParams(seed=-1), "seed must be an integer in 0..4294967295, got -1"),
])
def test_the_core_refuses_a_bool_or_float_count(build, said) -> None:
    """Before the helper, chunk_bits=True passed as 1 and padding_bits=2.0 as 2 (range checks
    only); the spec and the codec parameters now say what they got."""
    with pytest.raises(ValueError, match=re.escape(said)):
        build()


# ---- one prefix per kind of .diffc error ---------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_adds_its_prefix_once(kind) -> None:
    e = kind("what is wrong")
    assert str(e) == f"{kind.prefix}what is wrong" and kind.prefix
    assert str(kind(e)) == str(e)  # re-raised as itself: one prefix
    assert str(fmt.CorruptFile(e)) == "corrupt .diffc file: what is wrong"  # re-labelled: the new kind's
    assert str(kind(ValueError("from a spec"))) == f"{kind.prefix}from a spec"
    copy = pickle.loads(pickle.dumps(e))  # e.g. from a worker process
    assert type(copy) is kind and str(copy) == str(e)


def test_no_raise_types_a_prefix() -> None:
    """Each kind's prefix is written once, in its class: no string literal in diffc/ or pipelines/
    starts with one (the 23 raises of "corrupt .diffc file: ..." before issue 25)."""
    sources = [p for d in ("diffc", "pipelines") for p in (ROOT / d).rglob("*.py")]
    for kind in KINDS:
        literal = re.compile(r"[\"']" + re.escape(kind.prefix))
        where = [f"{p.relative_to(ROOT)}:{n}" for p in sources
                 for n, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
        assert len(where) == 1, (kind.__name__, where)


@pytest.fixture(scope="module")
def codec(gaussian_backbone) -> DiffcCodec:
    return DiffcCodec(gaussian_backbone, CodecParams(schedule="geom-6", channel=PfrSpec(chunk_bits=4, padding_bits=0)))


@pytest.fixture(scope="module")
def file(codec) -> bytes:
    """A 24 x 16 (384-pixel) file."""
    return codec.encode(torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(0))).points[-1].data


def test_a_corrupt_file_says_so_once_from_every_layer(codec, file) -> None:
    """The reader, the spec's bytes (re-labelled by ``params_from_header``) and the payload (the
    channel): each refusal reads ``corrupt .diffc file: <what>`` with the prefix exactly once."""
    header, payload = fmt.read(file)
    cases = {
        "crc": file[:-1] + bytes([file[-1] ^ 1]),
        "spec bytes": fmt.write(replace(header, channel_params=b"\x00\x00\x00\x00"), payload),
        "payload": fmt.write(header, b"\xff" * 8),
    }
    for name, data in cases.items():
        with pytest.raises(fmt.CorruptFile) as err:
            codec.decode(data)
        said = str(err.value)
        assert said.startswith("corrupt .diffc file: ") and said.count(".diffc file") == 1, (name, said)


# ---- one max_pixels rule ----------------------------------------------------------------------------
def test_max_pixels_is_one_rule_for_an_image_a_file_and_the_api(codec, file, tmp_path: Path) -> None:
    """compress (the input image's header), decompress (the file's header, ``fmt.read``) and the API
    (``DiffcCodec.decode``) apply the same check: the limit itself passes, one pixel less is refused
    in the same words, and a bad limit is refused the same way by all three."""
    png = tmp_path / "a.png"
    Image.new("RGB", (24, 16)).save(png)
    readers = [(lambda m: read_image(png, max_pixels=m), DatasetError, f"image {png}"),
               (lambda m: fmt.read(file, m), fmt.TooLarge, "the image of a .diffc file"),
               (lambda m: codec.decode(file, reconstruct=False, max_pixels=m), fmt.TooLarge,
                "the image of a .diffc file")]
    for read, refusal, what in readers:
        read(384)
        with pytest.raises(refusal) as err:
            read(383)
        assert str(err.value) == (f"{what} is 24x16 (384 pixels), above max_pixels=383 (raise the limit "
                                  f"with max_pixels=N, at most {fmt.MAX_PIXELS}, the .diffc format's limit)")
        for bad in (0, fmt.MAX_PIXELS + 1, True, 384.0, None):
            with pytest.raises(InvalidValue, match=re.escape(f"max_pixels must be an integer in 1..{fmt.MAX_PIXELS}, "
                                                             f"got {bad!r}")):
                read(bad)


def test_the_api_refuses_an_image_no_file_can_hold_by_the_same_check(codec) -> None:
    """``DiffcCodec.encode``'s input: the format's limit (2^26 pixels) through the same check, from
    the shape alone (an expanded view: no pixel allocated, none read)."""
    with pytest.raises(fmt.TooLarge) as err:
        codec.encode(torch.zeros(3, 1, 1).expand(3, 8193, 8192))
    assert str(err.value) == (f"the image is 8192x8193 ({8192 * 8193} pixels), above max_pixels={fmt.MAX_PIXELS} "
                              "(the .diffc format's limit)")


def test_compress_and_decompress_refuse_in_the_same_words(file, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The commands: the one check's line, or the option's, exit 2, nothing written."""
    png, diffc = tmp_path / "a.png", tmp_path / "a.diffc"
    Image.new("RGB", (24, 16)).save(png)
    diffc.write_bytes(file)
    runs = [(compress, "compress", ["model=gaussian", f"input={png}", f"output={tmp_path / 'o.diffc'}",
                                    "timestep=300"], f"image {png}"),
            (decompress, "decompress", [f"input={diffc}", f"output={tmp_path / 'o.png'}"],
             "the image of a .diffc file")]
    for task, config, args, what in runs:
        for limit, said in [(383, f"{what} is 24x16 (384 pixels), above max_pixels=383 (raise the limit with "
                                  f"max_pixels=N, at most {fmt.MAX_PIXELS}, the .diffc format's limit)"),
                            (0, f"max_pixels must be an integer in 1..{fmt.MAX_PIXELS}, got 0")]:
            code = call(task, config, [*args, f"max_pixels={limit}", "progress=false"], CONF_DIR)
            _, err = capsys.readouterr()
            assert (code, err) == (2, f"error: {said}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.diffc", "a.png"]
