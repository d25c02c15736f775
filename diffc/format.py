"""The .diffc container.

Layout (all integers unsigned LEB128 varints unless noted; every length is bounded):

    magic      4 bytes  b"\\x89DFC"
    version    1 byte   (FORMAT_VERSION)
    backbone   u8 length + ASCII registry name (<= 64)
    fingerprint 4 bytes  sha256[:4] of backbone config + codec parameters
    width, height          original image size in pixels (1..65536)
    seed                   shared-randomness seed (< 2^32)
    schedule   u8 length + ASCII schedule name (<= 64)
    codec      1 byte (CODECS: 0 = diffc, 1 = ddcm, 2 = turbo-ddcm), then its parameters:
      diffc:            chunk_bits, padding_bits 1 byte each; split_above 1 byte, in quarters
                        (0 = heavy chunks are never split)
      ddcm, turbo-ddcm: codebook_bits 1 byte (K = 2^codebook_bits, 1..24), atoms varint (M, <= K)
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
one-line message; nothing is allocated from a header field before it is bounds-checked.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"\x89DFC"
FORMAT_VERSION = 5  # 2: split_above byte and split side information; 3: provenance; 4: codec id; 5: recon grid, guidance
#: codecs a file can name (index = the byte in the file): DiffC's PFR channel and the two peers
CODECS = ("diffc", "ddcm", "turbo-ddcm")
MAX_CODEBOOK_BITS = 24
MAX_ATOMS = 4096
RECON_MODES = ("denoise", "ode")
#: named reconstruction grids (diffc.schedule.RECON_GRIDS), then 2 = an explicit list
RECON_GRID_NAMES = ("uniform", "reference")
MAX_GRID = 1000
MAX_GUIDANCE = 64.0
MAX_NAME = 64
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
    backbone: str
    fingerprint: bytes
    width: int
    height: int
    seed: int
    schedule: str
    chunk_bits: int
    padding_bits: int
    recon: str
    recon_steps: int
    n_steps: int
    caption: str | None = None
    split_above: float = 0.0
    provenance: Provenance = Provenance()
    codec: str = "diffc"
    codebook_bits: int = 0  # ddcm / turbo-ddcm: K = 2^codebook_bits codebook vectors per step
    atoms: int = 0  # turbo-ddcm: M atoms per step (ddcm: 1)
    recon_grid: str | tuple[int, ...] = "uniform"  # a name of RECON_GRID_NAMES or decreasing timesteps
    recon_guidance: float | None = None  # None = the encoder's guidance scale


def _varint(v: int) -> bytes:
    if v < 0:
        raise ValueError("varint must be >= 0")
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _quarters(v: float) -> int:
    q = 4 * v
    if q != int(q) or not 0 <= q <= 255:
        raise ValueError(f"split_above {v} is not a multiple of 0.25 in 0..63.75")
    return int(q)


def _short_str(s: str) -> bytes:
    b = s.encode("ascii")
    if len(b) > MAX_NAME:
        raise ValueError(f"name {s!r} longer than {MAX_NAME} bytes")
    return bytes([len(b)]) + b


def write(header: Header, payload: bytes) -> bytes:
    """Serialise header + payload + CRC32."""
    if header.recon not in RECON_MODES:
        raise ValueError(f"recon must be one of {RECON_MODES}")
    cap = zlib.compress(header.caption.encode("utf-8"), 9) if header.caption else b""
    body = b"".join([
        MAGIC, bytes([FORMAT_VERSION]), _short_str(header.backbone), header.fingerprint,
        _varint(header.width), _varint(header.height), _varint(header.seed), _short_str(header.schedule),
        _codec_bytes(header), bytes([RECON_MODES.index(header.recon)]),
        _varint(header.recon_steps), _grid_bytes(header.recon_grid), _guidance_bytes(header.recon_guidance),
        _varint(header.n_steps), _provenance_bytes(header.provenance),
        _varint(len(cap)), cap, payload,
    ])
    return body + struct.pack("<I", zlib.crc32(body))


def _codec_bytes(h: Header) -> bytes:
    if h.codec == "diffc":
        return bytes([0, h.chunk_bits, h.padding_bits, _quarters(h.split_above)])
    return bytes([CODECS.index(h.codec), h.codebook_bits]) + _varint(h.atoms)


def _grid_bytes(grid: str | tuple[int, ...]) -> bytes:
    if isinstance(grid, str):
        return bytes([RECON_GRID_NAMES.index(grid)])
    if not 1 <= len(grid) <= MAX_GRID or list(grid) != sorted(set(grid), reverse=True) or not 0 <= grid[-1] <= grid[0] <= 1000:
        raise ValueError(f"recon grid {grid} must hold 1..{MAX_GRID} strictly decreasing timesteps <= 1000")
    return bytes([len(RECON_GRID_NAMES)]) + _varint(len(grid)) + b"".join(map(_varint, grid))


def _guidance_bytes(g: float | None) -> bytes:
    if g is None:
        return _varint(0)
    if not 0 <= g <= MAX_GUIDANCE or (16 * g) % 1:
        raise ValueError(f"recon guidance {g} is not a multiple of 1/16 in 0..{MAX_GUIDANCE:g}")
    return _varint(1 + int(16 * g))


def _provenance_bytes(p: Provenance) -> bytes:
    versions = (*p.torch_version, *p.diffusers_version)
    if not 0 <= p.threads <= MAX_THREADS or not all(0 <= v <= MAX_VERSION_PART for v in versions):
        raise ValueError(f"provenance out of range: {p}")
    return b"".join([bytes([DEVICE_TYPES.index(p.device_type), DTYPES.index(p.dtype)]), _varint(p.threads),
                     *map(_varint, versions)])


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise TruncatedFile(f"truncated .diffc file: ends inside the {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self, what: str, max_value: int) -> int:
        v = shift = 0
        for _ in range(5):
            (b,) = self.take(1, what)
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
        (n,) = self.take(1, what)
        if n > MAX_NAME:
            raise CorruptFile(f"corrupt .diffc file: {what} length {n} exceeds {MAX_NAME}")
        raw = self.take(n, what)
        if not all(0x21 <= c < 0x7F for c in raw):
            raise CorruptFile(f"corrupt .diffc file: {what} is not printable ASCII")
        return raw.decode("ascii")


def read(data: bytes) -> tuple[Header, bytes]:
    """Parse and verify a .diffc file; returns (header, payload)."""
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
    r = _Reader(body)
    r.take(len(MAGIC) + 1, "magic")
    try:
        backbone = r.short_str("backbone name")
        fp = r.take(4, "fingerprint")
        width = r.varint("width", MAX_SIDE)
        height = r.varint("height", MAX_SIDE)
        seed = r.varint("seed", 2**32 - 1)
        schedule = r.short_str("schedule name")
        (codec,) = r.take(1, "codec")
        chunk_bits = padding_bits = split_q = codebook_bits = atoms = 0
        if codec == 0:
            chunk_bits, padding_bits, split_q = r.take(3, "codec parameters")
        else:
            (codebook_bits,) = r.take(1, "codec parameters")
            atoms = r.varint("atom count", MAX_ATOMS)
        (recon,) = r.take(1, "reconstruction mode")
        recon_steps = r.varint("recon_steps", 1000)
        (grid_kind,) = r.take(1, "reconstruction grid")
        grid: str | tuple[int, ...] = RECON_GRID_NAMES[grid_kind] if grid_kind < len(RECON_GRID_NAMES) else ()
        if grid_kind == len(RECON_GRID_NAMES):
            n_grid = r.varint("grid length", MAX_GRID)
            grid = tuple(r.varint("grid timestep", 1000) for _ in range(n_grid))
        guidance_q = r.varint("reconstruction guidance", 1 + int(16 * MAX_GUIDANCE))
        n_steps = r.varint("step count", MAX_STEPS)
        device, dtype = r.take(2, "provenance")
        threads = r.varint("thread count", MAX_THREADS)
        versions = [r.varint("library version", MAX_VERSION_PART) for _ in range(6)]
        cap_len = r.varint("caption length", MAX_CAPTION)
        cap_raw = r.take(cap_len, "caption")
    except TruncatedFile:
        if zlib.crc32(body) != crc:
            raise TruncatedFile("truncated or corrupt .diffc file (header incomplete, checksum mismatch)") from None
        raise
    if zlib.crc32(body) != crc:
        raise CorruptFile("corrupt .diffc file: CRC32 mismatch")
    if width < 1 or height < 1:
        raise CorruptFile("corrupt .diffc file: zero image size")
    if width * height > MAX_PIXELS:
        raise CorruptFile(f"corrupt .diffc file: image {width}x{height} exceeds the {MAX_PIXELS}-pixel limit")
    if device >= len(DEVICE_TYPES) or dtype >= len(DTYPES):
        raise CorruptFile("corrupt .diffc file: unknown device type or dtype")
    if recon >= len(RECON_MODES):
        raise CorruptFile(f"corrupt .diffc file: unknown reconstruction mode {recon}")
    if grid_kind > len(RECON_GRID_NAMES) or (isinstance(grid, tuple) and (
            not grid or list(grid) != sorted(set(grid), reverse=True))):
        raise CorruptFile("corrupt .diffc file: bad reconstruction grid")
    if codec >= len(CODECS):
        raise CorruptFile(f"corrupt .diffc file: unknown codec {codec}")
    if codec == 0 and (not 1 <= chunk_bits <= 24 or padding_bits > 8 or 0 < split_q < 4):
        raise CorruptFile("corrupt .diffc file: chunk parameters out of range")
    if codec and (not 1 <= codebook_bits <= MAX_CODEBOOK_BITS or not 1 <= atoms <= min(MAX_ATOMS, 1 << codebook_bits)):
        raise CorruptFile("corrupt .diffc file: codebook parameters out of range")
    caption = None
    if cap_len:
        try:
            z = zlib.decompressobj()
            cap_bytes = z.decompress(cap_raw, MAX_CAPTION)
            if z.unconsumed_tail or not z.eof:
                raise CorruptFile("corrupt .diffc file: caption too long or incomplete")
            caption = cap_bytes.decode("utf-8")
        except (zlib.error, UnicodeDecodeError) as e:
            raise CorruptFile(f"corrupt .diffc file: bad caption ({e})") from None
    payload = body[r.pos:]
    if len(payload) % 4:
        raise CorruptFile("corrupt .diffc file: payload is not a whole number of 32-bit words")
    header = Header(backbone, fp, width, height, seed, schedule, chunk_bits, padding_bits,
                    RECON_MODES[recon], recon_steps, n_steps, caption, split_q / 4,
                    Provenance(DEVICE_TYPES[device], DTYPES[dtype], threads, tuple(versions[:3]), tuple(versions[3:])),
                    CODECS[codec], codebook_bits, atoms, grid, None if guidance_q == 0 else (guidance_q - 1) / 16)
    return header, payload


def header_size(header: Header) -> int:
    """Bytes of everything but the payload (header fields + CRC)."""
    return len(write(header, b""))
