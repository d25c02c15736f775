"""The chain and its channels: one loop for encoder and decoder, channels that plug in, rate
targets measured on real bytes, and a decoder-side plan that never depends on model outputs."""
from __future__ import annotations

import math

import pytest
import torch

from diffc import format as fmt
from diffc.chain import Chain, ExactChannel, Step
from diffc.rcc.spec import PfrSpec
from diffc.rcc.channel import PfrChannel
from diffc.codec import CodecParams, DiffcCodec
from diffc.rate import RateTarget
from diffc.recon import Recon

PARAMS = CodecParams("geom-12", channel=PfrSpec(chunk_bits=5, padding_bits=0), recon=Recon(mode="denoise"))


class PriorMeanChannel:
    """Sends nothing: x_t' = mu_p on both sides (zero bits). A channel in ten lines."""

    def send(self, chain: Chain, step: Step) -> torch.Tensor:
        return step.mu_p

    def receive(self, chain: Chain, step: Step) -> torch.Tensor:
        return step.mu_p


def test_steps_walk_the_schedule(gaussian_backbone, kodak64) -> None:
    codec = DiffcCodec(gaussian_backbone, PARAMS)
    chain = codec.chain
    x0 = gaussian_backbone.encode(kodak64)
    steps = list(chain.run(ExactChannel(torch.Generator().manual_seed(0)), chain.start(x0.shape), None,
                           chain.n_steps, x0=x0))
    assert [s.k for s, _ in steps] == list(range(1, chain.n_steps + 1)) == list(range(1, 13))
    assert [(s.t, s.t_next) for s, _ in steps] == list(zip(chain.timesteps, chain.timesteps[1:]))
    for s, _ in steps:
        pc = gaussian_backbone.schedule.posterior(s.t, s.t_next)
        assert s.std == pytest.approx(pc.std) and s.c0 == pytest.approx(pc.c0)
        # u = (mu_q - mu_p) / std with mu_q = c0 x0 + ct x_t
        mu_q = pc.c0 * x0 + pc.ct * s.x
        assert torch.allclose(s.mu_p + s.std * s.u, mu_q, atol=1e-4)
        assert s.kl_bits == pytest.approx(float((s.u.double() ** 2).sum()) / 2 / math.log(2))
    # the states are exact samples of q: x_t - a_t x0 ~ N(0, s_t^2 I) at every step
    for s, x in steps:
        a, sd = gaussian_backbone.schedule.a_s(s.t_next)
        assert float((x - a * x0).double().pow(2).mean().sqrt()) / sd == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="decoder"):
        chain.step(steps[0][0].x, 1).kl_bits  # no x0: the decoder's side knows no KL
    with pytest.raises(TypeError, match="nothing to receive"):
        next(chain.run(ExactChannel(torch.Generator()), chain.start(x0.shape), None, 1))
    with pytest.raises(ValueError, match="outside the schedule"):
        next(chain.run(PriorMeanChannel(), chain.start(x0.shape), None, chain.n_steps + 1))


def test_any_channel_runs_both_sides_identically(gaussian_backbone, kodak64) -> None:
    """The same loop encodes and decodes: with a channel that sends nothing, encoder and decoder
    walk to the same state (the prior's own sample path), which ignores x0."""
    chain = DiffcCodec(gaussian_backbone, PARAMS).chain
    x0 = gaussian_backbone.encode(kodak64)
    x_T = chain.start(x0.shape)
    *_, (_, enc) = chain.run(PriorMeanChannel(), x_T, None, 6, x0=x0)
    *_, (_, dec) = chain.run(PriorMeanChannel(), x_T, None, 6)
    assert torch.equal(enc, dec)
    *_, (_, other) = chain.run(PriorMeanChannel(), x_T, None, 6, x0=torch.zeros_like(x0))
    assert torch.equal(enc, other)


