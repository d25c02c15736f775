"""The codec end to end (Gaussian backbone): bit-exact round trips at every stop step,
rate accounting, progressivity, parameters from the header, fingerprint checks."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from diffc import format as fmt
from diffc.backbones.gaussian import GaussianBackbone
from diffc.chain import LN2
from diffc.rcc.spec import PfrSpec
from diffc.codec import CodecParams, DiffcCodec, params_from_header
from diffc.rate import RateTarget
from diffc.recon import Recon
from diffc.rcc.entropy import MAX_CHUNKS, StepDecoder, StepEncoder, StepSymbols, StreamCost, count_bound, step_bits

CASES = {
    # 64x64 Kodak crop, log-spaced schedule (denser at low noise), K = 2^5 (small K keeps it fast;
    # exactness does not depend on K, see test_roundtrip_paper_like_settings for K = 2^10)
    "kodak64-geom12": ("kodak64", CodecParams("geom-12", seed=0, channel=PfrSpec(chunk_bits=5, padding_bits=0), recon=Recon(mode="denoise"))),
    # odd size (77 wide x 53 high: padded to 80x56 inside, cropped back), K = 2^5
    "odd77x53-linspace8": ("kodak_odd", CodecParams("linspace-8", seed=3, channel=PfrSpec(chunk_bits=4, padding_bits=1), recon=Recon(mode="denoise"))),
    # the lightest entries (5% of each step's expected KL) sent as a prior sample, unsearched
    "kodak64-geom12-skip": ("kodak64", CodecParams("geom-12", seed=0, channel=PfrSpec(chunk_bits=5, padding_bits=0, skip_kl=0.05), recon=Recon(mode="denoise"))),
}


@dataclasses.dataclass
class Encoded:
    codec: DiffcCodec
    image: torch.Tensor
    result: object
    decoded: list


@pytest.fixture(scope="module", params=list(CASES))
def enc(request, gaussian_backbone) -> Encoded:
    fixture_name, params = CASES[request.param]
    image = request.getfixturevalue(fixture_name)
    codec = DiffcCodec(gaussian_backbone, params)
    res = codec.encode(image, stop_timesteps=codec.timesteps[1:])
    decoded = [codec.decode(p.data) for p in res.points]
    return Encoded(codec, image, res, decoded)


def _symbols(codec: DiffcCodec, data: bytes, n_dims: int, n_plan: list[int]) -> list[StepSymbols]:
    """The entropy-decoded (chunk count, parts, indices) of every step of a file; ``n_plan`` = the
    number of non-empty chunks of each step's plan (what the decoder gets from the plan)."""
    header, payload = fmt.read(data)
    p = params_from_header(header)
    dec = StepDecoder(payload, p.channel.num_candidates, p.channel.chunk_bits, p.channel.split_min)
    out = []
    for k in range(header.n_steps):
        n = dec.next_count(count_bound(n_dims))
        parts = dec.next_parts(n_plan[k], count_bound(n_dims))
        idx = dec.next_indices(int(parts.sum())).astype(np.int32)
        out.append(StepSymbols(n, idx, parts.astype(np.int32) if p.channel.split_min else None))
    return out


def encode_steps(steps: list[StepSymbols], num_candidates: int, chunk_bits: float, max_chunks: int = MAX_CHUNKS,
                 split_min: int = 0) -> tuple[bytes, StreamCost]:
    """Range-code a sequence of steps as the codec's channel does (``StepEncoder``): bytes, ideal cost."""
    enc = StepEncoder(num_candidates, chunk_bits, max_chunks, split_min)
    for st in steps:
        enc.push(st)
    return enc.seal()


def plan_chunks(res) -> list[int]:
    """Non-empty chunks of each step's plan before splitting (what the decoder derives from the plan)."""
    return [x.plan_chunks for x in res.records]


def test_one_point_per_stop_step(enc: Encoded) -> None:
    pts = enc.result.points
    n_steps = len(enc.codec.timesteps) - 1
    assert [p.step_index for p in pts] == list(range(1, n_steps + 1))
    assert [p.timestep for p in pts] == enc.codec.timesteps[1:]
    r = enc.result
    assert len(r.step_kl_bits) == len(r.records) == n_steps
    assert all(1 <= x.plan_chunks <= x.n_chunks for x in r.records)  # empty chunks are dropped
    assert all(x.plan_chunks <= x.n_indices for x in r.records)  # split chunks add indices


