"""The codec's configuration is the spec tree: Hydra structured configs made from the core's own
dataclasses, and the one call that turns a composed ``codec`` node into them.

The ``codec`` node of every command (conf/compress.yaml, conf/config.yaml, ...)::

    codec:
      schedule: geom-30      # diffc.params.CodecParams.schedule
      seed: 0                # CodecParams.seed
      channel:               # the channel's spec: conf/codec/NAME.yaml picks it (codec=NAME)
        name: pfr            #   its one name (diffc.plugins.ChannelSpec.name; also the header's)
        chunk_bits: 8        #   the spec's own fields, nothing else (diffc/rcc/channel.py PfrSpec)
        ...
      recon: {mode: denoise, steps: 20, grid: uniform, guidance: null}   # diffc.recon.Recon
      search: {compile: false, block_entries: null}   # diffc.plugins.Search: how the encoder runs

Each part is a structured config registered here from the dataclass it builds (``schema``), so
Hydra type-checks every value and refuses, at composition, a key the chosen channel does not have
(``codec=ddcm codec.channel.chunk_bits=8``: ``Key 'chunk_bits' not in 'ddcm'``). The defaults of a
command compose, in order (later wins):

1. ``schema/codec@codec``: the dataclasses' defaults (``CodecParams()``, ``Recon()``, ``Search()``);
2. the model's codec profile, ``conf/codec/profile/*.yaml`` (schedule, reconstruction), which
   ``conf/model/NAME.yaml`` picks in its own defaults list;
3. the channel, ``conf/codec/NAME.yaml`` (its spec's defaults, and what the channel sets for every
   model, e.g. Turbo-DDCM's schedule);
4. the profile's values for that channel, ``conf/codec/tune/PROFILE-CHANNEL.yaml`` when it exists
   (e.g. the Gaussian backbone's ``chunk_bits: 8``);
5. the command line (``codec.channel.chunk_bits=10``, ``codec.recon.mode=ode``).

Steps 2 and 4 state the shipped backbones' codec defaults, which ``diffc.profiles`` holds for the
decoder; tests/test_configs.py composes every model and checks that the two agree.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from diffc.params import CodecParams
from diffc.plugins import ChannelSpec, Search, channel_names, channel_spec
from diffc.recon import Recon

#: the config groups of the schemas, in Hydra's config store (global to a process: a group of their
#: own, so that no other app's ``codec`` key reads as a config group): ``schema/codec`` the codec's
#: shape, ``schema/channel/NAME`` a channel's (``conf/codec/NAME.yaml``: ``- /schema/channel@channel: NAME``)
SCHEMA_GROUP = "schema"
#: field types a structured config checks; any other field (e.g. ``Recon.grid``: a name or a list) is ``Any``
CHECKED = (int, float, bool, str)


def _config_type(hint: Any) -> Any:
    """The OmegaConf type of a dataclass field's type hint: int/float/bool/str, Optional of one of
    them, else Any."""
    if hint in CHECKED:
        return hint
    args = typing.get_args(hint)
    if len(args) == 2 and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        if inner in CHECKED:
            return Optional[inner]
    return Any


def schema(cls: type, title: str, channel: bool = False) -> type:
    """The structured config of the dataclass ``cls``, named ``title`` in Hydra's errors: its fields
    with their defaults and checked types (``_config_type``), after a ``name`` field (= ``title``)
    for a ``channel``'s spec."""
    hints = typing.get_type_hints(cls)
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=title))] if channel else []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        fields.append((f.name, _config_type(hints[f.name]), dataclasses.field(default=_plain(default))))
    return dataclasses.make_dataclass(title, fields, kw_only=True)


def _plain(value: Any) -> Any:
    """A default as a config value (a tuple grid is a list)."""
    return list(value) if isinstance(value, tuple) else value


def register() -> None:
    """Register the schemas: ``schema/codec`` (schedule, seed, recon, search; ``channel`` is the
    chosen channel's) and ``schema/channel/NAME`` for every channel installed (``diffc.plugins``:
    built-ins, entry points, ``$DIFFC_CHANNELS``), so a plug-in's ``conf/codec/NAME.yaml`` is two lines."""
    cs = ConfigStore.instance()
    recon, search = schema(Recon, "recon"), schema(Search, "search")
    base = dataclasses.make_dataclass("codec", [
        ("schedule", str, dataclasses.field(default=CodecParams.schedule)),
        ("seed", int, dataclasses.field(default=CodecParams.seed)),
        ("channel", Any, dataclasses.field(default=None)),
        ("recon", recon, dataclasses.field(default_factory=recon)),
        ("search", search, dataclasses.field(default_factory=search)),
    ], kw_only=True)
    cs.store(group=SCHEMA_GROUP, name="codec", node=base)
    for name in channel_names():
        cs.store(group=f"{SCHEMA_GROUP}/channel", name=name, node=schema(channel_spec(name), name, channel=True))


def channel_from(node: Mapping[str, Any]) -> ChannelSpec:
    """The spec of a composed ``codec.channel`` node (its ``name`` picks the class)."""
    fields = dict(node)
    return channel_spec(fields.pop("name"))(**fields)


def codec_params(codec: DictConfig | Mapping[str, Any], parity: str = "project") -> tuple[CodecParams, Search]:
    """The codec's parameters and the encoder's search of a composed ``codec`` node, in one call;
    ValueError (TypeError on a wrong type) names the bad value."""
    c = OmegaConf.to_container(codec, resolve=True) if isinstance(codec, DictConfig) else dict(codec)
    if not isinstance(c.get("channel"), Mapping) or "name" not in c["channel"]:
        raise ValueError("codec.channel is not set: pick a channel with codec=NAME (conf/codec/)")
    recon = dict(c["recon"])
    if isinstance(recon.get("grid"), list):
        recon["grid"] = tuple(recon["grid"])
    params = CodecParams(schedule=c["schedule"], seed=c["seed"], channel=channel_from(c["channel"]),
                         recon=Recon(**recon), parity=parity)
    return params, Search(**c["search"])


register()
