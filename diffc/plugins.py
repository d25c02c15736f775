"""Channels as plug-ins: what a channel is to the codec and the file format.

The chain (``diffc.chain``) hands every step to a channel; which channel, and with which
parameters, is a ``ChannelSpec``: a small frozen dataclass that owns its parameters, their
validation (``__post_init__``), their header bytes (``to_bytes`` / ``from_bytes``), the channel it
makes (``channel``) and the records that channel keeps. ``diffc.codec`` and ``diffc.format`` only
ever see a spec's ``name`` and bytes, so adding a channel is one module that registers its spec
(``register_channel``) plus one ``conf/codec/NAME.yaml`` that picks its typed config (the spec's
fields, registered as a Hydra structured config by ``pipelines.codec_config``); the codec never
branches on names.

Specs are found by name (``channel_spec``): the built-ins (``diffc.rcc.spec``, ``diffc.codebook.spec``), then the
``diffc.channels`` entry-point group of installed packages, then the modules named in the
environment variable ``DIFFC_CHANNELS`` (comma-separated, e.g. ``DIFFC_CHANNELS=mypkg.mychannel``).

Header bytes: by default the spec's fields in declaration order, ``int`` as unsigned LEB128
varints (< 2^32), ``float`` as little-endian float64, ``str`` as u8 length + ASCII; a spec whose
fields pack tighter overrides ``to_bytes`` / ``from_bytes``. At most ``MAX_SPEC_BYTES`` bytes.

Bounded cost: ``decode_entries(n_dims)`` is the number of floats one decoded step materialises for
a latent of ``n_dims`` entries; the codec refuses a file (or an encode) above ``MAX_STEP_ENTRIES``
before allocating anything, so a forged header cannot ask for gigabytes.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import struct
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from . import format as fmt

if TYPE_CHECKING:  # the chain imports torch; the specs of a config must not
    import torch

    from .chain import Chain, Step

#: most bytes of a spec in a header
MAX_SPEC_BYTES = 255
#: most floats one decoded step may materialise (2^28 float32 = 1 GiB)
MAX_STEP_ENTRIES = 1 << 28
#: entry-point group and environment variable that name plug-in modules
ENTRY_POINT_GROUP = "diffc.channels"
ENV_MODULES = "DIFFC_CHANNELS"


@dataclass(frozen=True)
class Search:
    """How an encoder runs its search, never what it finds: no field changes a file
    (tests/test_search_device.py). ``compile``: ``torch.compile`` the per-block kernels (opt-in;
    the first step pays the compilation); ``block_entries``: candidate entries per block (None = the
    device's measured default, ``diffc.rcc.pfr.default_block_entries``)."""

    compile: bool = False
    block_entries: int | None = None


@dataclass
class StepRecord:
    """What a channel did at one step (bits): ``kl_bits`` = KL(q || p), ``delivered_bits`` =
    log2 q/p(the sample sent). Channels extend it with their own fields."""

    kl_bits: float
    delivered_bits: float


class CodingChannel(Protocol):
    """What the codec asks of a channel: ``diffc.chain.Channel``'s ``send`` / ``receive`` (appending a
    ``StepRecord`` per step sent), plus its stream."""

    records: list[StepRecord]

    def send(self, chain: "Chain", step: "Step") -> "torch.Tensor":
        """Encoder: x_t' for ``step`` (``diffc.chain.Channel.send``)."""

    def receive(self, chain: "Chain", step: "Step") -> "torch.Tensor":
        """Decoder: the same x_t' (``diffc.chain.Channel.receive``)."""

    def stream(self) -> tuple[bytes, Any]:
        """(the payload of the steps sent or received so far, its ``diffc.rcc.entropy.StreamCost``)."""


@dataclass(frozen=True)
class ChannelSpec:
    """Base of channel specs: subclasses are frozen dataclasses with a ``name`` (see the module docstring)."""

    #: the channel's one name: in configs (``codec=NAME``, ``codec.channel.name``), headers and records
    name: ClassVar[str] = ""
    #: the spec's id in a .diffc header (``diffc.format``; 0 = none: the header names it). The built-ins
    #: have 1..4; an id is never reused for another channel
    id: ClassVar[int] = 0

    def channel(self, n_dims: int, payload: bytes | None = None, search: Search = Search()) -> CodingChannel:
        """The channel for a latent of ``n_dims`` entries: encoding (``payload`` None) or decoding;
        ``search``: how the encoder runs its search (a channel without one ignores it)."""
        raise NotImplementedError

    @property
    def step_bits(self) -> float | None:
        """Bits per coded step when fixed by the parameters (codebook channels), else None."""
        return None

    def decode_entries(self, n_dims: int) -> int:
        """Floats one decoded step materialises for ``n_dims`` latent entries (the bounded-cost check)."""
        return n_dims

    def fingerprint_fields(self) -> dict[str, Any]:
        """What the file fingerprint covers of this spec (its fields)."""
        return dataclasses.asdict(self)

    # ---- header bytes ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        out = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kind = _kind(f)
            if kind == "int":
                if not 0 <= v < 2**32:
                    raise ValueError(f"{self.name}.{f.name} = {v} is not a header varint (0..2^32-1)")
                out.append(fmt.varint(v))
            elif kind == "float":
                out.append(struct.pack("<d", v))
            else:
                out.append(fmt.short_str(v))
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ChannelSpec":
        """The spec of header bytes; ValueError (the format makes it CorruptFile) on anything else."""
        r = fmt.Reader(data)
        values = {}
        for f in dataclasses.fields(cls):
            kind = _kind(f)
            if kind == "int":
                values[f.name] = r.varint(f"{cls.name}.{f.name}", 2**32 - 1)
            elif kind == "float":
                (values[f.name],) = struct.unpack("<d", r.take(8, f"{cls.name}.{f.name}"))
            else:
                values[f.name] = r.short_str(f"{cls.name}.{f.name}")
        if r.pos != len(data):
            raise ValueError(f"{len(data) - r.pos} stray bytes after the {cls.name} parameters")
        return cls(**values)


def _kind(f: dataclasses.Field) -> str:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    if kind not in ("int", "float", "str"):
        raise TypeError(f"spec field {f.name}: {kind!r} has no default header encoding (override to_bytes)")
    return kind


_REGISTRY: dict[str, type[ChannelSpec]] = {}
_DISCOVERED = False


def register_channel(cls: type[ChannelSpec]) -> type[ChannelSpec]:
    """Class decorator: make ``cls`` findable by its ``name``."""
    if not cls.name or not cls.name.isascii() or len(cls.name) > fmt.MAX_NAME:
        raise ValueError(f"a channel name must be 1..{fmt.MAX_NAME} ASCII characters, got {cls.name!r}")
    other = _REGISTRY.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"channel {cls.name!r} is already registered by {other.__module__}.{other.__qualname__}")
    same_id = next((c for c in _REGISTRY.values() if cls.id and c.id == cls.id and c.name != cls.name), None)
    if same_id is not None:
        raise ValueError(f"channel id {cls.id} of {cls.name!r} is already {same_id.name!r}'s")
    _REGISTRY[cls.name] = cls
    return cls


def channel_by_id(channel_id: int) -> str:
    """The name of the channel registered with header id ``channel_id`` (ValueError if none)."""
    _discover()
    for cls in _REGISTRY.values():
        if cls.id == channel_id:
            return cls.name
    raise ValueError(f"unknown channel id {channel_id}")


def channel_id(name: str) -> int:
    """The header id of channel ``name`` (0: none, the header names it)."""
    _discover()
    cls = _REGISTRY.get(name)
    return cls.id if cls is not None else 0


def _discover() -> None:
    """Import the built-in channels and the entry points' modules (once), and ``$DIFFC_CHANNELS``'
    (each call: an imported module costs a dict look-up)."""
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        importlib.import_module("diffc.rcc.spec")
        importlib.import_module("diffc.codebook.spec")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
    for module in filter(None, (m.strip() for m in os.environ.get(ENV_MODULES, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"${ENV_MODULES} names {module!r}, which does not import ({e})") from None


def channel_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def channel_spec(name: str) -> type[ChannelSpec]:
    """The spec class registered as ``name``; ValueError naming the known ones otherwise."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(sorted(_REGISTRY))} (a plug-in registers "
                         f"itself: entry point group {ENTRY_POINT_GROUP!r} or ${ENV_MODULES}=module)") from None

