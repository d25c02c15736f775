"""The .diffc container.

Layout (all integers unsigned LEB128 varints unless noted; every length is bounded):

    magic      4 bytes  b"\\x89DFC"
    version    1 byte   (FORMAT_VERSION)
    backbone   u8 length + ASCII registry name (<= 64)
    fingerprint 4 bytes  sha256[:4] of backbone config + codec parameters
    width, height          original image size in pixels (1..65536, width x height <= MAX_PIXELS)
    seed                   shared-randomness seed (< 2^32)
    schedule   u8 length + ASCII schedule name (<= 64)
    parity     1 byte (PARITIES: 0 = project, 1 = reference): which of the model config's settings the
               backbone was loaded with, so the decoder loads the same ones (``pipelines.decompress``)
    channel    u8 length + ASCII name of the channel's spec (``diffc.plugins``, <= 64), then u8 length
               (<= MAX_SPEC_BYTES) + the spec's own bytes (``ChannelSpec.to_bytes``; e.g. ``diffc``:
               chunk_bits, padding_bits, split_above in quarters; ``diffc-sparse-sum`` adds the atom bank
               K_a and M; ``ddcm``: codebook_bits; ``turbo-ddcm``: codebook_bits and M)
    recon      1 byte (0 = one-step denoise, 1 = probability-flow ODE), recon_steps varint (<= 1000)
    recon_grid 1 byte (RECON_GRIDS: 0 = uniform, 1 = reference; 2 = a list: varint count (1..MAX_GRID),
               then the timesteps as varints, strictly decreasing, <= 1000)
    recon_guidance varint: 0 = the encoder's guidance, else 1 + 16 x scale (0..MAX_GUIDANCE in 1/16)
    n_steps                number of coded diffusion steps (<= 10000)
    provenance (information, not in the fingerprint; ``diffc.determinism``): device type 1 byte,
               model dtype 1 byte, intra-op threads varint (<= 256, 0 = not fixed),
               torch and diffusers versions 3 varints each (major, minor, patch; < 2^16)
    caption    varint length (<= 65536) + zlib-compressed UTF-8 (0 = none)
    payload    range-coded stream (multiple of 4 bytes)
    crc32      4 bytes little-endian, over everything before it

Any malformed, truncated or foreign input raises a subclass of ``DiffcFormatError`` with a
one-line message; nothing is allocated from a header field before it is bounds-checked. The
format knows no channel: a spec's bytes are parsed by the spec (``diffc.codec.params_from_header``).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .recon import MAX_GRID, MAX_GUIDANCE, MAX_STEPS as MAX_RECON_STEPS, MODES as RECON_MODES, RECON_GRIDS, Recon

MAGIC = b"\x89DFC"
#: 2: split_above byte and split side information; 3: provenance; 4: codec id; 5: recon grid, guidance;
#: 6: the channel's spec by name and bytes (candidate generator included), parity
#: 7: integer-exact normals (diffc/randomness.py inverse-CDF table): candidates bit-identical on every device
FORMAT_VERSION = 7
#: named reconstruction grids (the byte in a header), then len(RECON_GRID_NAMES) = an explicit list
RECON_GRID_NAMES = RECON_GRIDS
#: the model-config settings a backbone was loaded with (conf/model/*.yaml ``${parity:PROJECT,REFERENCE}``)
PARITIES = ("project", "reference")
MAX_NAME = 64
MAX_SPEC_BYTES = 255
MAX_SIDE = 65536
#: largest image (pixels) a file may describe: 8192 x 8192 (the format's hard limit)
MAX_PIXELS = 1 << 26
#: default ``max_pixels`` of readers (an input image, a file's claimed size), raised up to MAX_PIXELS by the
#: option: 2^24 = 4096 x 4096, above every image of the evaluation sets (Kodak 768 x 512, DIV2K / CLIC2020
#: about 2048 x 1400) with room to spare, while a forged 8192 x 8192 claim is refused before any allocation
#: (as PIL's decompression-bomb guard ``Image.MAX_IMAGE_PIXELS``, tighter because a diffusion decode costs
#: hundreds of bytes per pixel, not 4)
DEFAULT_MAX_PIXELS = 1 << 24
MAX_STEPS = 10000
MAX_CAPTION = 65536
#: device types and model dtypes a header can name (index = the byte in the file)
DEVICE_TYPES = ("cpu", "cuda", "mps", "other")
DTYPES = ("float32", "float16", "bfloat16", "float64", "other")
#: most intra-op threads a file may ask a receiver to use (bounds a forged header)
MAX_THREADS = 256
MAX_VERSION_PART = (1 << 16) - 1


class DiffcFormatError(ValueError):
    """A .diffc file could not be parsed."""


class NotADiffcFile(DiffcFormatError):
    """Wrong magic: not a .diffc file."""


class UnsupportedVersion(DiffcFormatError):
    """Written by a newer/older, incompatible format version."""


class TruncatedFile(DiffcFormatError):
    """The file ends early."""


class CorruptFile(DiffcFormatError):
    """Checksum mismatch or out-of-range header field."""


class FingerprintMismatch(DiffcFormatError):
    """The file was written with another backbone/weights/config than the one loaded."""


class TooLarge(DiffcFormatError):
    """The file claims more work than the reader's limits allow (``max_pixels``, per-step entries)."""


