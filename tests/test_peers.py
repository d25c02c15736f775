"""DDCM and Turbo-DDCM as channels of the same chain (diffc.codebook): real .diffc files whose
header names the codec, bit-exact decoding, rates that equal their formulas, codebooks from the
shared randomness, and the command lines."""
from __future__ import annotations

import math
from dataclasses import replace
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from diffc import format as fmt
from diffc.rcc.spec import PfrSpec
from diffc.codebook.spec import DdcmSpec, TurboDdcmSpec
from diffc.codebook.channel import TurboDdcmChannel
from diffc.codec import CodecParams, DiffcCodec, UnknownChannel, params_from_header
from diffc.rcc.randomness import normals
from diffc.recon import Recon
from pipelines.common import CONF_DIR, build_codec, compose as compose_config

DDCM = CodecParams("geom-12", channel=DdcmSpec(codebook_bits=8), recon=Recon(mode="denoise"))
TURBO = CodecParams("geom-12", channel=TurboDdcmSpec(codebook_bits=10, atoms=12), recon=Recon(mode="denoise"))
TINY = sorted(p.stem for p in (CONF_DIR / "model").glob("tiny-*.yaml"))


def image(h: int = 24, w: int = 40) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("params", [DDCM, TURBO], ids=["ddcm", "turbo-ddcm"])
def test_round_trip_and_rate_formula(gaussian_backbone, kodak64, params: CodecParams) -> None:
    codec = DiffcCodec(gaussian_backbone, params)
    img = kodak64
    res = codec.encode(img, stop_timesteps=codec.timesteps[1:])
    assert [p.step_index for p in res.points] == list(range(1, 13))
    mse = []
    for p in res.points:
        d = codec.decode(p.data)
        assert torch.equal(d.x_t, p.x_t)  # bit-identical x_t at the decoder
        header, payload = fmt.read(p.data)
        assert (header.channel, header.channel_params) == (params.channel.name, params.channel.to_bytes())
        assert params_from_header(header) == params
        # the payload is the rate formula, up to the range coder's last 32-bit word
        ideal = p.step_index * params.channel.step_bits
        assert 0 <= 8 * len(payload) - ideal < 32 + 1e-9, (8 * len(payload), ideal)
        assert p.bits_total == 8 * len(p.data) and p.bits_header == 8 * (len(p.data) - len(payload))
        assert p.bits_side == 0 and p.bits_payload == 8 * len(payload)
        mse.append(float(((d.image - img) ** 2).mean()))
    # the bits carry the image: its decode is closer to it than the decode of another image's file
    other = codec.decode(codec.encode(img.flip(-1).flip(-2)).points[-1].data).image
    assert mse[-1] < float(((other - img) ** 2).mean())
    assert res.records[0].index_bits == pytest.approx(params.channel.step_bits)


def test_step_bits_formulas() -> None:
    assert DDCM.channel.step_bits == 8
    assert TURBO.channel.step_bits == math.ceil(math.log2(math.comb(1024, 12))) + 12
    v1 = CodecParams("paper", channel=TurboDdcmSpec(codebook_bits=14, atoms=45))
    assert v1.channel.step_bits == 444 + 45
    assert 16 * v1.channel.step_bits / 512**2 == pytest.approx(0.030, abs=5e-4)  # the published M = 45 point: 0.030 bpp


def test_ddcm_picks_the_best_code_of_the_shared_codebook(gaussian_backbone) -> None:
    """The decoded step noise is the code n* = argmax <C_n, u>, C_n = row n of the step's stream."""
    codec = DiffcCodec(gaussian_backbone, DDCM)
    chain = codec.chain
    x0 = gaussian_backbone.encode(image())
    ch = codec.params.channel.channel(x0.numel())
    step, x1 = next(chain.run(ch, chain.start(x0.shape), None, 1, x0=x0))
    key, d = chain.step_key(1), x0.numel()
    C = normals(key, torch.arange(256, dtype=torch.int32)[:, None], torch.arange(d, dtype=torch.int32)[None, :])
    best = int(torch.argmax(C.double() @ step.u.flatten().double()))
    assert torch.equal(x1, step.sample(C[best]))


