"""The .diffc container (format version 10: a compact header for ultra-low rates).

Layout (integers are unsigned LEB128 varints unless noted; every length is bounded):

    magic+version 1 byte  0xDA: high nibble 0xD = .diffc, low nibble = FORMAT_VERSION (10)
    backbone+flags 1 byte bits 0-4: the backbone's id (``diffc.backbone.BACKBONE_IDS``, 1..31; 0 = its
               name follows: u8 length + ASCII, <= 64); bit 5: codec fields follow (the configuration
               differs from the backbone's shipped defaults); bit 6: caption; bit 7: provenance
    [backbone name]        only with id 0
    fingerprint 2 bytes    sha256[:2] of backbone config + codec parameters (FINGERPRINT_BYTES)
    size       varint (s | (width >> s) << 3), varint (height >> s): s = the common power of two of
               width and height (<= 7), so 768 x 512 takes 2 bytes (1..65536, width x height <= MAX_PIXELS)
    n_steps                number of coded diffusion steps (<= 10000)
    threads                intra-op threads of the encoder's model calls (<= 256, 0 = not fixed): the
               decoder runs the same (``diffc.determinism``): the one provenance field it uses
    [codec fields]         with bit 5: a varint mask (bits 0-4, not 0), then each field that differs
               from the profile (``Profile``: the backbone's shipped codec defaults for the file's
               parity, ``diffc.codec.default_profile``), in mask order:
               bit 0 parity 1 byte (PARITIES: 0 = project, 1 = reference; the profile is that parity's);
               bit 1 seed varint (< 2^32);
               bit 2 schedule: 1 byte, 1 + ``diffc.schedule.SCHEDULE_FAMILIES`` index (then N for
                     linspace-N / geom-N as a varint), or 0 + u8 length + ASCII name;
               bit 3 channel: varint id (``ChannelSpec.id``; 0 + u8 length + ASCII name), then u8 length
                     (<= MAX_SPEC_BYTES) + the spec's own bytes (``ChannelSpec.to_bytes``);
               bit 4 reconstruction: mode 1 byte (0 = one-step denoise, 1 = probability-flow ODE),
                     steps varint (<= 1000), grid 1 byte (RECON_GRIDS: 0 = uniform, 1 = reference;
                     2 = a list: varint count (1..MAX_GRID), then the timesteps as varints, strictly
                     decreasing, <= 1000), guidance varint (0 = the encoder's, else 1 + 16 x scale)
    [provenance]           with bit 7 (information, not in the fingerprint; ``diffc.determinism``):
               device type 1 byte, model dtype 1 byte, torch and diffusers versions 3 varints each
    [caption]              with bit 6: varint length (1..65536) + zlib-compressed UTF-8
    payload    range-coded stream, byte-granular (``diffc.rcc.entropy.PayloadEncoder``)
    crc32      4 bytes little-endian, over everything before it

A default-configuration file of any shipped backbone at Kodak size (768 x 512) has a 12-byte
header: 1 + 1 + 2 + 2 + 1 + 1 + CRC 4. Any malformed, truncated or foreign input raises a subclass
of ``DiffcFormatError`` with a one-line message; nothing is allocated from a header field before it
is bounds-checked. The format knows no channel: a spec's bytes are parsed by the spec
(``diffc.codec.params_from_header``). Files of versions 1-7 (magic b"\\x89DFC") are refused by
version.

Detection (docs/format.md): CRC-32 misses no error burst of <= 32 bits and a random corruption with
probability 2^-32; the 16-bit fingerprint lets a file of another backbone configuration through with
probability 2^-16 (it then decodes to a wrong image instead of being refused).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import ClassVar

from .checks import checked_int
from .recon import MAX_GRID, MAX_GUIDANCE, MAX_STEPS as MAX_RECON_STEPS, MODES as RECON_MODES, RECON_GRIDS, Recon

#: the first byte: high nibble MAGIC_NIBBLE, low nibble the version
MAGIC_NIBBLE = 0xD
#: 2: split_above byte and split side information; 3: provenance; 4: codec id; 5: recon grid, guidance;
#: 6: the channel's spec by name and bytes (candidate generator included), parity
#: 7: integer-exact normals (diffc/rcc/randomness.py inverse-CDF table): candidates bit-identical on every device
#: 8: the compact header (ids, the backbone's default profile, 1-byte magic+version, 2-byte fingerprint,
#:    provenance optional but the thread count) and byte-granular payloads (big-endian words, cut last word)
#: 9: one name per channel (pfr, sparse-sum, ddcm, turbo-ddcm; was diffc, diffc-sparse-sum): the
#:    fingerprint hashes the name, so a version-8 file is refused by version, not by fingerprint
#: 10: the gaussian profile's skip_kl 0.001 (was 0.03): a file naming the profile reads it, so a
#:    version-9 file is refused by version, not by fingerprint
FORMAT_VERSION = 10
MAGIC = bytes([MAGIC_NIBBLE << 4 | FORMAT_VERSION])
#: the magic of format versions 1..7 (then a version byte): refused by version
OLD_MAGIC = b"\x89DFC"
#: bytes of the fingerprint (a mismatched configuration passes with probability 2^-(8 x this))
FINGERPRINT_BYTES = 2
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
#: flag bits of the backbone+flags byte (bits 0-4: the backbone id)
ID_BITS = 5
CODEC_FIELDS, CAPTION, PROVENANCE = 1 << 5, 1 << 6, 1 << 7
#: the codec fields' mask bits, in the order they are written
PARITY_F, SEED_F, SCHEDULE_F, CHANNEL_F, RECON_F = (1 << i for i in range(5))
#: most trailing zero bits of the size shared by width and height that the size bytes drop
MAX_SIZE_SHIFT = 7


class DiffcFormatError(ValueError):
    """A .diffc file could not be parsed, or asks for more than the reader allows.

    Each kind owns the prefix of its messages (``prefix``): a raise states only what is wrong, e.g.
    ``CorruptFile("CRC32 mismatch")`` reads ``corrupt .diffc file: CRC32 mismatch``. An error of
    this family given as the detail (re-raised as its own kind, or re-labelled as another) gives its
    detail alone, so a message has one prefix; any other exception gives its message
    (``CorruptFile(ValueError("x"))``: ``corrupt .diffc file: x``). ``args[0]`` is the detail, so a
    copy (pickling, ``copy``) is the same error."""

    prefix: ClassVar[str] = ""

    def __init__(self, detail: object = ""):
        super().__init__(detail.args[0] if isinstance(detail, DiffcFormatError) else str(detail))

    def __str__(self) -> str:
        return f"{self.prefix}{self.args[0]}"


class NotADiffcFile(DiffcFormatError):
    """Wrong magic: not a .diffc file."""

    prefix = "not a .diffc file: "


class UnsupportedVersion(DiffcFormatError):
    """Written by a newer/older, incompatible format version."""

    prefix = "unsupported .diffc file: "


class TruncatedFile(DiffcFormatError):
    """The file ends early."""

    prefix = "truncated .diffc file: "


class CorruptFile(DiffcFormatError):
    """Checksum mismatch or out-of-range header field."""

    prefix = "corrupt .diffc file: "


class FingerprintMismatch(DiffcFormatError):
    """The file was written with another backbone/weights/config than the one loaded."""

    prefix = ".diffc file of another model: "


class TooLarge(DiffcFormatError):
    """The file claims more work than the reader's limits allow (``max_pixels``: ``check_pixels``;
    per-step entries). No prefix: the message names what is too large and the limit."""


@dataclass(frozen=True)
class Provenance:
    """Where a file was encoded: what bit-exact decoding depends on (``diffc.determinism``). ``threads``
    is always in the file (the decoder uses it); the rest is information, recorded only on request
    (None = not recorded)."""

    device_type: str | None = None
    dtype: str | None = None
    threads: int = 0  # intra-op threads around model calls; 0 = not fixed
    torch_version: tuple[int, int, int] | None = None
    diffusers_version: tuple[int, int, int] | None = None

    @property
    def recorded(self) -> bool:
        """Whether the information fields are set (all of them, or none)."""
        return self.device_type is not None

    def without_information(self) -> "Provenance":
        """Only what the decoder uses: the thread count."""
        return Provenance(threads=self.threads)

    def describe(self) -> str:
        v = lambda t: ".".join(map(str, t))
        threads = f"{self.threads} threads" if self.threads else "threads not fixed"
        if not self.recorded:
            return threads
        return (f"{self.device_type}/{self.dtype}, {threads}, torch {v(self.torch_version)}, "
                f"diffusers {v(self.diffusers_version)}")


@dataclass(frozen=True)
class Profile:
    """The codec fields a header leaves out when they equal these (a backbone's shipped defaults)."""

    seed: int = 0
    schedule: str = "paper"
    channel: str = "pfr"
    channel_params: bytes = b""
    recon: Recon = Recon()


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


def profile(backbone: str, parity: str) -> Profile:
    """The default profile of ``backbone`` with ``parity`` (``diffc.codec.default_profile``)."""
    from .codec import default_profile  # the codec knows the backbones' shipped defaults

    return default_profile(backbone, parity)


def size_bytes(width: int, height: int) -> bytes:
    """varint(s | (width >> s) << 3) + varint(height >> s), s = common trailing zero bits (<= 7)."""
    s = min(((width | height) & -(width | height)).bit_length() - 1, MAX_SIZE_SHIFT)
    return varint(s | (width >> s) << 3) + varint(height >> s)


def write(header: Header, payload: bytes) -> bytes:
    """Serialise header + payload + CRC32."""
    from .backbone import BACKBONE_IDS

    cap = zlib.compress(header.caption.encode("utf-8"), 9) if header.caption else b""
    if len(header.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"a fingerprint is {FINGERPRINT_BYTES} bytes, got {len(header.fingerprint)}")
    if len(header.channel_params) > MAX_SPEC_BYTES:
        raise ValueError(f"channel parameters take {len(header.channel_params)} bytes, at most {MAX_SPEC_BYTES}")
    checked_int("threads", header.provenance.threads, 0, MAX_THREADS)
    fields = _codec_fields(header)
    bid = BACKBONE_IDS.get(header.backbone, 0)
    flags = bid | (CODEC_FIELDS if fields else 0) | (CAPTION if cap else 0) | (
        PROVENANCE if header.provenance.recorded else 0)
    body = b"".join([
        MAGIC, bytes([flags]), b"" if bid else short_str(header.backbone), header.fingerprint,
        size_bytes(header.width, header.height), varint(header.n_steps), varint(header.provenance.threads),
        fields, _provenance_bytes(header.provenance) if header.provenance.recorded else b"",
        varint(len(cap)) + cap if cap else b"", payload,
    ])
    return body + struct.pack("<I", zlib.crc32(body))


def _codec_fields(h: Header) -> bytes:
    """The mask and the fields that differ from the profile of (backbone, parity); b"" when none do."""
    from .plugins import channel_id

    p = profile(h.backbone, h.parity)
    out, mask = [], 0
    if h.parity != PARITIES[0]:
        mask |= PARITY_F
        out.append(bytes([PARITIES.index(h.parity)]))
    if h.seed != p.seed:
        mask |= SEED_F
        out.append(varint(h.seed))
    if h.schedule != p.schedule:
        mask |= SCHEDULE_F
        out.append(_schedule_bytes(h.schedule))
    if (h.channel, h.channel_params) != (p.channel, p.channel_params):
        mask |= CHANNEL_F
        cid = channel_id(h.channel)
        out.append(varint(cid) + (b"" if cid else short_str(h.channel)) + bytes([len(h.channel_params)])
                   + h.channel_params)
    if h.recon != p.recon:
        mask |= RECON_F
        out.append(_recon_bytes(h.recon))
    return varint(mask) + b"".join(out) if mask else b""


def _schedule_bytes(name: str) -> bytes:
    from .schedule import SCHEDULE_FAMILIES

    family, _, n = name.rpartition("-") if name.startswith(("linspace-", "geom-")) else (name, "", "")
    if family in SCHEDULE_FAMILIES and (not n or (n.isdigit() and str(int(n)) == n and int(n) <= MAX_STEPS)):
        return bytes([1 + SCHEDULE_FAMILIES.index(family)]) + (varint(int(n)) if n else b"")
    return b"\x00" + short_str(name)


def _recon_bytes(r: Recon) -> bytes:
    if isinstance(r.grid, str):
        grid = bytes([RECON_GRID_NAMES.index(r.grid)])
    else:
        grid = bytes([len(RECON_GRID_NAMES)]) + varint(len(r.grid)) + b"".join(map(varint, r.grid))
    guidance = varint(0 if r.guidance is None else 1 + int(16 * r.guidance))
    return bytes([RECON_MODES.index(r.mode)]) + varint(r.steps) + grid + guidance


def _provenance_bytes(p: Provenance) -> bytes:
    versions = (*p.torch_version, *p.diffusers_version)
    if not all(0 <= v <= MAX_VERSION_PART for v in versions):
        raise ValueError(f"provenance out of range: {p}")
    return b"".join([bytes([DEVICE_TYPES.index(p.device_type), DTYPES.index(p.dtype)]), *map(varint, versions)])


class Reader:
    """Bounded reads of a byte string: every failure is a ``DiffcFormatError`` naming ``what``."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise TruncatedFile(f"ends inside the {what}")
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
            raise CorruptFile(f"{what} is not a valid varint")
        if v > max_value:
            raise CorruptFile(f"{what} = {v} exceeds {max_value}")
        return v

    def short_str(self, what: str) -> str:
        n = self.byte(what)
        if n > MAX_NAME:
            raise CorruptFile(f"{what} length {n} exceeds {MAX_NAME}")
        raw = self.take(n, what)
        if not all(0x21 <= c < 0x7F for c in raw):
            raise CorruptFile(f"{what} is not printable ASCII")
        return raw.decode("ascii")

    def choice(self, names: tuple[str, ...], what: str) -> str:
        i = self.byte(what)
        if i >= len(names):
            raise CorruptFile(f"unknown {what} {i}")
        return names[i]


def read(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[Header, bytes]:
    """Parse and verify a .diffc file; returns (header, payload). A file claiming more than
    ``max_pixels`` pixels raises ``TooLarge`` (``check_pixels``, after the checksum: a damaged size
    reads as corrupt)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("read() takes bytes")
    data = bytes(data)
    if data.startswith(OLD_MAGIC) and len(data) > len(OLD_MAGIC):
        raise UnsupportedVersion(f"written in format version {data[len(OLD_MAGIC)]}; this build reads "
                                 f"{FORMAT_VERSION} (re-encode the image)")
    if not data or data[0] >> 4 != MAGIC_NIBBLE:
        raise NotADiffcFile("bad magic bytes")
    if data[0] & 0xF != FORMAT_VERSION:
        raise UnsupportedVersion(f"written in format version {data[0] & 0xF}; this build reads {FORMAT_VERSION}")
    if len(data) < len(MAGIC) + 1 + 4:
        raise TruncatedFile("shorter than the smallest header")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    r = Reader(body)
    r.take(len(MAGIC), "magic")
    try:
        fields = _read_fields(r)
    except TruncatedFile:
        if zlib.crc32(body) != crc:
            raise TruncatedFile("the header is incomplete and the checksum does not match (or it is corrupt)") from None
        raise
    except CorruptFile:
        if zlib.crc32(body) != crc:
            raise CorruptFile("CRC32 mismatch") from None
        raise
    if zlib.crc32(body) != crc:
        raise CorruptFile("CRC32 mismatch")
    header = Header(**fields)
    check_pixels(header.width, header.height, max_pixels, "the image of a .diffc file")
    return header, body[r.pos:]


def pixel_limit(max_pixels: int) -> int:
    """The ``max_pixels`` option, validated: an integer in 1..MAX_PIXELS (the format's limit)."""
    return checked_int("max_pixels", max_pixels, 1, MAX_PIXELS)


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """The one ``max_pixels`` rule, applied to a size read from a header before any pixel is
    decoded or allocated (compress: the input image's header, ``pipelines.datasets.read_image``;
    decompress and ``DiffcCodec.decode``: the file's, ``read``; ``DiffcCodec.encode``: its input
    tensor, at the format's limit MAX_PIXELS): more than ``max_pixels`` =
    ``pixel_limit(max_pixels)`` pixels raises ``TooLarge``, naming ``what`` and the option. A guard
    against decompression bombs (a forged header, a tiny PNG of 8192 x 8192): like PIL's
    ``Image.MAX_IMAGE_PIXELS`` but tighter, a diffusion decode costing hundreds of bytes per pixel."""
    limit = pixel_limit(max_pixels)
    if width * height > limit:
        fix = "the .diffc format's limit"
        if limit < MAX_PIXELS:
            fix = f"raise the limit with max_pixels=N, at most {MAX_PIXELS}, {fix}"
        raise TooLarge(f"{what} is {width}x{height} ({width * height} pixels), above max_pixels={limit} ({fix})")


def _read_fields(r: Reader) -> dict:
    """The header fields, each bounds-checked as it is read (CorruptFile / TruncatedFile)."""
    from .backbone import BACKBONE_IDS

    flags = r.byte("backbone id")
    bid = flags & ((1 << ID_BITS) - 1)
    if bid:
        names = [n for n, i in BACKBONE_IDS.items() if i == bid]
        if not names:
            raise CorruptFile(f"unknown backbone id {bid}")
        backbone = names[0]
    else:
        backbone = r.short_str("backbone name")
    f: dict = {"backbone": backbone, "fingerprint": r.take(FINGERPRINT_BYTES, "fingerprint")}
    start = r.pos
    packed = r.varint("width", (MAX_SIDE << 3) | MAX_SIZE_SHIFT)
    shift = packed & MAX_SIZE_SHIFT
    f["width"], f["height"] = (packed >> 3) << shift, r.varint("height", MAX_SIDE) << shift
    if not (1 <= f["width"] <= MAX_SIDE and 1 <= f["height"] <= MAX_SIDE):
        raise CorruptFile(f"image size {f['width']}x{f['height']} outside 1..{MAX_SIDE}")
    if size_bytes(f["width"], f["height"]) != r.data[start:r.pos]:
        raise CorruptFile("the image size is not in its canonical form")
    if f["width"] * f["height"] > MAX_PIXELS:
        raise CorruptFile(f"image {f['width']}x{f['height']} exceeds the format's "
                          f"{MAX_PIXELS}-pixel limit")
    f["n_steps"] = r.varint("step count", MAX_STEPS)
    threads = r.varint("thread count", MAX_THREADS)
    f.update(_read_codec_fields(r, backbone) if flags & CODEC_FIELDS else _profile_fields(backbone, PARITIES[0]))
    f["provenance"] = _read_provenance(r, threads) if flags & PROVENANCE else Provenance(threads=threads)
    f["caption"] = None
    if flags & CAPTION:
        f["caption"] = _caption(r.take(r.varint("caption length", MAX_CAPTION), "caption"))
        if f["caption"] is None:
            raise CorruptFile("empty caption")
    return f


def _profile_fields(backbone: str, parity: str) -> dict:
    try:
        p = profile(backbone, parity)
    except ValueError as e:
        raise CorruptFile(e) from None
    return {"seed": p.seed, "schedule": p.schedule, "channel": p.channel, "channel_params": p.channel_params,
            "recon": p.recon, "parity": parity}


def _read_codec_fields(r: Reader, backbone: str) -> dict:
    from .plugins import channel_by_id
    from .schedule import SCHEDULE_FAMILIES

    mask = r.varint("codec field mask", (1 << 5) - 1)
    if not mask:
        raise CorruptFile("empty codec field mask")
    parity = r.choice(PARITIES, "parity") if mask & PARITY_F else PARITIES[0]
    f = _profile_fields(backbone, parity)
    if mask & SEED_F:
        f["seed"] = r.varint("seed", 2**32 - 1)
    if mask & SCHEDULE_F:
        kind = r.byte("schedule")
        if kind > len(SCHEDULE_FAMILIES):
            raise CorruptFile(f"unknown schedule id {kind}")
        family = SCHEDULE_FAMILIES[kind - 1] if kind else None
        f["schedule"] = (r.short_str("schedule name") if not kind
                         else f"{family}-{r.varint('schedule steps', MAX_STEPS)}" if family in ("linspace", "geom")
                         else family)
    if mask & CHANNEL_F:
        cid = r.varint("channel id", 255)
        try:
            f["channel"] = channel_by_id(cid) if cid else r.short_str("channel name")
        except ValueError as e:
            raise CorruptFile(e) from None
        f["channel_params"] = r.take(r.byte("channel parameter length"), "channel parameters")
    if mask & RECON_F:
        f["recon"] = _read_recon(r)
    return f


def _read_recon(r: Reader) -> Recon:
    mode = r.choice(RECON_MODES, "reconstruction mode")
    steps = r.varint("recon_steps", MAX_RECON_STEPS)
    grid_kind = r.byte("reconstruction grid")
    if grid_kind > len(RECON_GRID_NAMES):
        raise CorruptFile(f"unknown reconstruction grid {grid_kind}")
    grid: str | tuple[int, ...] = RECON_GRID_NAMES[grid_kind] if grid_kind < len(RECON_GRID_NAMES) else ()
    if grid_kind == len(RECON_GRID_NAMES):
        grid = tuple(r.varint("grid timestep", MAX_RECON_STEPS) for _ in range(r.varint("grid length", MAX_GRID)))
    guidance_q = r.varint("reconstruction guidance", 1 + int(16 * MAX_GUIDANCE))
    try:
        return Recon(mode, steps, grid, None if guidance_q == 0 else (guidance_q - 1) / 16)
    except ValueError as e:
        raise CorruptFile(e) from None


def _read_provenance(r: Reader, threads: int) -> Provenance:
    device, dtype = r.choice(DEVICE_TYPES, "device type"), r.choice(DTYPES, "dtype")
    versions = [r.varint("library version", MAX_VERSION_PART) for _ in range(6)]
    return Provenance(device, dtype, threads, tuple(versions[:3]), tuple(versions[3:]))


def _caption(raw: bytes) -> str | None:
    if not raw:
        return None
    try:
        z = zlib.decompressobj()
        cap_bytes = z.decompress(raw, MAX_CAPTION)
        if z.unconsumed_tail or not z.eof:
            raise CorruptFile("caption too long or incomplete")
        return cap_bytes.decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as e:
        raise CorruptFile(f"bad caption ({e})") from None


def header_size(header: Header) -> int:
    """Bytes of everything but the payload (header fields + CRC)."""
    return len(write(header, b""))