@dataclass(frozen=True)
class Provenance:
    """Where a file was encoded: what bit-exact decoding depends on (``diffc.determinism``)."""

    device_type: str = "cpu"
    dtype: str = "float32"
    threads: int = 0  # intra-op threads around model calls; 0 = not fixed
    torch_version: tuple[int, int, int] = (0, 0, 0)
    diffusers_version: tuple[int, int, int] = (0, 0, 0)

    def describe(self) -> str:
        v = lambda t: ".".join(map(str, t))
        threads = f"{self.threads} threads" if self.threads else "threads not fixed"
        return (f"{self.device_type}/{self.dtype}, {threads}, torch {v(self.torch_version)}, "
                f"diffusers {v(self.diffusers_version)}")


@dataclass(frozen=True)
class Header:
    """A file's header (build it with keywords). ``channel`` / ``channel_params``: the name and bytes
    of the channel's spec (``diffc.plugins.ChannelSpec``); the format does not interpret them."""

    backbone: str
    fingerprint: bytes
    width: int
    height: int
    seed: int
    schedule: str
    channel: str
    channel_params: bytes
    n_steps: int
    recon: Recon = Recon()
    caption: str | None = None
    provenance: Provenance = Provenance()
    parity: str = "project"


def varint(v: int) -> bytes:
    """Unsigned LEB128."""
    if v < 0:
        raise ValueError("varint must be >= 0")
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def short_str(s: str) -> bytes:
    """u8 length + printable ASCII (<= MAX_NAME bytes)."""
    b = s.encode("ascii")
    if len(b) > MAX_NAME or not all(0x21 <= c < 0x7F for c in b):
        raise ValueError(f"name {s!r} is not 0..{MAX_NAME} printable ASCII characters")
    return bytes([len(b)]) + b


def write(header: Header, payload: bytes) -> bytes:
    """Serialise header + payload + CRC32."""
    cap = zlib.compress(header.caption.encode("utf-8"), 9) if header.caption else b""
    if len(header.channel_params) > MAX_SPEC_BYTES:
        raise ValueError(f"channel parameters take {len(header.channel_params)} bytes, at most {MAX_SPEC_BYTES}")
    body = b"".join([
        MAGIC, bytes([FORMAT_VERSION]), short_str(header.backbone), header.fingerprint,
        varint(header.width), varint(header.height), varint(header.seed), short_str(header.schedule),
        bytes([PARITIES.index(header.parity)]), short_str(header.channel),
        bytes([len(header.channel_params)]), header.channel_params, _recon_bytes(header.recon),
        varint(header.n_steps), _provenance_bytes(header.provenance),
        varint(len(cap)), cap, payload,
    ])
    return body + struct.pack("<I", zlib.crc32(body))


def _recon_bytes(r: Recon) -> bytes:
    if isinstance(r.grid, str):
        grid = bytes([RECON_GRID_NAMES.index(r.grid)])
    else:
        grid = bytes([len(RECON_GRID_NAMES)]) + varint(len(r.grid)) + b"".join(map(varint, r.grid))
    guidance = varint(0 if r.guidance is None else 1 + int(16 * r.guidance))
    return bytes([RECON_MODES.index(r.mode)]) + varint(r.steps) + grid + guidance


def _provenance_bytes(p: Provenance) -> bytes:
    versions = (*p.torch_version, *p.diffusers_version)
    if not 0 <= p.threads <= MAX_THREADS or not all(0 <= v <= MAX_VERSION_PART for v in versions):
        raise ValueError(f"provenance out of range: {p}")
    return b"".join([bytes([DEVICE_TYPES.index(p.device_type), DTYPES.index(p.dtype)]), varint(p.threads),
                     *map(varint, versions)])


