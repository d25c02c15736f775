"""The .diffc container: every malformed input raises the right DiffcFormatError subclass,
nothing is allocated from an unchecked header field, and a golden file pins the bitstream."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffc import format as fmt
from diffc.codebook.spec import TurboDdcmSpec
from diffc.rcc.spec import PfrSpec
from diffc.codec import CodecParams, DiffcCodec
from diffc.recon import Recon

GOLDEN = Path(__file__).with_name("golden") / "gaussian_tiny.json"
#: largest |x_t - golden x_t| a decode of the golden files may show on another machine (float32
#: kernels differ between CPUs; the payload, i.e. every chosen candidate, must still be identical)
XT_DRIFT = 1e-5
ERRORS = (fmt.NotADiffcFile, fmt.UnsupportedVersion, fmt.TruncatedFile, fmt.CorruptFile, fmt.FingerprintMismatch)


# ---- helpers -------------------------------------------------------------------------------------
def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v >> 7 else 0))
        v >>= 7
        if not v:
            return bytes(out)


CHANNEL_IDS = {b"pfr": 1, b"sparse-sum": 2, b"ddcm": 3, b"turbo-ddcm": 4}
SCHEDULE_IDS = {"paper": 1, "paper-flux": 2, "linspace": 3, "geom": 4}


def size_field(width: int, height: int) -> bytes:
    """varint(s | (width >> s) << 3) + varint(height >> s), s = common trailing zero bits, at most 7."""
    s = 0
    while s < 7 and not (width | height) >> s & 1 and (width | height) >> s:
        s += 1
    return varint(s | (width >> s) << 3) + varint(height >> s)


def schedule_field(name: bytes) -> bytes:
    family, _, n = name.decode().rpartition("-")
    if name.decode() in SCHEDULE_IDS:
        return bytes([SCHEDULE_IDS[name.decode()]])
    if family in ("linspace", "geom") and n.isdigit():
        return bytes([SCHEDULE_IDS[family]]) + varint(int(n))
    return b"\x00" + bytes([len(name)]) + name


def raw_file(backbone=None, fp=b"\0\0", width=64, height=64, seed=0, schedule=b"geom-12",
             chunk_bits=8, padding_bits=2, split_q=0, recon=0, recon_steps=50, n_steps=1, caption=b"",
             caption_len=None, payload=b"", version=fmt.FORMAT_VERSION, crc=True, threads=2,
             provenance=(0, 0, 2, 13, 0, 0, 36, 0), grid=b"\x00", guidance=b"\x00", parity=0,
             channel=b"pfr", channel_params=None, params_len=None, skip_m=0, mask=0x1F, size=None) -> bytes:
    """The documented layout, written independently of diffc.format.write (fields unchecked): every
    codec field present (``mask``), the backbone by id 1 (gaussian) or, given ``backbone``, by name.
    ``channel_params`` None = the diffc spec's 4 bytes (chunk_bits, padding_bits, split_q, skip_m:
    skip_kl in thousandths); ``provenance``: device byte, dtype byte, torch and diffusers versions
    (varints), None = not recorded; ``size``: the size bytes (None = ``size_field``)."""
    params = bytes([chunk_bits, padding_bits, split_q, skip_m]) if channel_params is None else channel_params
    flags = (0 if backbone else 1) | (0x20 if mask else 0) | (0x40 if caption or caption_len else 0) | (
        0x80 if provenance else 0)
    cid = CHANNEL_IDS.get(channel, 0)
    fields = [bytes([parity]) if mask & 1 else b"", varint(seed) if mask & 2 else b"",
              schedule_field(schedule) if mask & 4 else b"",
              (varint(cid) + (b"" if cid else bytes([len(channel)]) + channel)
               + bytes([len(params) if params_len is None else params_len]) + params) if mask & 8 else b"",
              (bytes([recon]) + varint(recon_steps) + grid + guidance) if mask & 16 else b""]
    body = b"".join([
        bytes([0xD0 | version, flags]), bytes([len(backbone)]) + backbone if backbone else b"", fp,
        size_field(width, height) if size is None else size, varint(n_steps), varint(threads),
        varint(mask) if mask else b"", *fields,
        bytes(provenance[:2]) + b"".join(map(varint, provenance[2:])) if provenance else b"",
        varint(len(caption) if caption_len is None else caption_len) + caption if caption or caption_len else b"",
        payload])
    return body + (struct.pack("<I", zlib.crc32(body)) if crc else b"")


def read_peak(data: bytes) -> tuple[BaseException | None, int]:
    """(exception raised by fmt.read, peak traced allocation in bytes during the call)."""
    tracemalloc.start()
    err = None
    try:
        fmt.read(data)
    except Exception as e:  # noqa: BLE001
        err = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return err, peak


@pytest.fixture(scope="module")
def tiny_codec(gaussian_backbone) -> DiffcCodec:
    return DiffcCodec(gaussian_backbone, CodecParams("linspace-6", seed=1234, channel=PfrSpec(chunk_bits=4, padding_bits=1), recon=Recon(mode="denoise")))


def tiny_image(height: int = 12, width: int = 20) -> torch.Tensor:
    """A deterministic synthetic image (no dataset needed), sides not multiples of 8."""
    y = torch.arange(height, dtype=torch.float32)[:, None]
    x = torch.arange(width, dtype=torch.float32)[None, :]
    r = 0.5 + 0.4 * torch.sin(0.45 * x + 0.2 * y)
    g = (x + 2 * y) / (width + 2 * height)
    b = ((x.long() // 3 + y.long() // 2) % 2).float() * 0.6 + 0.2
    return torch.stack([r.expand(height, width), g, b])


@pytest.fixture(scope="module")
def real_files(tiny_codec) -> list[bytes]:
    res = tiny_codec.encode(tiny_image(), stop_timesteps=[tiny_codec.timesteps[3], tiny_codec.timesteps[-1]],
                            caption="a golden test")
    return [p.data for p in res.points]


# ---- header round trip ---------------------------------------------------------------------------
@pytest.mark.parametrize("caption", [None, "x", "ünïcode caption " * 40])
def test_write_read_roundtrip(caption) -> None:
    prov = fmt.Provenance("cuda", "bfloat16", 8, (2, 5, 1), (0, 31, 300))
    h = fmt.Header(backbone="gaussian", fingerprint=b"\x01\x02", width=77, height=53, seed=2**32 - 1,
                   schedule="geom-12", channel="pfr", channel_params=PfrSpec(8, 2, 2.75).to_bytes(), n_steps=12,
                   recon=Recon("ode", 50), caption=caption, provenance=prov, parity="reference")
    payload = bytes(range(16))
    data = fmt.write(h, payload)
    h2, p2 = fmt.read(data)
    assert h2 == h and p2 == payload
    assert fmt.header_size(h) == len(data) - len(payload)
    assert data == raw_file(None, b"\x01\x02", 77, 53, 2**32 - 1, b"geom-12", 8, 2, 11, 1, 50, 12,
                            zlib.compress(caption.encode(), 9) if caption else b"", payload=payload, threads=8,
                            provenance=(1, 2, 2, 5, 1, 0, 31, 300), parity=1)


def test_real_file_parses(real_files, tiny_codec) -> None:
    h, payload = fmt.read(real_files[1])
    assert (h.width, h.height, h.seed, h.schedule, h.caption) == (20, 12, 1234, "linspace-6", "a golden test")
    assert h.fingerprint == tiny_codec.fingerprint() and len(payload) > 0


# ---- empty, foreign, version -------------------------------------------------------------------
def test_empty_and_foreign_inputs() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    rng = random.Random(0)
    foreign = [b"", b"\x89", b"\x89DF", buf.getvalue(), b"GIF89a" + bytes(40), b"\x00" * 100]
    for data in foreign:
        with pytest.raises(fmt.NotADiffcFile, match="not a .diffc file"):
            fmt.read(data)
    # random data: 15 in 16 files fail the magic nibble, 1 in 16 the version, and the 1 in 256 that
    # start with 0xD8 the CRC (2^-32 pass it): always one line
    kinds = set()
    for _ in range(512):
        with pytest.raises(fmt.DiffcFormatError) as ei:
            fmt.read(bytes(rng.getrandbits(8) for _ in range(64)))
        assert "\n" not in str(ei.value)
        kinds.add(type(ei.value))
    assert kinds >= {fmt.NotADiffcFile, fmt.UnsupportedVersion}
    with pytest.raises(TypeError):
        fmt.read("a string")  # type: ignore[arg-type]


def test_other_version_is_unsupported(real_files) -> None:
    assert real_files[0][0] == 0xD0 | fmt.FORMAT_VERSION and fmt.FORMAT_VERSION == 10
    for v in (0, 1, 7, 8, 9, 15):
        data = bytearray(real_files[0])
        data[0] = 0xD0 | v
        with pytest.raises(fmt.UnsupportedVersion, match=f"version {v}"):
            fmt.read(bytes(data))


@pytest.mark.parametrize("version", [8, 9])
def test_version_8_and_9_files_are_refused_in_one_line(version) -> None:
    """A file of format 8 (the channels' old names, diffc / diffc-sparse-sum, in its fingerprint) or 9
    (the gaussian profile's skip_kl 0.03, which a file naming the profile reads): the first point of
    that format's golden file (tests/golden/gaussian_v8.hex, gaussian_v9.hex) is refused by version,
    in one line, not as a fingerprint mismatch."""
    old = bytes.fromhex(GOLDEN.with_name(f"gaussian_v{version}.hex").read_text().strip())
    assert old[0] == 0xD0 | version
    with pytest.raises(fmt.UnsupportedVersion, match=f"format version {version}; this build reads 10") as ei:
        fmt.read(old)
    assert "\n" not in str(ei.value)


def test_version_7_file_is_refused_in_one_line() -> None:
    """A file of the previous container (magic b"\\x89DFC", version byte 7: the golden file of
    format 7, tests/golden/gaussian_v7.hex) is refused by version, in one line."""
    old = bytes.fromhex(GOLDEN.with_name("gaussian_v7.hex").read_text().strip())
    assert old[:5] == b"\x89DFC\x07"
    with pytest.raises(fmt.UnsupportedVersion) as ei:
        fmt.read(old)
    assert str(ei.value) == ("unsupported .diffc file: written in format version 7; this build reads "
                             f"{fmt.FORMAT_VERSION} (re-encode the image)")


# ---- truncation ------------------------------------------------------------------------------------
def test_every_prefix_is_refused_with_the_right_error(real_files, tiny_codec) -> None:
    for data in real_files:
        header, _ = fmt.read(data)
        fields = fmt.header_size(header) - 4  # header bytes before the payload
        for n in range(len(data)):
            prefix = data[:n]
            if n < 1:
                expected = fmt.NotADiffcFile
            elif n < len(fmt.MAGIC) + 1 + 4 or n - 4 < fields:
                expected = fmt.TruncatedFile  # the body (all but the last 4 bytes) ends inside the header
            else:
                expected = fmt.CorruptFile  # CRC fails
            with pytest.raises(expected):
                fmt.read(prefix)
            with pytest.raises(expected):
                tiny_codec.decode(prefix, reconstruct=False)


# ---- bit flips -------------------------------------------------------------------------------------
def test_every_single_bit_flip_is_detected(real_files) -> None:
    data = real_files[1]
    counts: dict[type, int] = {}
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(fmt.DiffcFormatError) as ei:
                fmt.read(bytes(bad))
            kind = type(ei.value)
            if i == 0:  # the magic nibble, or the version nibble
                assert kind is (fmt.NotADiffcFile if bit >= 4 else fmt.UnsupportedVersion)
            else:  # CRC32 catches every single-bit error; a corrupted length may first look truncated
                assert kind in (fmt.CorruptFile, fmt.TruncatedFile), (i, bit, kind)
            counts[kind] = counts.get(kind, 0) + 1
    assert counts[fmt.CorruptFile] > 0.9 * 8 * len(data)


def test_bad_crc_only(real_files) -> None:
    data = bytearray(real_files[0])
    data[-1] ^= 0x10
    with pytest.raises(fmt.CorruptFile, match="CRC32"):
        fmt.read(bytes(data))


# ---- out-of-range fields, refused before any allocation ---------------------------------------------
@pytest.mark.parametrize("fields, match", [
    (dict(width=2**30), "width"),
    (dict(height=2**34), "height"),
    (dict(width=0), "image size 0x64"),
    (dict(size=varint(6 | 12 << 3) + varint(8)), "canonical"),  # 768 x 512 with s = 6, not 7 (6 x 128, 4 x 128)
    (dict(seed=2**32), "seed"),
    (dict(n_steps=2**34), "step count"),
    (dict(n_steps=fmt.MAX_STEPS + 1), "step count"),
    (dict(recon_steps=1001), "recon_steps"),
    (dict(caption_len=2**34), "caption length"),
    (dict(caption_len=fmt.MAX_CAPTION + 1), "caption length"),
    (dict(recon=2), "reconstruction mode"),
    (dict(parity=2), "parity"),
    (dict(channel=b"dif fc"), "printable"),
    (dict(recon_steps=0), "recon_steps"),
    (dict(backbone=b"x" * 65), "backbone name length"),
    (dict(mask=0x20), "codec field mask"),
    (dict(schedule=b"\x05"), "printable"),
    (dict(backbone=b"gauss ian"), "printable"),
    (dict(schedule=b"geom\x0012"), "printable"),
    (dict(caption=b"not zlib", caption_len=8), "caption"),
    (dict(caption=zlib.compress(b"\xff\xfe bad utf-8"), ), "caption"),
    (dict(caption=zlib.compress(b"ok")[:-3]), "caption"),
])
def test_bad_header_fields_are_refused(fields, match) -> None:
    data = raw_file(**fields)
    err, peak = read_peak(data)
    assert isinstance(err, fmt.CorruptFile), repr(err)
    assert match in str(err)
    assert "\n" not in str(err)
    assert peak < 256 * 1024, f"read() allocated {peak} bytes for a {len(data)}-byte file"


def test_overlong_varint_is_refused() -> None:
    data = raw_file()
    # replace the size varint (after magic+version, backbone+flags, fingerprint) by 6 continuation bytes
    pos = 1 + 1 + 2
    body = data[:pos] + b"\xff" * 6 + b"\x01" + data[pos + 1:-4]
    with pytest.raises(fmt.CorruptFile, match="varint"):
        fmt.read(body + struct.pack("<I", zlib.crc32(body)))


def test_huge_declared_caption_in_a_short_file_is_truncated() -> None:
    data = raw_file(caption_len=fmt.MAX_CAPTION, caption=b"abc")
    err, peak = read_peak(data)
    assert isinstance(err, fmt.TruncatedFile)
    assert peak < 256 * 1024


def test_caption_zip_bomb_is_refused_without_inflating() -> None:
    bomb = zlib.compress(b"a" * (64 << 20), 9)  # 64 MiB of text in ~64 KiB
    assert len(bomb) <= fmt.MAX_CAPTION
    err, peak = read_peak(raw_file(caption=bomb))
    assert isinstance(err, fmt.CorruptFile) and "caption too long" in str(err)
    assert peak < 4 * fmt.MAX_CAPTION + 4 * len(bomb) + (1 << 20), peak


@pytest.mark.parametrize("fields, match", [
    (dict(chunk_bits=0), "chunk_bits"),
    (dict(chunk_bits=25), "chunk_bits"),
    (dict(padding_bits=9), "padding_bits"),
    (dict(split_q=2), "split_above"),  # split_above 0.5: below 1 and not 0
    (dict(channel_params=b"\x08\x02\x00"), "4 bytes"),
    (dict(channel_params=b"\x08\x02\x00\x00\x00"), "stray"),
    (dict(params_len=200), "ends inside"),
    (dict(channel=b"sparse-sum", channel_params=b"\x08\x02\x00\x00\x03\x04"), "atoms must be"),
])
def test_bad_channel_parameters_are_refused_by_their_spec(tiny_codec, fields, match) -> None:
    """The container reads a spec's bytes without interpreting them; the spec refuses them: one line
    that names the kind once (``params_from_header`` re-labels the spec's errors as corrupt)."""
    with pytest.raises(fmt.DiffcFormatError, match=match) as ei:
        tiny_codec.decode(raw_file(**fields))
    said = str(ei.value)
    assert "\n" not in said and said.startswith(type(ei.value).prefix) and said.count(".diffc file") == 1


def test_decoder_refuses_more_steps_than_its_schedule(tiny_codec) -> None:
    p = tiny_codec.params
    data = raw_file(fp=tiny_codec.fingerprint(), width=20, height=12, seed=p.seed, schedule=p.schedule.encode(),
                    channel_params=p.channel.to_bytes(), n_steps=fmt.MAX_STEPS)
    with pytest.raises(fmt.CorruptFile, match="steps"):
        tiny_codec.decode(data)
    bad_sched = raw_file(schedule=b"geom-0")
    with pytest.raises(fmt.CorruptFile, match="schedule"):
        tiny_codec.decode(bad_sched)
    too_many_cands = raw_file(chunk_bits=20, padding_bits=8)  # passes the container, not the codec
    with pytest.raises(fmt.CorruptFile):
        tiny_codec.decode(too_many_cands)


@pytest.mark.parametrize("payload, refused_at", [
    (b"\xff" * 8, 1), (b"\xff" * 4, 1),  # invalid for the count model: constriction raises (bare AssertionError)
    (b"\x7f\xff\xff\xff" * 3, 2),  # decodes a split count larger than the plan's chunk count
    (b"\x00" * 8, None), (b"", None)])  # valid range-coder states: every symbol decodes (as its smallest)
def test_garbage_payload_with_valid_header(payload, refused_at) -> None:
    """A valid header (right fingerprint) over a garbage payload. Garbage the range decoder rejects,
    or whose symbols are out of range, is refused with CorruptFile naming the step; garbage it
    accepts decodes, but is not what its symbols code to (the decoder re-codes them): refused too."""
    codec = DiffcCodec(_fuzz_backbone(), CodecParams("linspace-3", channel=PfrSpec(chunk_bits=2, padding_bits=0)))
    data = raw_file(fp=codec.fingerprint(), width=16, height=16, schedule=b"linspace-3",
                    channel_params=codec.params.channel.to_bytes(), n_steps=3, payload=payload)
    match = ("trailing data|not the coded stream|payload ends before" if refused_at is None
             else f"payload does not decode at step {refused_at}")
    with pytest.raises(fmt.CorruptFile, match=match):
        codec.decode(data)


@pytest.mark.parametrize("codec_name", ["pfr", "turbo-ddcm"])
def test_trailing_data_after_the_payload_is_refused(gaussian_backbone, codec_name: str) -> None:
    """Data after a file's coded steps is refused, from one 32-bit word up (the decoder re-codes
    what it reads: the payload must be exactly that stream), whether its CRC was forged to match or
    the data follows the CRC; every rate point of a progressive encode is a file of its own and
    decodes (a prefix of the stream plus a header of its step count)."""
    spec = PfrSpec(4, 1) if codec_name == "pfr" else TurboDdcmSpec(6, 3)
    codec = DiffcCodec(gaussian_backbone, CodecParams("linspace-6", channel=spec))
    res = codec.encode(tiny_image(), stop_timesteps=codec.timesteps[1:])
    for point in res.points:
        assert torch.equal(codec.decode(point.data, reconstruct=False).x_t, point.x_t)
    header, payload = fmt.read(res.points[-1].data)
    for junk in (b"\0" * 4, bytes(range(256)) * 4096):
        forged = fmt.write(header, payload + junk)
        with pytest.raises(fmt.CorruptFile, match=f"{len(junk)} bytes of trailing data after the {len(payload)}-byte"):
            codec.decode(forged)
    with pytest.raises(fmt.CorruptFile, match="CRC32"):
        codec.decode(res.points[-1].data + b"\0" * 64)
    # a longer point's stream under a shorter point's header: not that point's file
    short = res.points[0]
    spliced = fmt.write(fmt.read(short.data)[0], payload)
    with pytest.raises(fmt.CorruptFile, match="trailing data|not the coded stream"):
        codec.decode(spliced)


# ---- fuzzing ---------------------------------------------------------------------------------------
SCHEDULES = ["linspace-3", "geom-4", "linspace-6", "geom-0", "paper-x", "linspace-1"]


@st.composite
def forged_files(draw) -> bytes:
    """Structurally valid files (right CRC, often the right fingerprint) with arbitrary fields and
    payloads: they reach deep into the decoder."""
    schedule = draw(st.sampled_from(SCHEDULES))
    chunk_bits = draw(st.integers(1, 8))
    padding_bits = draw(st.integers(0, 3))
    split_q = draw(st.sampled_from([0, 4, 8, 9, 2]))  # off, 1, 2, 2.25, and an invalid 0.5
    seed = draw(st.integers(0, 3))
    n_steps = draw(st.integers(0, 8))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    payload = draw(st.one_of(st.binary(max_size=48),  # random bytes, or runs of one byte (0xff...)
                             st.tuples(st.integers(0, 255), st.integers(0, 12)).map(lambda t: bytes([t[0]]) * 4 * t[1])))
    if draw(st.booleans()):
        payload = payload[: len(payload) // 4 * 4]
    good_fp = draw(st.integers(0, 4)) > 0
    fp = b"\0\0"
    if good_fp:
        try:
            params = CodecParams(schedule, seed=seed, channel=PfrSpec(chunk_bits=chunk_bits, padding_bits=padding_bits, split_above=split_q / 4), recon=Recon(mode="denoise", steps=1))
            fp = _fingerprints(params)
        except ValueError:
            pass
    caption = draw(st.one_of(st.none(), st.text(max_size=20)))
    cap = zlib.compress(caption.encode("utf-8"), 9) if caption else b""
    return raw_file(fp=fp, width=width, height=height, seed=seed, schedule=schedule.encode(),
                    chunk_bits=chunk_bits, padding_bits=padding_bits, split_q=split_q, recon=0, recon_steps=1,
                    n_steps=n_steps, caption=cap, payload=payload)


_FP_CACHE: dict = {}


def _fingerprints(params: CodecParams) -> bytes:
    if params not in _FP_CACHE:
        _FP_CACHE[params] = DiffcCodec(_fuzz_backbone(), params).fingerprint()
    return _FP_CACHE[params]


_BACKBONE: list = []


def _fuzz_backbone():
    if not _BACKBONE:
        from diffc.backbones.gaussian import GaussianBackbone

        _BACKBONE.append(GaussianBackbone())
    return _BACKBONE[0]


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            break
        i = pos % len(b)
        if kind == 0:
            b[i] = val
        elif kind == 1:
            del b[i:]
        else:
            b[i:i] = bytes([val])
    return bytes(b)


FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.binary(max_size=60).map(lambda b: fmt.MAGIC + bytes([1]) + b)))
def test_fuzz_read_raw_bytes(data: bytes) -> None:
    try:
        header, payload = fmt.read(data)
    except fmt.DiffcFormatError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert 1 <= header.width <= fmt.MAX_SIDE


@FUZZ
@given(ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       which=st.integers(0, 1), fix_crc=st.booleans())
def test_fuzz_mutated_real_files(real_files, tiny_codec, ops, which, fix_crc) -> None:
    data = _mutate(real_files[which], ops)
    if fix_crc and len(data) > 4:
        data = data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))
    try:
        fmt.read(data)
    except fmt.DiffcFormatError:
        pass
    try:
        res = tiny_codec.decode(data, reconstruct=True)
    except fmt.DiffcFormatError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert res.image is not None and res.image.shape == (3, res.header.height, res.header.width)


