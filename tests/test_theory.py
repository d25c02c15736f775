"""DiffC against its closed forms (fast version of benchmarks/gaussian_rd.py).

Gaussian backbone, source drawn from its own prior, the codec's chain (``DiffcCodec.chain``)
with *exact* sampling from q (``diffc.chain.ExactChannel``: an ideal channel, no reverse-channel
coding):
- realised KL(q||p) per step = c0^2 |x0 - x0_hat|^2 / (2 var) against E = c0^2 sum_i mmse_i(t) / (2 var);
- one-step-denoise squared error at every stop against sum_i mmse_i(t);
- the closed-form sum of KL over ever finer schedules decreases to I(x0; x_t) = 1/2 sum log(1 + a^2 lam / s^2).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffc.chain import ExactChannel
from diffc.codec import CodecParams, DiffcCodec

SOURCE_HW = (256, 128)  # 32 independent 32x32 sources (the prior is blockwise: 8x8 DCT blocks)


def expected_kl_nats(bb, shape, ts) -> list[float]:
    out = []
    for t, tp in zip(ts, ts[1:]):
        pc = bb.schedule.posterior(t, tp)
        out.append(float((pc.c0 ** 2 * bb.mmse(shape, t) / (2 * pc.var)).sum()))
    return out


def mutual_information_nats(bb, shape, t) -> float:
    a, s = bb.schedule.a_s(t)
    _, lam = bb.prior(shape)
    return float(0.5 * torch.log1p(a * a * lam / (s * s)).sum())


@pytest.fixture(scope="module")
def ideal_chain(gaussian_backbone):
    """Run the codec's chain once with the ideal channel (exact q samples): realised and expected
    KL per step, MSE per stop."""
    bb = gaussian_backbone
    codec = DiffcCodec(bb, CodecParams("linspace-20"))
    chain = codec.chain
    g = torch.Generator().manual_seed(2024)
    x0 = bb.sample_prior(*SOURCE_HW, generator=g).double()
    shape = tuple(x0.shape)
    kl, mse = [], []
    x = chain.start(shape)
    for step, x in chain.run(ExactChannel(g), x, None, chain.n_steps, x0=x0):
        kl.append(step.kl_bits * math.log(2))
        x0_rec = codec.denoise(x, step.t_next, mode="denoise")
        mse.append(float(((x0_rec.double() - x0) ** 2).sum()))
    ts = chain.timesteps
    emse = [float(bb.mmse(shape, t).sum()) for t in ts[1:]]
    return dict(ts=ts, shape=shape, kl=kl, ekl=expected_kl_nats(bb, shape, ts), mse=mse, emse=emse)


def test_realised_kl_matches_closed_form(ideal_chain) -> None:
    kl, ekl = np.array(ideal_chain["kl"]), np.array(ideal_chain["ekl"])
    per_step = kl / ekl
    assert np.all(np.abs(per_step - 1) < 0.15), per_step.round(3)
    cum = np.cumsum(kl) / np.cumsum(ekl)
    assert np.all(np.abs(cum - 1) < 0.10), cum.round(3)
    assert kl.sum() / ekl.sum() == pytest.approx(1.0, abs=0.05)
    # sanity of scale: the full chain (down to t = 1) costs thousands of bits for 32 sources
    assert 1e3 < ekl.sum() / math.log(2) < 1e6


def test_one_step_denoise_mse_matches_mmse(ideal_chain) -> None:
    ratio = np.array(ideal_chain["mse"]) / np.array(ideal_chain["emse"])
    assert np.all(np.abs(ratio - 1) < 0.15), ratio.round(3)
    assert np.all(np.abs(ratio[len(ratio) // 2:] - 1) < 0.10), ratio.round(3)
    # and the MSE really falls along the chain (from ~prior variance to ~0)
    assert ideal_chain["emse"][-1] < 1e-2 * ideal_chain["emse"][0]


def test_per_step_kl_closed_form_equals_mmse_form(gaussian_backbone) -> None:
    """First step (from pure noise, where the denoiser returns the prior mean): the closed form
    c0^2 sum(mmse) / (2 var) reduces to sum a^2 lam / (2 s^2), which is >= I(x0; x_t1)."""
    bb, shape = gaussian_backbone, (3, 8, 8)
    t0, t1 = 1000, 972
    pc = bb.schedule.posterior(t0, t1)
    assert pc.c0 == pytest.approx(bb.schedule.a_s(t1)[0]) and pc.ct == 0.0  # q(x_t1 | x_T, x0) = q(x_t1 | x0)
    _, lam = bb.prior(shape)
    a, s = bb.schedule.a_s(t1)
    kl_first = float((a * a * lam / (2 * s * s)).sum())  # KL(N(a x0, s^2) || N(a m, s^2)) averaged over x0
    assert expected_kl_nats(bb, shape, [t0, t1])[0] == pytest.approx(kl_first, rel=1e-12)
    assert kl_first >= mutual_information_nats(bb, shape, t1)  # log(1+x) <= x


@pytest.mark.parametrize("stop", [500, 200, 50, 10])
def test_sum_of_kl_decreases_to_mutual_information(gaussian_backbone, stop) -> None:
    bb, shape = gaussian_backbone, (3, 8, 8)
    info = mutual_information_nats(bb, shape, stop)
    ratios = []
    for n in (2, 5, 10, 50, 200):
        ts = sorted({1000, *(int(round(v)) for v in np.linspace(999, stop, n))}, reverse=True)
        ratios.append(sum(expected_kl_nats(bb, shape, ts)) / info)
    every = sum(expected_kl_nats(bb, shape, list(range(1000, stop - 1, -1)))) / info
    ratios.append(every)
    assert all(r >= 1.0 for r in ratios), ratios  # from above: the fixed reverse variance costs rate
    assert all(a > b for a, b in zip(ratios, ratios[1:])), ratios  # finer is cheaper
    assert every < 1.015, every  # measured 1.002-1.011 on the 1000-step grid
    assert ratios[0] > 1.2, ratios  # a 2-step schedule is far from it


def test_mutual_information_grows_as_noise_falls(gaussian_backbone) -> None:
    bb, shape = gaussian_backbone, (3, 8, 8)
    infos = [mutual_information_nats(bb, shape, t) for t in (999, 500, 100, 10, 1)]
    assert all(a < b for a, b in zip(infos, infos[1:])), infos
    assert mutual_information_nats(bb, shape, 1000) == 0.0  # pure noise start: zero bits