class Reader:
    """Bounded reads of a byte string: every failure is a ``DiffcFormatError`` naming ``what``."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise TruncatedFile(f"truncated .diffc file: ends inside the {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str, max_value: int) -> int:
        v = shift = 0
        for _ in range(5):
            b = self.byte(what)
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            raise CorruptFile(f"corrupt .diffc file: {what} is not a valid varint")
        if v > max_value:
            raise CorruptFile(f"corrupt .diffc file: {what} = {v} exceeds {max_value}")
        return v

    def short_str(self, what: str) -> str:
        n = self.byte(what)
        if n > MAX_NAME:
            raise CorruptFile(f"corrupt .diffc file: {what} length {n} exceeds {MAX_NAME}")
        raw = self.take(n, what)
        if not all(0x21 <= c < 0x7F for c in raw):
            raise CorruptFile(f"corrupt .diffc file: {what} is not printable ASCII")
        return raw.decode("ascii")

    def choice(self, names: tuple[str, ...], what: str) -> str:
        i = self.byte(what)
        if i >= len(names):
            raise CorruptFile(f"corrupt .diffc file: unknown {what} {i}")
        return names[i]


def read(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[Header, bytes]:
    """Parse and verify a .diffc file; returns (header, payload). A file claiming more than
    ``max_pixels`` pixels raises ``TooLarge`` (after the checksum: a damaged size reads as corrupt)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("read() takes bytes")
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise NotADiffcFile("not a .diffc file (bad magic bytes)")
    if len(data) < len(MAGIC) + 1 + 4:
        raise TruncatedFile("truncated .diffc file: shorter than the smallest header")
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(f".diffc format version {version} is not supported (this build reads {FORMAT_VERSION})")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    r = Reader(body)
    r.take(len(MAGIC) + 1, "magic")
    try:
        fields = _read_fields(r)
    except TruncatedFile:
        if zlib.crc32(body) != crc:
            raise TruncatedFile("truncated or corrupt .diffc file (header incomplete, checksum mismatch)") from None
        raise
    except CorruptFile:
        if zlib.crc32(body) != crc:
            raise CorruptFile("corrupt .diffc file: CRC32 mismatch") from None
        raise
    if zlib.crc32(body) != crc:
        raise CorruptFile("corrupt .diffc file: CRC32 mismatch")
    header = Header(**fields)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise TooLarge(f".diffc file claims a {header.width}x{header.height} image ({pixels} pixels), above "
                       f"max_pixels={max_pixels} (a guard against forged files, as PIL's decompression-bomb limit; "
                       f"raise it with max_pixels=N, at most {MAX_PIXELS})")
    payload = body[r.pos:]
    if len(payload) % 4:
        raise CorruptFile("corrupt .diffc file: payload is not a whole number of 32-bit words")
    return header, payload


def _read_fields(r: Reader) -> dict:
    """The header fields, each bounds-checked as it is read (CorruptFile / TruncatedFile)."""
    f: dict = {"backbone": r.short_str("backbone name"), "fingerprint": r.take(4, "fingerprint"),
               "width": r.varint("width", MAX_SIDE), "height": r.varint("height", MAX_SIDE)}
    if f["width"] < 1 or f["height"] < 1:
        raise CorruptFile("corrupt .diffc file: zero image size")
    if f["width"] * f["height"] > MAX_PIXELS:
        raise CorruptFile(f"corrupt .diffc file: image {f['width']}x{f['height']} exceeds the format's "
                          f"{MAX_PIXELS}-pixel limit")
    f["seed"] = r.varint("seed", 2**32 - 1)
    f["schedule"] = r.short_str("schedule name")
    f["parity"] = r.choice(PARITIES, "parity")
    f["channel"] = r.short_str("channel name")
    f["channel_params"] = r.take(r.byte("channel parameter length"), "channel parameters")
    mode = r.choice(RECON_MODES, "reconstruction mode")
    steps = r.varint("recon_steps", MAX_RECON_STEPS)
    grid_kind = r.byte("reconstruction grid")
    if grid_kind > len(RECON_GRID_NAMES):
        raise CorruptFile(f"corrupt .diffc file: unknown reconstruction grid {grid_kind}")
    grid: str | tuple[int, ...] = RECON_GRID_NAMES[grid_kind] if grid_kind < len(RECON_GRID_NAMES) else ()
    if grid_kind == len(RECON_GRID_NAMES):
        grid = tuple(r.varint("grid timestep", MAX_RECON_STEPS) for _ in range(r.varint("grid length", MAX_GRID)))
    guidance_q = r.varint("reconstruction guidance", 1 + int(16 * MAX_GUIDANCE))
    try:
        f["recon"] = Recon(mode, steps, grid, None if guidance_q == 0 else (guidance_q - 1) / 16)
    except ValueError as e:
        raise CorruptFile(f"corrupt .diffc file: {e}") from None
    f["n_steps"] = r.varint("step count", MAX_STEPS)
    device, dtype = r.choice(DEVICE_TYPES, "device type"), r.choice(DTYPES, "dtype")
    threads = r.varint("thread count", MAX_THREADS)
    versions = [r.varint("library version", MAX_VERSION_PART) for _ in range(6)]
    f["provenance"] = Provenance(device, dtype, threads, tuple(versions[:3]), tuple(versions[3:]))
    f["caption"] = _caption(r.take(r.varint("caption length", MAX_CAPTION), "caption"))
    return f


def _caption(raw: bytes) -> str | None:
    if not raw:
        return None
    try:
        z = zlib.decompressobj()
        cap_bytes = z.decompress(raw, MAX_CAPTION)
        if z.unconsumed_tail or not z.eof:
            raise CorruptFile("corrupt .diffc file: caption too long or incomplete")
        return cap_bytes.decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as e:
        raise CorruptFile(f"corrupt .diffc file: bad caption ({e})") from None


def header_size(header: Header) -> int:
    """Bytes of everything but the payload (header fields + CRC)."""
    return len(write(header, b""))
