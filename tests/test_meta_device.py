"""No tensor of an encode or decode is made without an explicit device.

With ``torch.set_default_device("meta")`` (after the backbone is built on the CPU), a tensor created
without ``device=`` lands on the meta device, and the first op that mixes it with a real tensor, or
reads its values, raises: a device-less creation that would silently allocate on the CPU (and copy
to the GPU every step) under CUDA fails loudly here, on any machine.
"""
from __future__ import annotations

import pytest
import torch

from diffc.codec import DiffcCodec
from test_backbones import PARAMS, TINY, _one_thread, make_image, tiny  # noqa: F401 (autouse fixture)


#: device-less creations left in diffc/pfr.py (not this test's files): each needs ``device="cpu"``
#: (the plans are made on the CPU): lines 155, 157, 158, 169 (torch.arange), 179, 204 (torch.ones),
#: 214, 220 (torch.randperm), 218, 219 (torch.arange); make_plan's ``.item()`` on the meta ``w`` fails first.
PFR_DEVICE_LESS = "diffc/pfr.py makes plan tensors without device= (lines 155-220 of HEAD c34d55b; see PFR_DEVICE_LESS)"


@pytest.mark.xfail(raises=RuntimeError, strict=False, reason=PFR_DEVICE_LESS)
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
