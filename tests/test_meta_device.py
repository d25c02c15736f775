"""No tensor of an encode or decode is made without an explicit device.

With ``torch.set_default_device("meta")`` (after the backbone is built on the CPU), a tensor created
without ``device=`` lands on the meta device, and the first op that mixes it with a real tensor, or
reads its values, raises: a device-less creation that would silently allocate on the CPU (and copy
to the GPU every step) under CUDA fails loudly here, on any machine.
"""
from __future__ import annotations

import pytest
import torch

from diffc.codebook.spec import DdcmSpec, TurboDdcmSpec
from diffc.codec import DiffcCodec
from diffc.rcc.spec import PfrSpec, SparseSumSpec
from test_backbones import PARAMS, TINY, _one_thread, make_image, tiny  # noqa: F401 (autouse fixture)


@pytest.mark.parametrize("name", TINY)
def test_encode_decode_make_no_device_less_tensor(name: str):
    b = tiny(name)
    codec = DiffcCodec(b, PARAMS)
    image = make_image(20, 28)  # made before the default device changes
    stop = codec.timesteps[2]
    torch.set_default_device("meta")
    try:
        point = codec.encode(image, stop_timesteps=[stop], caption="a boat").points[-1]
        dec = codec.decode(point.data)
    finally:
        torch.set_default_device(None)
    assert point.x_t.device.type == "cpu" and torch.equal(dec.x_t, point.x_t)
    assert dec.image.device.type == "cpu" and dec.image.shape == (3, 20, 28)


@pytest.mark.parametrize("channel", [SparseSumSpec(4, 1, atoms=64, sparse_m=4), PfrSpec(4, 1, split_above=1.0),
                                     DdcmSpec(6), TurboDdcmSpec(6, 3)],
                         ids=["sparse-sum", "split", "ddcm", "turbo-ddcm"])
def test_every_channel_makes_no_device_less_tensor(gaussian_backbone, channel):
    from diffc.codec import CodecParams

    codec = DiffcCodec(gaussian_backbone, CodecParams("geom-6", channel=channel))
    image = make_image(20, 28)
    torch.set_default_device("meta")
    try:
        point = codec.encode(image).points[-1]
        dec = codec.decode(point.data)
    finally:
        torch.set_default_device(None)
    assert torch.equal(dec.x_t, point.x_t) and dec.image.device.type == "cpu"
