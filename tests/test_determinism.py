"""The determinism contract (diffc.determinism): files encoded with N intra-op threads decode bit
for bit in another process with M threads; the header records the encoder's setting; the decoder
names in one line what differs; the deterministic mode restores what it changed."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffc import format as fmt
from diffc.codec import CodecParams, DiffcCodec
from diffc.determinism import check_provenance, deterministic, provenance_here
from diffc.rcc.spec import PfrSpec
from diffc.recon import Recon

REPO = Path(__file__).resolve().parents[1]

# One process: encode (or decode) a 128x128 image with tiny-sd15, torch threads from the command line.
SCRIPT = r"""
import sys, torch
from pipelines.common import build_codec, compose
mode, threads, path, det = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
torch.set_num_threads(threads)
codec = build_codec(compose("compress", ["model=tiny-sd15", "codec.schedule=linspace-20"]))
codec.deterministic = det
if mode == "encode":
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 128, 128, generator=g)
    p = codec.encode(img, stop_timesteps=[100]).points[-1]
    open(path, "wb").write(p.data)
    torch.save(p.x_t, path + ".xt")
else:
    d = codec.decode(open(path, "rb").read(), reconstruct=False)
    torch.save(d.x_t, path + ".dec")
    print("WARN" if d.drift_warning else "SAME")
"""


def _run(mode: str, threads: int, path: Path, det: bool = True) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(threads), str(path), "1" if det else "0"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.parametrize("enc_threads, dec_threads", [(2, 1), (1, 2)])
def test_cross_thread_decode_is_bit_exact(tmp_path: Path, enc_threads: int, dec_threads: int) -> None:
    """Encode with N threads in one process, decode with M in another: the decoder fixes the
    file's thread count around its model calls, and rebuilds the encoder's x_t bit for bit."""
    path = tmp_path / "img.diffc"
    _run("encode", enc_threads, path)
    assert fmt.read(path.read_bytes())[0].provenance.threads == enc_threads
    assert _run("decode", dec_threads, path) == "SAME"  # same setting once the file's threads are used
    assert torch.equal(torch.load(str(path) + ".xt"), torch.load(str(path) + ".dec"))


def test_provenance_is_recorded_and_compared(gaussian_backbone) -> None:
    params = CodecParams("geom-12", channel=PfrSpec(chunk_bits=5, padding_bits=0))
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    here = provenance_here("cpu", torch.float32, torch.get_num_threads())
    # by default a file records only the thread count (the decoder uses it); provenance=True the rest
    bare = DiffcCodec(gaussian_backbone, params).encode(image).points[-1]
    assert fmt.read(bare.data)[0].provenance == fmt.Provenance(threads=here.threads)
    codec = DiffcCodec(gaussian_backbone, params, provenance=True)
    p = codec.encode(image).points[-1]
    assert len(p.data) == len(bare.data) + 8 and p.x_t.equal(bare.x_t)  # 2 bytes + 6 one-byte version parts
    prov = fmt.read(p.data)[0].provenance
    assert prov == here and check_provenance(prov, here) is None
    assert prov.torch_version[0] >= 2 and prov.device_type == "cpu"
    other = fmt.Provenance("cuda", "float16", 0, (2, 5, 1), prov.diffusers_version)
    msg = check_provenance(other, here)
    assert "\n" not in msg and "device_type, dtype, threads, torch_version differ" in msg
    assert "cuda/float16" in msg and "never desynchronise" in msg
    # a file from another setting decodes (never refused for it) and says so in one line
    forged = fmt.write(dataclasses.replace(fmt.read(p.data)[0], provenance=other), fmt.read(p.data)[1])
    d = codec.decode(forged, reconstruct=False)
    threads = torch.get_num_threads()  # the file fixes none: the receiver keeps its own
    assert torch.equal(d.x_t, p.x_t) and d.drift_warning == check_provenance(other, provenance_here("cpu", torch.float32, threads))
    # the opt-out records "threads not fixed"
    loose = DiffcCodec(gaussian_backbone, codec.params, deterministic=False)
    assert fmt.read(loose.encode(torch.rand(3, 16, 16)).points[-1].data)[0].provenance.threads == 0


def test_deterministic_mode_restores_settings() -> None:
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with deterministic(1):
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cudnn.benchmark
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark) == before
    with deterministic(None):  # the opt-out changes nothing
        assert torch.get_num_threads() == before[0] and torch.are_deterministic_algorithms_enabled() == before[1]
    with pytest.raises(ValueError, match="threads"):
        with deterministic(0):
            pass


def test_fingerprint_ignores_device_and_dtype() -> None:
    """A file encoded in fp16 on a GPU must decode in fp32 on a CPU (with drift): the fingerprint
    names the network's function (weights, schedule, options), not the dtype it ran in."""
    from pipelines.common import build_codec, compose

    codec = build_codec(compose("compress", ["model=tiny-sd15"]))
    fp = codec.fingerprint()
    codec.backbone.dtype = torch.float16
    assert codec.fingerprint() == fp
    other = build_codec(compose("compress", ["model=tiny-sd15"]), {"seed": 1})  # other random weights
    assert other.fingerprint() != fp