@FUZZ
@given(data=forged_files())
def test_fuzz_decode_forged_files(data: bytes) -> None:
    codec = DiffcCodec(_fuzz_backbone(), CodecParams("linspace-3", channel=PfrSpec(chunk_bits=2, padding_bits=0)))
    try:
        res = codec.decode(data, reconstruct=True)
    except fmt.DiffcFormatError as e:
        assert str(e) and "\n" not in str(e)
        return
    h = res.header
    assert res.image.shape == (3, h.height, h.width)
    assert torch.isfinite(res.x_t).all()


# ---- golden bitstream ------------------------------------------------------------------------------
def _portable(data: bytes) -> tuple[bytes, bytes]:
    """(header bytes with the provenance zeroed, payload) of a file: the provenance records this
    machine's torch/diffusers versions and thread count, which the bitstream does not depend on."""
    h, payload = fmt.read(data)
    return fmt.write(dataclasses.replace(h, provenance=fmt.Provenance()), b""), payload


def _golden_now(codec: DiffcCodec) -> dict:
    res = codec.encode(tiny_image(), stop_timesteps=[codec.timesteps[3], codec.timesteps[-1]], caption="a golden test")
    return {
        "params": {**dataclasses.asdict(codec.params), "channel": {"name": codec.params.channel.name,
                                                                   **dataclasses.asdict(codec.params.channel)}},
        "image": "tests/test_format.py::tiny_image(12, 20)",
        "caption": "a golden test",
        "format_version": fmt.FORMAT_VERSION,
        "points": [{
            "step_index": p.step_index,
            "timestep": p.timestep,
            "bytes": len(p.data),
            "header_sha256": hashlib.sha256(_portable(p.data)[0]).hexdigest(),
            "payload_sha256": hashlib.sha256(_portable(p.data)[1]).hexdigest(),
            "hex": p.data.hex(),
            "x_t_sha256": hashlib.sha256(p.x_t.contiguous().numpy().tobytes()).hexdigest(),
            "x_t_f32le": p.x_t.contiguous().numpy().astype("<f4").tobytes().hex(),
        } for p in res.points],
    }