def test_turbo_noise_is_signed_atoms_at_unit_std(gaussian_backbone) -> None:
    codec = DiffcCodec(gaussian_backbone, TURBO)
    x0 = gaussian_backbone.encode(image())
    step = codec.chain.step(codec.chain.start(x0.shape), 1, None, x0)
    ch = TurboDdcmChannel(TURBO.channel, x0.numel())
    z = ch.choose(step.u, 99)
    assert float(z.std()) == pytest.approx(1.0, abs=1e-5)
    g = ch.scores(step.u, 99)
    top = torch.topk(g.abs(), 12).indices
    want = (ch.codes(99, top.tolist(), z.device) * torch.sign(g[top]).float()[None, :]).sum(1)
    assert torch.allclose(z, want / want.std(), atol=1e-5)
    assert float((z.double() * step.u.flatten().double()).sum()) > 0  # aligned with x0 - x0_hat


def test_params_are_normalised_and_validated() -> None:
    a = CodecParams("geom-12", channel=DdcmSpec(codebook_bits=8))
    assert a == CodecParams("geom-12", channel=DdcmSpec(codebook_bits=8))  # one fingerprint
    assert a.channel == DdcmSpec(8) and a.channel.to_bytes() == b"\x08"
    for make in (lambda: DdcmSpec(codebook_bits=0), lambda: TurboDdcmSpec(codebook_bits=4, atoms=17),
                 lambda: TurboDdcmSpec(codebook_bits=25)):
        with pytest.raises(ValueError):
            make()
    for bad in (dict(atoms=2), dict(chunk_bits=8), dict(candidates="sparse-sum")):  # another channel's options
        with pytest.raises(TypeError):
            DdcmSpec(codebook_bits=8, **bad)


def test_forged_codec_fields_are_refused() -> None:
    """The spec's bytes are parsed by the spec: out-of-range or stray bytes are corrupt files."""
    h = fmt.Header(backbone="gaussian", fingerprint=b"\0" * 2, width=8, height=8, seed=0, schedule="geom-12",
                   channel="turbo-ddcm", channel_params=TurboDdcmSpec(4, 5).to_bytes(), n_steps=1)
    data = fmt.write(h, b"")
    assert fmt.read(data)[0] == h and params_from_header(h).channel == TurboDdcmSpec(4, 5)
    for params, match in ((b"\x00\x05", "codebook_bits"), (b"\x04\x11", "atoms"), (b"\x04\x05\x00", "stray"),
                          (b"\x04", "ends inside")):
        with pytest.raises(fmt.CorruptFile, match=match):
            params_from_header(replace(h, channel_params=params))
    with pytest.raises(UnknownChannel, match="not installed.*toy-none.*turbo-ddcm"):
        params_from_header(replace(h, channel="toy-none"))


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_backbone_round_trips(name: str) -> None:
    for codec_name, extra in (("ddcm", {"codebook_bits": 6}), ("turbo-ddcm", {"codebook_bits": 8, "atoms": 4})):
        codec = build_codec(compose_config("compress", [f"model={name}", f"codec={codec_name}", "codec.schedule=linspace-4",
                                                 *(f"codec.channel.{k}={v}" for k, v in extra.items())]))
        p = codec.encode(image(), stop_timesteps=[codec.timesteps[2]]).points[-1]
        d = codec.decode(p.data)
        assert torch.equal(d.x_t, p.x_t) and d.image.shape == (3, 24, 40) and bool(torch.isfinite(d.image).all())


def test_command_lines(tmp_path: Path) -> None:
    """``pipelines.compress codec=ddcm``, then decompress: the PNG the encoder reported."""
    from pipelines.compress import compress
    from pipelines.decompress import decompress

    png = tmp_path / "in.png"
    Image.fromarray((image().permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(png)
    f, rep, dec = tmp_path / "x.diffc", tmp_path / "rep.png", tmp_path / "dec.png"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        compress(compose("compress", overrides=["model=gaussian", "codec=ddcm", "codec.schedule=geom-12",
                                                f"input={png}", f"output={f}", "timestep=300",
                                                f"recon_output={rep}", "progress=false"]))
        decompress(compose("decompress", overrides=[f"input={f}", f"output={dec}", "progress=false"]))
    assert fmt.read(f.read_bytes())[0].channel == "ddcm"
    assert dec.read_bytes() == rep.read_bytes()