def test_drift_is_measured_and_told_from_desync(gaussian_backbone) -> None:
    """A decoder whose model outputs differ by 1e-3 relative noise drifts (finite, far above the
    desync threshold); one whose chain is pushed off by a large error is a desync."""
    from diffc.determinism import DESYNC_PSNR_DB, desynchronised, drift_psnr_db
    from diffc.backbones.gaussian import GaussianBackbone

    params = CodecParams("geom-12", channel=PfrSpec(chunk_bits=5, padding_bits=0), recon=Recon(mode="denoise"))
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3))
    enc = DiffcCodec(gaussian_backbone, params)
    p = enc.encode(img).points[-1]
    assert enc.drift(p, enc.decode(p.data)) == (0.0, float("inf"))

    def decoder(scale: float) -> DiffcCodec:
        gen = torch.Generator().manual_seed(0)
        b = GaussianBackbone()
        net = b.network
        b.network = lambda inp, t, cond=None: (lambda o: o * (1 + scale * torch.randn(o.shape, generator=gen)))(
            net(inp, t, cond))
        return DiffcCodec(b, params)

    d = decoder(1e-3).decode(p.data)
    xt_max, db = enc.drift(p, d)
    assert 0 < xt_max < 0.1 and DESYNC_PSNR_DB + 10 < db < float("inf") and not desynchronised(db)
    _, bad = enc.drift(p, decoder(3.0).decode(p.data))
    assert desynchronised(bad)
    assert drift_psnr_db(img, img) == float("inf") and drift_psnr_db(img, img * float("nan")) == -float("inf")
    assert desynchronised(float("nan")) and not desynchronised(float("inf"))


def test_header_thread_count_is_capped_at_the_machine(gaussian_backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forged ``threads=256`` is a hint the receiver caps at its CPUs (here made 1): every model
    call of the decode runs with 1 thread, x_t is unchanged, and the provenance line names threads."""
    codec = DiffcCodec(gaussian_backbone, CodecParams("geom-12", channel=PfrSpec(chunk_bits=5, padding_bits=0)))
    p = codec.encode(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))).points[-1]
    header, payload = fmt.read(p.data)
    forged = fmt.write(dataclasses.replace(header, provenance=dataclasses.replace(header.provenance, threads=256)),
                       payload)
    monkeypatch.setattr("diffc.codec.machine_threads", lambda: 1)
    seen = []
    predict = gaussian_backbone.predict_x0
    monkeypatch.setattr(gaussian_backbone, "predict_x0", lambda *a, **k: seen.append(torch.get_num_threads()) or predict(*a, **k))
    d = codec.decode(forged, reconstruct=False)
    assert seen and set(seen) == {1}
    assert torch.equal(d.x_t, p.x_t)
    assert "256 threads" in d.drift_warning and "threads differ" in d.drift_warning


# ---- cuBLAS workspace, warn_only, and the compress-side reconstruction ---------------------------------
def test_cublas_workspace_is_set_before_torch_is_imported() -> None:
    """Importing pipelines (every entry point) puts diffc.determinism.CUBLAS_WORKSPACE in the
    environment before torch is imported; importing diffc.determinism sets it too; a deterministic
    value the user exported is kept."""
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    code = ("import os, sys; import pipelines; print(os.environ['CUBLAS_WORKSPACE_CONFIG'], 'torch' in sys.modules); "
            "from diffc import determinism as d; print(d.CUBLAS_WORKSPACE, d.ensure_cublas_workspace())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [":4096:8", "False", ":4096:8", "True"]
    code = "import os; from diffc import determinism; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    for given, kept in ((None, ":4096:8"), (":16:8", ":16:8")):
        e = env if given is None else {**env, "CUBLAS_WORKSPACE_CONFIG": given}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=e, capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == kept, out.stderr[-2000:]


def test_cuda_started_without_the_workspace_warns_once(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A process that started CUDA before the workspace was set (simulated) gets one warning line
    from deterministic(), naming the variable; deterministic() still sets the kernels."""
    from diffc import determinism

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(determinism, "_before_cuda", False)
    monkeypatch.setattr(determinism, "_warned_late", False)
    assert determinism.ensure_cublas_workspace() is False
    with caplog.at_level("WARNING", logger="diffc"):
        for _ in range(2):
            with deterministic(1):
                assert torch.are_deterministic_algorithms_enabled()
    lines = [r.getMessage() for r in caplog.records if "CUBLAS_WORKSPACE_CONFIG" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "never desync" in lines[0]


def test_no_op_of_a_tiny_twin_needs_warn_only_on_the_cpu() -> None:
    """Measured for warn_only (diffc.determinism): an encode and decode of every tiny twin with a
    caption, in deterministic mode on the CPU, runs no op without a deterministic kernel (no
    'deterministic' warning is raised)."""
    import warnings

    from test_backbones import PARAMS, TINY, make_image, tiny

    for name in TINY:
        codec = DiffcCodec(tiny(name), PARAMS)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            p = codec.encode(make_image(20, 28), stop_timesteps=[codec.timesteps[3]], caption="a kite").points[-1]
            codec.decode(p.data)
        assert not [str(w.message) for w in seen if "determinis" in str(w.message)], name


def test_compress_reconstructs_in_the_decoders_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compress's recon_output is made as decode makes its image: deterministic kernels, the file's
    thread count (here 1, while the process runs 2 outside the encode)."""
    from test_backbone_cli import H, W, in_process

    import numpy as np
    from PIL import Image

    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(img)
    seen = []
    original = DiffcCodec.reconstruct

    def recording(self, *args, **kwargs):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DiffcCodec, "reconstruct", recording)
    monkeypatch.setattr("diffc.codec.default_threads", lambda: 1)  # the encoder fixes (and records) 1 thread
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        in_process("compress", "model=tiny-sd15", f"input={img}", f"output={tmp_path / 'x.diffc'}", "timestep=500",
                   f"recon_output={tmp_path / 'r.png'}")
    finally:
        torch.set_num_threads(n)
    assert fmt.read((tmp_path / "x.diffc").read_bytes())[0].provenance.threads == 1
    assert seen == [(True, 1)]