def test_golden_bitstream(tiny_codec) -> None:
    """Silent format drift check (CompressAI-style): the header (provenance aside) and the payload
    of every point, and the stored file decodes to the same x_t. Regenerate deliberately with
    DIFFC_REGEN_GOLDEN=1 after an intended bitstream change (and bump FORMAT_VERSION if old files
    no longer decode)."""
    now = _golden_now(tiny_codec)
    if os.environ.get("DIFFC_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(now, indent=1) + "\n")
        pytest.skip(f"regenerated {GOLDEN}")
    assert GOLDEN.is_file(), f"missing {GOLDEN}; create it with DIFFC_REGEN_GOLDEN=1"
    want = json.loads(GOLDEN.read_text())
    assert (want["params"], want["format_version"]) == (now["params"], now["format_version"])
    for w, n in zip(want["points"], now["points"], strict=True):
        assert (n["step_index"], n["timestep"]) == (w["step_index"], w["timestep"])
        assert n["header_sha256"] == w["header_sha256"], "the header changed (format drift)"
        assert n["payload_sha256"] == w["payload_sha256"], "the encoder's bitstream changed (format drift)"
        # the stored file still decodes to the same x_t (decoder drift)
        stored = bytes.fromhex(w["hex"])
        assert hashlib.sha256(_portable(stored)[1]).hexdigest() == w["payload_sha256"]
        d = tiny_codec.decode(stored)
        # bit-exact on the machine that wrote the golden file; elsewhere (another CPU's float kernels)
        # within the drift the determinism contract allows: the same candidates, rounding apart
        want_xt = np.frombuffer(bytes.fromhex(w["x_t_f32le"]), "<f4").reshape(tuple(d.x_t.shape))
        assert np.abs(d.x_t.numpy() - want_xt).max() <= XT_DRIFT, "the decoder's x_t drifted"


@pytest.mark.parametrize("grid, guidance, grid_bytes, guidance_bytes", [
    ("reference", None, b"\x01", b"\x00"),
    ((981, 500, 10, 0), 5.0, b"\x02\x04" + varint(981) + varint(500) + b"\x0a\x00", varint(81)),
    ("uniform", 0.0, b"\x00", b"\x01"),
])
def test_recon_grid_and_guidance_layout(grid, guidance, grid_bytes, guidance_bytes):
    """Since version 5: the reconstruction grid (name byte, or 2 + count + timesteps) and guidance
    (0 = the encoder's, else 1 + 16 x scale) sit after recon_steps, as documented."""
    h = fmt.Header(backbone="gaussian", fingerprint=b"\0\0", width=64, height=64, seed=1, schedule="geom-12",
                   channel="pfr", channel_params=b"\x08\x02\x00\x00", n_steps=1, recon=Recon("denoise", 50, grid, guidance),
                   provenance=fmt.Provenance("cpu", "float32", 2, (2, 13, 0), (0, 36, 0)), parity="reference")
    data = fmt.write(h, b"")
    assert data == raw_file(grid=grid_bytes, guidance=guidance_bytes, seed=1, parity=1)
    assert fmt.read(data)[0] == h


@pytest.mark.parametrize("grid", [b"\x03", b"\x02\x00", b"\x02\x02\x05\x05", b"\x02\x02\x05\x09"])
def test_bad_recon_grid_is_refused(grid):
    """Unknown grid kinds, empty lists and lists that are not strictly decreasing: one CorruptFile."""
    with pytest.raises(fmt.CorruptFile, match="grid"):
        fmt.read(raw_file(grid=grid))


# ---- compact header, byte-granular payload ---------------------------------------------------------
SHIPPED_TWINS = ["gaussian", "tiny-sd15", "tiny-sdxl", "tiny-flux", "tiny-sd35-medium", "tiny-ddpm"]


@pytest.mark.parametrize("parity", fmt.PARITIES)
def test_default_header_of_every_shipped_backbone_is_at_most_12_bytes(parity) -> None:
    """A Kodak-size (768 x 512) file at a shipped backbone's default settings, 16 threads: backbone
    id, flags, fingerprint, size, steps, threads and CRC = 12 bytes (14 with the field mask and parity of a
    reference-parity file) for files of up to 127 coded steps: the whole schedule of the gaussian
    and tiny backbones, and every stop at timestep >= 35 of the real ones' 152- and 161-step
    ``paper`` schedules (a stop below takes a 2-byte step count)."""
    from diffc.backbone import BACKBONE_IDS
    from diffc.codec import default_profile
    from diffc.schedule import encoding_timesteps

    for name in BACKBONE_IDS:
        p = default_profile(name, parity)
        h = fmt.Header(backbone=name, fingerprint=b"\xab\xcd", width=768, height=512, seed=p.seed,
                       schedule=p.schedule, channel=p.channel, channel_params=p.channel_params,
                       n_steps=min(127, len(encoding_timesteps(p.schedule))), recon=p.recon,
                       provenance=fmt.Provenance(threads=16), parity=parity)
        assert fmt.header_size(h) == (12 if parity == "project" else 14), name
        assert fmt.header_size(dataclasses.replace(h, n_steps=128)) == fmt.header_size(h) + 1
        assert fmt.read(fmt.write(h, b"\x01"))[0] == h


@pytest.mark.parametrize("parity", ["project", "reference"])
def test_profiles_are_the_shipped_configs_codec_defaults(parity) -> None:
    """The decoder's profiles (diffc/profiles.py, part of the format) equal the ``codec`` that
    ``compress model=NAME`` composes for every backbone with an id, so a default-configuration encode writes no codec
    field; and the core reads them without importing the pipelines' configs."""
    import subprocess
    import sys

    from diffc.backbone import BACKBONE_IDS
    from diffc.profiles import PROFILES, profile_params
    from pipelines.common import compose
    from pipelines.codec_config import codec_params

    assert set(BACKBONE_IDS) == set(PROFILES)
    for name in BACKBONE_IDS:
        shipped, _ = codec_params(compose("compress", [f"model={name}", f"parity={parity}"]).codec, parity)
        assert profile_params(name, parity) == shipped, name
    code = ("import sys; from diffc.codec import default_profile; default_profile('sd15', 'reference'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pipelines', 'hydra', 'omegaconf')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.parametrize("name", SHIPPED_TWINS)
def test_shipped_backbones_write_12_byte_headers_and_decode(name) -> None:
    """Real encodes at each backbone's default settings (64 x 64): 12 header bytes (the size takes
    2 bytes, as 768 x 512's), the file decodes to the encoder's x_t, and with ``provenance=True``
    the information fields come back (8 bytes more)."""
    from pipelines.common import build_codec, compose

    codec = build_codec(compose("compress", [f"model={name}"]))
    point = codec.encode(tiny_image(64, 64), stop_timesteps=[700]).points[0]
    assert point.bits_header == 8 * 12
    assert torch.equal(codec.decode(point.data, reconstruct=False).x_t, point.x_t)
    codec.record_provenance = True
    prov = fmt.read(codec.encode(tiny_image(64, 64), stop_timesteps=[700]).points[0].data)[0].provenance
    assert prov.recorded and prov.device_type == "cpu" and prov.threads >= 1


def test_payloads_are_byte_granular_and_read_back_exactly(gaussian_backbone) -> None:
    """Across 8 seeds the payloads are not all whole 32-bit words (the final flush cuts the last
    word: ``diffc.rcc.entropy.PayloadEncoder``), never longer than constriction's words, and every file
    decodes to the encoder's x_t (the decoder re-codes what it reads and finds the same bytes)."""
    from diffc.rcc.entropy import PayloadEncoder, payload_decoder
    import constriction

    lengths, saved = [], 0
    for seed in range(8):
        codec = DiffcCodec(gaussian_backbone, CodecParams("linspace-6", seed=seed, channel=PfrSpec(chunk_bits=4, padding_bits=1), recon=Recon(mode="denoise")))
        for point in codec.encode(tiny_image(), stop_timesteps=codec.timesteps[1:]).points:
            payload = fmt.read(point.data)[1]
            lengths.append(len(payload))
            assert torch.equal(codec.decode(point.data, reconstruct=False).x_t, point.x_t)
    assert {n % 4 for n in lengths} != {0}, lengths
    model = constriction.stream.model.Categorical(np.array([0.6, 0.3, 0.1]), perfect=False)
    rng = np.random.default_rng(0)
    for _ in range(300):
        enc, symbols = PayloadEncoder(), rng.integers(0, 3, int(rng.integers(1, 200))).astype(np.int32)
        enc.encode(symbols, model)
        payload, words = enc.sealed(), enc._enc.get_compressed().size
        assert len(payload) <= 4 * words
        saved += 4 * words - len(payload)
        assert np.array_equal(payload_decoder(payload).decode(model, symbols.size), symbols)
    assert saved / 300 > 1.0  # bytes per stream the cut saves on average
