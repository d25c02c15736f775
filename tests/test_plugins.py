"""Channels as plug-ins (diffc/plugins.py): a new channel is one module plus one config, files
describe themselves (the decoder builds everything from the header and loads the backbone once),
and the registry refuses what it cannot find in one line."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from diffc import backbone as backbone_mod
from diffc import format as fmt
from diffc.rcc.spec import PfrSpec, SparseSumSpec
from diffc.codec import CodecParams, DiffcCodec
from diffc.plugins import ChannelSpec, channel_names, channel_spec
from diffc.codebook.spec import DdcmSpec, TurboDdcmSpec
from pipelines.common import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
TOY_CONF = Path(__file__).with_name("conf")


def write_png(path: Path, h: int = 24, w: int = 40) -> Path:
    rgb = torch.rand(3, h, w, generator=torch.Generator().manual_seed(3))
    Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return path


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DIFFC_CHANNELS="tests.toy_channel", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_toy_channel_round_trips_through_the_commands(tmp_path: Path) -> None:
    """tests/toy_channel.py + tests/conf/codec/toy-mean.yaml, no edit to codec.py, format.py or
    chain.py: compress names it (the config from a search path), decompress finds it by the name in
    the header (``$DIFFC_CHANNELS``) and rebuilds the encoder's reconstruction byte for byte."""
    png = write_png(tmp_path / "in.png")
    f, rep, dec = tmp_path / "x.diffc", tmp_path / "rep.png", tmp_path / "dec.png"
    c = run("pipelines.compress", f"hydra.searchpath=[file://{TOY_CONF}]", "model=gaussian", "codec=toy-mean",
            "codec.channel.toy_bits=5", "codec.schedule=geom-12", "timestep=1", f"input={png}", f"output={f}", f"recon_output={rep}",
            "progress=false")
    assert c.returncode == 0, c.stderr
    header, payload = fmt.read(f.read_bytes())
    assert (header.channel, header.channel_params, header.n_steps) == ("toy-mean", b"\x05", 12)
    assert len(payload) <= 12  # 12 steps x 5 bits, sealed in 32-bit words
    d = run("pipelines.decompress", f"input={f}", f"output={dec}", "progress=false")
    assert d.returncode == 0, d.stderr
    assert dec.read_bytes() == rep.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # without the plug-in: one line naming the channel
    missing = subprocess.run([sys.executable, "-m", "pipelines.decompress", f"input={f}", f"output={tmp_path / 'n.png'}"],
                             cwd=ROOT, env={k: v for k, v in env.items() if k != "DIFFC_CHANNELS"},
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "toy-mean" in missing.stderr and "not installed" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "n.png").exists()


def test_builtin_specs_and_their_bytes() -> None:
    assert {"pfr", "sparse-sum", "ddcm", "turbo-ddcm"} <= set(channel_names())
    for spec in (PfrSpec(12, 2, 2.0), PfrSpec(4, 0, 0.0), SparseSumSpec(8, 2, 1.25, 256, 4)):
        assert type(spec).from_bytes(spec.to_bytes()) == spec
    assert PfrSpec(12, 2, 2.0).to_bytes() == bytes([12, 2, 8, 0])
    assert PfrSpec(8, 2, 2.0, skip_kl=0.03).to_bytes() == bytes([8, 2, 8, 30])  # skip_kl in thousandths
    skip = SparseSumSpec(8, 2, 1.25, 256, 4, skip_kl=0.05)
    assert SparseSumSpec.from_bytes(skip.to_bytes()) == skip
    assert CodecParams(channel=SparseSumSpec(atoms=256, sparse_m=4)).channel == SparseSumSpec(12, 2, 2.0, 256, 4)
    with pytest.raises(ValueError, match="unknown codec 'jpeg'.*sparse-sum"):
        channel_spec("jpeg")


@dataclass(frozen=True)
class Probe(ChannelSpec):
    name: ClassVar[str] = "probe"
    a: int = 300
    b: float = 0.1
    c: str = "xy"


def test_default_header_encoding_of_a_spec() -> None:
    """A spec that does not override to_bytes: int fields as varints, floats as float64, str as u8 + ASCII."""
    raw = Probe().to_bytes()
    assert raw == b"\xac\x02" + np.float64(0.1).tobytes() + b"\x02xy"
    assert Probe.from_bytes(raw) == Probe()
    with pytest.raises(ValueError, match="stray"):
        Probe.from_bytes(raw + b"\0")


@pytest.fixture
def count_loads(monkeypatch) -> list[str]:
    """Every backbone load (``diffc.backbone.load_backbone``) during a test."""
    loads: list[str] = []
    real = backbone_mod.load_backbone

    def counting(name, **options):
        loads.append(name)
        return real(name, **options)

    monkeypatch.setattr(backbone_mod, "load_backbone", counting)
    return loads


@pytest.mark.parametrize("model, overrides, channel, parity", [
    ("gaussian", ["codec=sparse-sum", "codec.channel.atoms=256", "codec.channel.sparse_m=4", "codec.channel.chunk_bits=6",
                  "codec.channel.padding_bits=0"], "sparse-sum", "project"),
    ("tiny-sd15", ["parity=reference", "codec.channel.chunk_bits=6", "codec.channel.padding_bits=0"], "pfr", "reference"),
], ids=["sparse-sum", "parity-reference"])
def test_decompress_loads_the_backbone_once(tmp_path: Path, count_loads, model, overrides, channel, parity) -> None:
    """A sparse-sum file and a parity=reference file decode through pipelines.decompress with no
    option, with one backbone load, to the encoder's reconstruction."""
    from pipelines.compress import compress
    from pipelines.decompress import decompress

    png = write_png(tmp_path / "in.png")
    f, rep, dec = tmp_path / "x.diffc", tmp_path / "rep.png", tmp_path / "dec.png"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        compress(compose("compress", overrides=[f"model={model}", "codec.schedule=geom-6", f"input={png}",
                                                f"output={f}", f"recon_output={rep}", "progress=false", "timestep=1", *overrides]))
        assert count_loads == [model]
        decompress(compose("decompress", overrides=[f"input={f}", f"output={dec}", "progress=false"]))
    header, _ = fmt.read(f.read_bytes())
    assert (header.channel, header.parity) == (channel, parity)
    assert count_loads == [model, model]  # one load to encode, one to decode
    assert dec.read_bytes() == rep.read_bytes()