def test_decoder_xt_bit_identical_at_every_stop(enc: Encoded) -> None:
    for p, d in zip(enc.result.points, enc.decoded):
        assert d.timestep == p.timestep
        assert d.header.n_steps == p.step_index
        assert d.x_t.dtype == p.x_t.dtype == torch.float32
        assert torch.equal(d.x_t, p.x_t), f"x_t differs at step {p.step_index} (t={p.timestep})"


def test_decoded_image_is_what_encoder_reconstructs(enc: Encoded) -> None:
    h, w = enc.image.shape[-2:]
    for p, d in zip(enc.result.points, enc.decoded):
        expected = enc.codec.reconstruct(p.x_t, p.timestep, h, w)
        assert d.image.shape == (3, h, w)
        assert torch.equal(d.image, expected)
        assert float(d.image.min()) >= 0.0 and float(d.image.max()) <= 1.0


def test_ode_reconstruction_matches_encoder_side(enc: Encoded) -> None:
    h, w = enc.image.shape[-2:]
    p = enc.result.points[len(enc.result.points) // 2]
    d = enc.codec.decode(p.data, recon="ode", recon_steps=5)
    assert torch.equal(d.x_t, p.x_t)
    assert torch.equal(d.image, enc.codec.reconstruct(p.x_t, p.timestep, h, w, recon=Recon("ode", 5)))
    # and it is a different reconstruction from the one-step denoiser
    assert not torch.equal(d.image, enc.decoded[len(enc.result.points) // 2].image)


def test_quality_improves_with_rate(enc: Encoded) -> None:
    mse = [float(((d.image - enc.image) ** 2).mean()) for d in enc.decoded]
    psnr = [10 * math.log10(1 / m) for m in mse]
    assert 9.0 < psnr[0] < 16.0, psnr  # first point: ~0.1 bpp, about the prior mean
    assert psnr[-1] > psnr[0] + 5.0, psnr
    # bits buy quality: no rate point is worse than the one before it (0.3 dB slack)
    assert all(b > a - 0.3 for a, b in zip(psnr, psnr[1:])), psnr


def test_rate_accounting(enc: Encoded) -> None:
    h, w = enc.image.shape[-2:]
    for p in enc.result.points:
        header, payload = fmt.read(p.data)
        assert (p.width, p.height) == (w, h) == (header.width, header.height)
        assert p.bits_total == 8 * len(p.data)
        assert p.bpp == 8 * len(p.data) / (w * h)
        assert p.bits_header == 8 * fmt.header_size(header) == 8 * (len(p.data) - len(payload))
        assert p.bits_side > 0 and p.bits_payload > 0
        assert p.bits_header + p.bits_side + p.bits_payload == pytest.approx(p.bits_total, abs=1e-6)
        assert p.kl_bits == pytest.approx(sum(enc.result.step_kl_bits[: p.step_index]), rel=1e-12)
        assert p.delivered_bits == pytest.approx(sum(enc.result.step_delivered_bits[: p.step_index]), rel=1e-12)
        assert p.kl_bits > 0


def test_payload_is_the_range_coded_symbols(enc: Encoded) -> None:
    """Re-encoding the decoded symbols gives the same payload bytes; the side/payload split is the
    ideal-cost ratio; the chunk counts are the encoder's."""
    c = enc.codec
    n_dims = enc.result.points[0].x_t.numel()
    k_cands = c.params.channel.num_candidates
    for p in enc.result.points:
        header, payload = fmt.read(p.data)
        steps = _symbols(c, p.data, n_dims, plan_chunks(enc.result))
        assert [s.n_chunks for s in steps] == [x.n_chunks for x in enc.result.records][: p.step_index]
        assert [len(s.indices) for s in steps] == [x.n_indices for x in enc.result.records][: p.step_index]
        assert all(0 <= int(i) < k_cands for s in steps for i in s.indices)
        again, cost = encode_steps(steps, k_cands, c.params.channel.chunk_bits, count_bound(n_dims), c.params.channel.split_min)
        assert again == payload
        side = 8 * len(payload) * cost.side_bits / (cost.side_bits + cost.index_bits)
        assert p.bits_side == pytest.approx(side, rel=1e-12)
        # a range coder is within a few 32-bit words of the ideal code length
        assert 8 * len(payload) <= cost.side_bits + cost.index_bits + 64 + 0.01 * (cost.side_bits + cost.index_bits)


def test_chunk_count_side_info_costs_what_its_model_says() -> None:
    """100 steps of slowly varying chunk counts: the range-coded stream is within 1% + 64 bits
    of the ideal (Laplace) code length, i.e. a few bits per count, not ~24 (the 2^24-symbol
    count model used to degenerate to uniform under the coder's 24-bit quantization)."""
    counts = [20 + 5 * k + (k * 7) % 4 for k in range(100)]
    steps = [StepSymbols(n, np.zeros(n, dtype=np.int32)) for n in counts]
    data, cost = encode_steps(steps, 64, 6, max_chunks=12288)
    assert cost.side_bits / len(counts) < 8.0
    assert 8 * len(data) <= 1.01 * (cost.side_bits + cost.index_bits) + 64
    dec = StepDecoder(data, 64, 6)
    for n in counts:
        assert dec.next_count(12288) == n
        assert np.array_equal(dec.next_indices(n), np.zeros(n))
    with pytest.raises(ValueError, match="outside"):
        encode_steps([StepSymbols(5, np.zeros(5, dtype=np.int32))], 64, 6, max_chunks=4)
    # a one-entry latent: the count is always 1 and still round-trips
    data, _ = encode_steps([StepSymbols(1, np.array([3], dtype=np.int32))] * 3, 64, 6, max_chunks=1)
    dec = StepDecoder(data, 64, 6)
    assert [(dec.next_count(1), int(dec.next_indices(1)[0])) for _ in range(3)] == [(1, 3)] * 3


def test_split_side_info_round_trips() -> None:
    """Parts of split chunks (none split, all split, some, the maximum) come back exactly, and the
    stream costs about its ideal length: a few bits per step plus ~H(m / C) per chunk."""
    from diffc.rcc.pfr import MAX_PARTS
    rng = np.random.default_rng(0)
    cases = [np.ones(40), np.full(5, 3), np.where(rng.random(300) < 0.05, rng.integers(3, 9, 300), 1),
             np.array([1, MAX_PARTS, 1, 3]), np.ones(1)]
    steps = [StepSymbols(len(pt), rng.integers(0, 64, int(pt.sum())).astype(np.int32), pt.astype(np.int32))
             for pt in cases]
    data, cost = encode_steps(steps, 64, 6, max_chunks=1000, split_min=3)
    assert 8 * len(data) <= 1.01 * (cost.side_bits + cost.index_bits) + 64
    dec = StepDecoder(data, 64, 6, split_min=3)
    for st in steps:
        assert dec.next_count(1000) == st.n_chunks
        parts = dec.next_parts(st.n_chunks, 1000)
        assert np.array_equal(parts, st.parts)
        assert np.array_equal(dec.next_indices(int(parts.sum())), st.indices)
    # the split information alone (side bits with splitting minus the chunk count's)
    split_bits = step_bits(steps[2], steps[1], 64, 6, 3)[0] - step_bits(steps[2], steps[1], 64, 6, 0)[0]
    m = steps[2].n_split
    ideal_flags = -300 * (m / 300 * math.log2(m / 300) + (1 - m / 300) * math.log2(1 - m / 300))
    assert ideal_flags < split_bits < ideal_flags + 6 * m + 16  # + parts (<= 5.9 bits each for 3..8) + the count m
    with pytest.raises(ValueError, match="split parts"):  # 2 parts < split_min
        encode_steps([StepSymbols(2, np.zeros(3, dtype=np.int32), np.array([2, 1], dtype=np.int32))], 64, 6,
                     max_chunks=10, split_min=3)


def test_int_and_float_parameters_give_one_fingerprint(gaussian_backbone) -> None:
    """Hydra passes split_above=0 as an int; the header stores quarters: the decoder must rebuild
    the same parameters (and fingerprint) from the file."""
    p_int = CodecParams("linspace-3", channel=PfrSpec(chunk_bits=4, padding_bits=0, split_above=0), recon=Recon(mode="denoise"))
    assert p_int.channel == PfrSpec(4, 0, 0.0) and isinstance(p_int.channel.split_above, float)
    codec = DiffcCodec(gaussian_backbone, p_int)
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    data = codec.encode(img).points[-1].data
    assert params_from_header(fmt.read(data)[0]) == p_int
    assert torch.equal(DiffcCodec(gaussian_backbone).decode(data).x_t, codec.encode(img).points[-1].x_t)


def test_progressive_files_extend_each_other(enc: Encoded) -> None:
    pts = enc.result.points
    n_dims = pts[0].x_t.numel()
    assert all(a.timestep > b.timestep for a, b in zip(pts, pts[1:]))
    assert all(len(a.data) <= len(b.data) for a, b in zip(pts, pts[1:]))
    assert len(pts[-1].data) > 4 * len(pts[0].data)
    assert all(a.kl_bits < b.kl_bits for a, b in zip(pts, pts[1:]))
    last = _symbols(enc.codec, pts[-1].data, n_dims, plan_chunks(enc.result))
    for p in pts[:-1]:
        mine = _symbols(enc.codec, p.data, n_dims, plan_chunks(enc.result))
        assert len(mine) == p.step_index < len(last)
        for a, b in zip(mine, last):  # symbol-level prefix of the longest file
            assert a.n_chunks == b.n_chunks and np.array_equal(a.indices, b.indices)


def test_encode_is_deterministic_and_stop_subset_matches(enc: Encoded) -> None:
    """Asking for two stop steps gives byte-identical files to the full progressive encode."""
    c, pts = enc.codec, enc.result.points
    want = [pts[1].timestep, pts[3].timestep]
    res = c.encode(enc.image, stop_timesteps=want[::-1])
    assert [p.step_index for p in res.points] == [pts[1].step_index, pts[3].step_index]
    assert res.points[0].data == pts[1].data and res.points[1].data == pts[3].data
    assert torch.equal(res.points[1].x_t, pts[3].x_t)
    # a stop timestep between grid points maps to the next lower encoding timestep
    assert c.stop_step_for(pts[1].timestep + 1) == pts[1].step_index
    with pytest.raises(ValueError):
        c.stop_step_for(0)


def test_params_come_from_the_header(enc: Encoded, gaussian_backbone) -> None:
    """A codec built with other parameters decodes the file exactly (it uses the header's)."""
    other = DiffcCodec(gaussian_backbone, CodecParams("linspace-3", seed=enc.codec.params.seed + 11, channel=PfrSpec(chunk_bits=3, padding_bits=0), recon=Recon(mode="ode")))
    p, ref = enc.result.points[2], enc.decoded[2]
    d = other.decode(p.data)
    assert d.header.seed == enc.codec.params.seed
    assert params_from_header(d.header) == enc.codec.params
    assert d.timestep == p.timestep
    assert torch.equal(d.x_t, p.x_t)
    assert torch.equal(d.image, ref.image)  # header says recon='denoise'


def test_other_seed_decodes_to_something_else(enc: Encoded) -> None:
    """The seed matters: a file re-written with another seed in the header (fingerprint and CRC
    recomputed) decodes without error to another x_t."""
    c, p = enc.codec, enc.result.points[3]
    header, payload = fmt.read(p.data)
    forged_params = dataclasses.replace(c.params, seed=c.params.seed + 1)
    forged = fmt.write(dataclasses.replace(header, seed=forged_params.seed,
                                           fingerprint=DiffcCodec(c.backbone, forged_params).fingerprint()), payload)
    d = c.decode(forged)
    assert d.x_t.shape == p.x_t.shape
    assert float((d.x_t - p.x_t).abs().mean()) > 0.1


def test_fingerprint_mismatch_other_schedule(enc: Encoded) -> None:
    other = DiffcCodec(GaussianBackbone(beta_end=0.013), enc.codec.params)
    assert other.fingerprint() != enc.codec.fingerprint()
    with pytest.raises(fmt.FingerprintMismatch, match="fingerprint"):
        other.decode(enc.result.points[0].data)


def test_fingerprint_mismatch_forged_header(enc: Encoded) -> None:
    header, payload = fmt.read(enc.result.points[0].data)
    renamed = fmt.write(dataclasses.replace(header, backbone="sd15"), payload)  # CRC recomputed
    with pytest.raises(fmt.FingerprintMismatch, match="sd15"):
        enc.codec.decode(renamed)
    bad_fp = bytes(b ^ 0xFF for b in header.fingerprint)
    refp = fmt.write(dataclasses.replace(header, fingerprint=bad_fp), payload)
    with pytest.raises(fmt.FingerprintMismatch):
        enc.codec.decode(refp)


def test_fingerprint_ignores_decode_time_choices(gaussian_backbone) -> None:
    a = DiffcCodec(gaussian_backbone, CodecParams("geom-12", recon=Recon(mode="ode", steps=50)))
    b = DiffcCodec(gaussian_backbone, CodecParams("geom-12", recon=Recon(mode="denoise", steps=3)))
    c = DiffcCodec(gaussian_backbone, CodecParams("geom-13"))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_step_count_beyond_schedule_is_corrupt(enc: Encoded) -> None:
    header, payload = fmt.read(enc.result.points[-1].data)
    forged = fmt.write(dataclasses.replace(header, n_steps=len(enc.codec.timesteps)), payload)
    with pytest.raises(fmt.CorruptFile, match="steps"):
        enc.codec.decode(forged)


def test_bad_images_are_rejected(gaussian_backbone) -> None:
    c = DiffcCodec(gaussian_backbone, CodecParams("linspace-2", channel=PfrSpec(chunk_bits=2, padding_bits=0)))
    with pytest.raises(ValueError, match="3, H, W"):
        c.encode(torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="3, H, W"):
        c.encode(torch.zeros(16, 16, 3))


def test_codec_params_validation() -> None:
    assert CodecParams(channel=PfrSpec(chunk_bits=8, padding_bits=2)).channel.num_candidates == 1024
    for bad in (dict(chunk_bits=0), dict(chunk_bits=20, padding_bits=5), dict(padding_bits=9), dict(split_above=0.5),
                dict(split_above=2.1), dict(split_above=64.0), dict(split_above=-1.0), dict(skip_kl=-0.001),
                dict(skip_kl=0.256), dict(skip_kl=0.0105)):
        with pytest.raises(ValueError):
            PfrSpec(**bad)
    for bad in (dict(mode="magic"), dict(steps=0)):
        with pytest.raises(ValueError):
            Recon(**bad)
    for bad in (2**32, -1, True, 1.5):
        with pytest.raises(ValueError, match="seed"):
            CodecParams(seed=bad)


def test_skipped_entries_are_the_prior_sample(gaussian_backbone, kodak64) -> None:
    """skip_kl: the entries the plan leaves to the prior are x = mu_p + std z with z from the
    step's prior stream (zero bits, unsearched); the search covers the other entries only; their
    log q/p is part of ``delivered`` (-KL on average); the file decodes bit-exactly."""
    from diffc.rcc.randomness import normals

    params = CodecParams("geom-12", channel=PfrSpec(chunk_bits=5, padding_bits=0, skip_kl=0.03), recon=Recon(mode="denoise"))
    c = DiffcCodec(gaussian_backbone, params)
    x0 = gaussian_backbone.encode(kodak64)
    chain, channel = c.chain, params.channel.channel(x0.numel())
    x = chain.start(tuple(x0.shape))
    step = chain.step(x, 1, None, x0)
    x1 = channel.send(chain, step)
    coded = chain.coded_entries(step, 0.03)
    prior = torch.ones(x0.numel(), dtype=torch.bool)
    prior[coded] = False
    z = normals(chain.prior_key(1), torch.zeros(1, dtype=torch.int32), torch.nonzero(prior).flatten().to(torch.int32))
    want = (step.mu_p.flatten()[prior] + step.std * z).reshape(-1)
    assert torch.equal(x1.flatten()[prior], want)
    rec = channel.records[0]
    assert int(rec.chunk_dims.sum()) < 0.5 * x0.numel()  # the search covers less than half the entries
    u = step.u.flatten().double()[prior]
    assert rec.prior_kl_bits == pytest.approx(float((u * u).sum()) / 2 / LN2, rel=1e-9) and rec.prior_kl_bits > 0
    assert rec.delivered_bits == pytest.approx(float(rec.chunk_delivered_bits.sum()) + rec.prior_delivered_bits)
    res = c.encode(kodak64, stop_timesteps=[c.timesteps[4]])
    assert torch.equal(c.decode(res.points[-1].data).x_t, res.points[-1].x_t)


def test_every_step_delivers_information(gaussian_backbone, kodak_odd) -> None:
    """A coarse schedule: the last step (t=140 -> 1) carries ~25 bits of KL per entry, concentrated
    on entries the decoder-side weights cannot single out (edges of a real image). Chunks that
    carry far more KL than their 2^(chunk_bits+padding) candidates can deliver are split (the
    encoder sends the parts), so every step delivers a good share of its KL."""
    c = DiffcCodec(gaussian_backbone, CodecParams("linspace-8", channel=PfrSpec(chunk_bits=4, padding_bits=1, split_above=2.0), recon=Recon(mode="denoise")))
    res = c.encode(kodak_odd, stop_timesteps=[c.timesteps[-1]])
    steps = list(zip(res.step_kl_bits, res.step_delivered_bits))
    assert all(d > 0.25 * kl for kl, d in steps), steps
    assert sum(res.step_delivered_bits) > 0.45 * sum(res.step_kl_bits)  # 0.53 measured (K = 32)
    assert [x.n_indices for x in res.records][-1] > plan_chunks(res)[-1]  # the last step split chunks


@pytest.mark.slow
def test_roundtrip_paper_like_settings(gaussian_backbone, kodak64) -> None:
    """K = 2^10 candidates per chunk, 30 steps: the last point decodes bit-exactly."""
    c = DiffcCodec(gaussian_backbone, CodecParams("geom-30", channel=PfrSpec(chunk_bits=8, padding_bits=2), recon=Recon(mode="denoise")))
    stops = [c.timesteps[10], c.timesteps[-1]]
    res = c.encode(kodak64, stop_timesteps=stops)
    for p in res.points:
        d = c.decode(p.data)
        assert torch.equal(d.x_t, p.x_t)
        assert torch.equal(d.image, c.reconstruct(p.x_t, p.timestep, 64, 64))
        assert p.bpp == 8 * len(p.data) / (64 * 64)


def test_decode_prefixes_equal_separate_decodes(enc: Encoded) -> None:
    """One chain pass over the last file yields every rate point's decode: x_t bit-identical to
    the point's own file's decode, the same image, the same header step count."""
    pts = enc.result.points
    steps = [p.step_index for p in pts]
    outs = list(enc.codec.decode_prefixes(pts[-1].data, steps))
    assert [o.header.n_steps for o in outs] == steps
    for p, one, d in zip(pts, outs, enc.decoded):
        assert one.timestep == p.timestep
        assert torch.equal(one.x_t, p.x_t) and torch.equal(one.x_t, d.x_t)
        assert torch.equal(one.image, d.image)
    # a prefix beyond the file is refused, not silently truncated
    with pytest.raises(ValueError):
        list(enc.codec.decode_prefixes(pts[0].data, [pts[0].step_index + 1]))


def _counting(codec: DiffcCodec) -> list[int]:
    """Record the timestep of every predict_x0 call of ``codec``'s backbone (on the instance)."""
    calls: list[int] = []
    backbone = codec.backbone
    original = type(backbone).predict_x0

    def counted(x, t, cond=None, guidance=None):
        calls.append(int(t))
        return original(backbone, x, t, cond, guidance)

    backbone.predict_x0 = counted
    return calls


@pytest.mark.parametrize("t, grid, expected", [
    (500, "reference", [500, *range(481, 20, -20), 10, 5]),  # grid below t, no evaluation at 0
    (10, "reference", [10, 5]),
    (300, (300, 200, 100, 0), [300, 200, 100]),
    (100, "uniform", [100, 80, 60, 40, 20, 0]),  # 5 even steps, then x0 at t = 0
])
def test_recon_grid_visits_its_timesteps(kodak64, t: int, grid, expected: list[int]) -> None:
    codec = DiffcCodec(GaussianBackbone(), CodecParams("geom-12", channel=PfrSpec(chunk_bits=5, padding_bits=0), recon=Recon(mode="ode", steps=5, grid=grid)))
    calls = _counting(codec)
    x0 = codec.backbone.encode(kodak64)
    a, s = codec.backbone.schedule.a_s(t)
    x_t = a * x0 + s * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    out = codec.denoise(x_t, t, grid=codec.params.recon.grid, steps=5)
    assert calls == expected
    assert out.shape == x0.shape
    if t == 10:  # low noise: DDIM on the reference grid lands close to the image
        assert float(((out - x0) ** 2).mean()) < 0.05 * float(x0.var())


def test_encode_takes_only_float_images_in_the_unit_range(kodak_odd: torch.Tensor, gaussian_backbone) -> None:
    """issue 28: a uint8 tensor or 0..255 floats are refused in one line naming the dtype and the range
    (never coded as a 14,801 bpp file); a [1, 3, H, W] batch of one is its image, the same file."""
    codec = DiffcCodec(gaussian_backbone, CodecParams("linspace-8", channel=PfrSpec(chunk_bits=4, padding_bits=1)))
    as_uint8 = (kodak_odd * 255).round().to(torch.uint8)
    for bad, words in [(as_uint8, ["torch.uint8", "float() / 255"]), (as_uint8.float(), ["[0, 255]", "float32"]),
                       (kodak_odd - 0.5, ["[-0.5", "divide by 255"]),
                       (torch.full_like(kodak_odd, math.nan), ["[nan, nan]"]),
                       (kodak_odd[:2], ["[3, H, W]", "(2, 53, 77)"])]:
        with pytest.raises(ValueError) as err:
            codec.encode(bad, stop_timesteps=[500])
        message = str(err.value)
        assert "\n" not in message and all(w in message for w in words), message
    one = codec.encode(kodak_odd, stop_timesteps=[500]).points[0].data
    assert codec.encode(kodak_odd[None], stop_timesteps=[500]).points[0].data == one
    assert codec.vae_roundtrip(kodak_odd[None]).shape == kodak_odd.shape


def test_the_readme_python_snippet_runs_as_written(kodak_odd: torch.Tensor, tmp_path) -> None:
    """README's Python API block, extracted and run verbatim in a folder holding a kodim23.png (here a
    77x53 Kodak crop, to keep it fast): it writes one file per stop and out.png, and out.png is the
    PNG ``pipelines.decompress`` makes of the last file."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    from pipelines.datasets import to_uint8

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "DiffcCodec" in b]
    Image.fromarray(to_uint8(kodak_odd)).save(tmp_path / "kodim23.png")
    env = os.environ | {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.splitlines()) == 3
    files = sorted(tmp_path.glob("kodim23-t*.diffc"), key=lambda f: -int(f.stem.rpartition("-t")[2]))
    assert len(files) == 3  # one per stop, named by its schedule timestep (<= the stop asked for)
    sizes = [f.stat().st_size for f in files]
    assert sizes == sorted(sizes) and sizes[0] > 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (53, 77, 3)
    r = subprocess.run([sys.executable, "-m", "pipelines.decompress", f"input={files[-1]}",
                        f"output={tmp_path / 'cli.png'}", "progress=false"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli.png").read_bytes() == (tmp_path / "out.png").read_bytes()


def test_a_bpp_target_shows_the_budget_not_the_schedule(kodak_odd: torch.Tensor, gaussian_backbone,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 28: with a bpp budget (compress bpp=B) the chain stops at an unknown step, so the progress
    bar's total is the budget in bits (ending at the file's size), not the schedule's length."""
    import diffc.chain
    import diffc.codec

    bars = []

    def recording(*args, **kwargs):
        bar = real(*args, **kwargs)
        bars.append((kwargs, bar))
        return bar

    real = diffc.codec.tqdm
    monkeypatch.setattr(diffc.codec, "tqdm", recording)
    monkeypatch.setattr(diffc.chain, "tqdm", recording)
    codec = DiffcCodec(gaussian_backbone, CodecParams("linspace-8", channel=PfrSpec(chunk_bits=4, padding_bits=1)))
    max_bits = 0.3 * 77 * 53
    res = codec.encode(kodak_odd, RateTarget(bpp=(0.3,)), progress=True)
    shown = [(kw, bar) for kw, bar in bars if not kw.get("disable")]
    assert len(shown) == 1 and shown[0][0]["unit"] == "bit" and shown[0][1].total == math.ceil(max_bits)
    assert shown[0][1].n == min(8 * len(res.points[-1].data), math.ceil(max_bits))