def test_resume_from_a_state(gaussian_backbone, kodak64) -> None:
    """Steps first..last from a state equal one walk from the start (progressive decoding)."""
    codec = DiffcCodec(gaussian_backbone, PARAMS)
    res = codec.encode(kodak64, stop_timesteps=[codec.timesteps[4], codec.timesteps[9]])
    p4, p9 = res.points
    _, payload = fmt.read(p9.data)
    n_dims = p9.x_t.numel()
    chain = codec.chain
    ch = PfrChannel(PARAMS.channel, n_dims, payload)
    states = [x for _, x in chain.run(ch, chain.start(p9.x_t.shape), None, 4)]
    assert torch.equal(states[-1], p4.x_t)
    *_, (_, x9) = chain.run(ch, states[-1], None, 9, first=5)
    assert torch.equal(x9, p9.x_t)


def test_a_bpp_budget_stops_at_the_first_file_over_it(gaussian_backbone, kodak64) -> None:
    codec = DiffcCodec(gaussian_backbone, PARAMS)
    full = codec.encode(kodak64, stop_timesteps=codec.timesteps[1:])
    sizes = [p.bits_total for p in full.points]
    bpp = (sizes[5] + sizes[6]) / 2 / (64 * 64)  # between the files of steps 6 and 7
    res = codec.encode(kodak64, RateTarget((codec.timesteps[3], codec.timesteps[-1]), (bpp,)))
    assert [p.step_index for p in res.points] == [3, 7]  # the stop at 3, then the first file over budget
    assert res.points[-1].bpp > bpp >= full.points[5].bpp
    assert res.by_target == {bpp: res.points[0]}  # the budget's pick: the highest-rate stop within it
    assert res.points[-1].data == full.points[6].data  # the same bytes as a full encode's step-7 file
    assert len(res.records) == 7  # the chain stopped there


def test_plan_does_not_depend_on_model_outputs(gaussian_backbone, kodak64) -> None:
    """Perturb every model output on the decoder's side by 1e-3 relative noise: the chunk plans,
    chunk counts, split parts and indices it decodes are the encoder's, and the chain stays close."""
    codec = DiffcCodec(gaussian_backbone, PARAMS)
    p = codec.encode(kodak64).points[-1]
    _, payload = fmt.read(p.data)

    class Noisy(type(gaussian_backbone)):
        def predict_x0(self, x_t, t, cond=None):
            out = super().predict_x0(x_t, t, cond)
            return out * (1 + 1e-3 * torch.randn(out.shape, generator=gen))

    gen = torch.Generator().manual_seed(7)
    noisy = Noisy()
    chain = Chain(noisy, PARAMS.schedule, PARAMS.seed)
    plans = []

    class Recording(PfrChannel):
        def receive(self, chain, step):
            x = super().receive(chain, step)
            plans.append(chain.plan(step, 3).src.clone())
            return x

    ch = Recording(PARAMS.channel, p.x_t.numel(), payload)
    *_, (_, x) = chain.run(ch, chain.start(p.x_t.shape), None, p.step_index)
    clean = Chain(gaussian_backbone, PARAMS.schedule, PARAMS.seed)
    clean_steps = [clean.step(torch.zeros_like(p.x_t), k) for k in range(1, p.step_index + 1)]
    assert all(torch.equal(a, clean.plan(s, 3).src) for a, s in zip(plans, clean_steps))
    assert not torch.equal(x, p.x_t)  # the perturbation is real...
    assert float((x - p.x_t).abs().max()) < 0.05  # ...and the decoder stays with the encoder


def test_pfr_spec_chunk_count() -> None:
    s = PfrSpec(8, 2, 2.0)
    assert (s.num_candidates, s.split_min) == (1024, 3)
    assert s.chunk_count(0.0, 100) == 1 and s.chunk_count(8.0, 100) == 1 and s.chunk_count(8.01, 100) == 2
    assert s.chunk_count(1e9, 10) == 640  # the count model's bound: 64 chunks per entry
    assert PfrSpec(8, 2, 0.0).split_min == 0