def test_the_parity_in_the_header_is_what_the_decoder_loads(tmp_path: Path, gaussian_backbone) -> None:
    """A file whose parity byte was changed (CRC recomputed) loads the other settings and is refused
    by its fingerprint in one line (tiny-sd15's timestep labels differ between the settings)."""
    from pipelines.common import build_codec, compose
    from pipelines.decompress import load_codec
    from omegaconf import OmegaConf

    codec = build_codec(compose("compress", ["model=tiny-sd15", "parity=reference", "codec.schedule=geom-6"]))
    data = codec.encode(torch.rand(3, 16, 16)).points[-1].data
    header, payload = fmt.read(data)
    cfg = OmegaConf.create({"input": "x.diffc", "parity": None, "options": {}, "deterministic": True})
    assert load_codec(header, cfg).fingerprint() == header.fingerprint
    from pipelines.common import PipelineError
    with pytest.raises(PipelineError, match="project settings"):
        load_codec(replace(header, parity="project"), cfg)


def test_forged_size_and_work_are_refused_before_allocation(gaussian_backbone) -> None:
    """max_pixels (default 2^24) is checked from the header; a spec whose decode would materialise
    more than MAX_STEP_ENTRIES floats per step is refused before the chain starts."""
    codec = DiffcCodec(gaussian_backbone, CodecParams("geom-6", channel=PfrSpec(chunk_bits=4, padding_bits=0)))
    good = codec.encode(torch.rand(3, 16, 16)).points[-1].data
    header, payload = fmt.read(good)

    big = fmt.write(replace(header, width=8192, height=8192), payload)
    with pytest.raises(fmt.TooLarge, match="8192x8192.*max_pixels=16777216"):
        codec.decode(big)
    turbo = CodecParams("geom-6", channel=TurboDdcmSpec(codebook_bits=12, atoms=4096))
    with pytest.raises(fmt.TooLarge, match="floats per step"):
        DiffcCodec(gaussian_backbone, turbo).encode(torch.zeros(3, 1, 1).expand(3, 4096, 4096))  # no pixel allocated


def test_a_garbage_payload_is_refused_before_the_model_runs(gaussian_backbone, monkeypatch) -> None:
    """The decoder reads a step's symbols before its prior (``diffc.chain.Step``): a payload the
    range decoder refuses costs no network call, whatever size the header claims."""
    for params in (CodecParams("geom-6", channel=PfrSpec(chunk_bits=4, padding_bits=0)),
                   CodecParams("geom-6", channel=DdcmSpec(codebook_bits=6))):
        codec = DiffcCodec(gaussian_backbone, params)
        header, _ = fmt.read(codec.encode(torch.rand(3, 16, 16)).points[-1].data)
        forged = fmt.write(replace(header, width=4096, height=4096), b"\xff" * 8)
        calls = []
        monkeypatch.setattr(type(gaussian_backbone), "predict_x0", lambda self, *a, **k: calls.append(1))
        with pytest.raises(fmt.CorruptFile, match="payload does not decode at step 1"):
            codec.decode(forged)
        monkeypatch.undo()
        assert calls == []


@pytest.mark.slow
def test_compiled_search_writes_the_same_files(gaussian_backbone) -> None:
    """codec.search.compile=true (``Search(compile=True)``: torch.compile of the search kernels) writes the
    eager search's files byte for byte, for i.i.d. and sparse-sum candidates (about a minute of
    compilation on a 2-core CPU)."""
    from diffc.plugins import Search

    img = torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(1))
    for channel in (PfrSpec(6, 1), SparseSumSpec(6, 1, atoms=64, sparse_m=4)):
        params = CodecParams("geom-6", channel=channel)
        eager = DiffcCodec(gaussian_backbone, params).encode(img)
        compiled = DiffcCodec(gaussian_backbone, params, search=Search(compile=True)).encode(img)
        assert [p.data for p in compiled.points] == [p.data for p in eager.points]


def test_the_largest_candidate_count_is_coded() -> None:
    """2^23 candidates per chunk (MAX_CANDIDATE_BITS) range-code; 2^24 cannot (the index model's
    24-bit probabilities), so it is refused as a parameter."""
    from diffc.rcc.spec import MAX_CANDIDATE_BITS
    from diffc.rcc.entropy import StepDecoder, StepEncoder, StepSymbols

    k = 1 << MAX_CANDIDATE_BITS
    enc = StepEncoder(k, 16, 100, 0)
    enc.push(StepSymbols(2, np.array([0, k - 1], dtype=np.int32)))
    data, _ = enc.seal()
    dec = StepDecoder(data, k, 16, 0)
    assert dec.next_count(100) == 2 and dec.next_indices(2).tolist() == [0, k - 1]
    assert PfrSpec(16, 7).num_candidates == k
    with pytest.raises(ValueError, match="<= 23"):
        PfrSpec(16, 8)
