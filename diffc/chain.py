"""The DiffC chain, written once: the walk down the encoding schedule that every codec, benchmark
and theory test runs (docs/design.md §1).

VP view (``diffc.schedule``): x_t = a_t x0 + s_t eps. Step k goes from t = timesteps[k-1] to
t' = timesteps[k] (t' < t). With the posterior q(x_t' | x_t, x0) = N(c0 x0 + ct x_t, var I)
(DDPM eq. 7) and the model's prior p(x_t' | x_t) = N(mu_p, var I), mu_p = c0 x0_hat + ct x_t:

    u = (mu_q - mu_p) / std = c0 (x0 - x0_hat) / std,      KL(q || p) = |u|^2 / 2 nats.

The chain computes the prior of each step (one network call) and hands the step to a ``Channel``,
which sends (encoder: knows x0, hence u) or receives (decoder: u is None) the next state x_t'.
What a channel sends, and how, is its own business: ``ExactChannel`` samples q exactly (an ideal
channel for theory and benchmarks), ``diffc.rcc.channel.PfrChannel`` is the codec's reverse-channel
coder. Everything the decoder derives (chunk plans, step keys) comes from ``Chain.plan`` and
``Chain.step_key``: functions of the seed, the step and the latent's *shape*, never of model
outputs, so rounding differences between machines cannot desynchronise a decoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator, Protocol

import torch
from tqdm.auto import tqdm

from .backbone import Backbone
from .rcc.pfr import ChunkPlan, coded_entries, make_plan
from .rcc.randomness import noise_like, stream_key
from .schedule import encoding_timesteps

LN2 = math.log(2.0)
#: labels of the seed's independent streams (``diffc.rcc.randomness.stream_key``)
STREAM_START, STREAM_PLAN, STREAM_CANDIDATES, STREAM_PRIOR = 0, 1, 2, 3


@dataclass(frozen=True)
class Step:
    """One step of the chain, t -> t_next, as both sides see it (``u`` only on the encoder's side).

    The prior (``x0_hat``, ``mu_p``: one network call, ``predict``) is computed when first read: a
    decoding channel reads the step's symbols from the payload first, so a forged payload is refused
    before the model runs. Units: latent units for tensors; ``std`` is the posterior standard
    deviation sqrt(var)."""

    k: int  # 1-based step number: the state after it is x_{timesteps[k]}
    t: int
    t_next: int
    x: torch.Tensor  # x_t
    std: float
    c0: float  # weight of x0 in the posterior mean
    ct: float  # weight of x_t in the posterior mean
    predict: Callable[[], torch.Tensor] = field(repr=False, compare=False)  # the model's E[x0 | x_t]
    u: torch.Tensor | None = None  # (mu_q - mu_p) / std; None on the decoder's side

    @cached_property
    def x0_hat(self) -> torch.Tensor:
        """The model's E[x0 | x_t] (one network call, on first use)."""
        return self.predict()

    @cached_property
    def mu_p(self) -> torch.Tensor:
        """The prior mean c0 x0_hat + ct x_t."""
        return self.c0 * self.x0_hat + self.ct * self.x

    @property
    def kl_bits(self) -> float:
        """KL(q || p) = |u|^2 / 2 nats, in bits (float64 sum). Encoder side only."""
        if self.u is None:
            raise ValueError("the decoder does not know KL(q || p): u is None")
        return float((self.u.double() ** 2).sum()) / 2 / LN2

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """x_t' = mu_p + std z for a flattened standard-normal-scale ``z`` (the state a channel sets)."""
        return self.mu_p + self.std * z.reshape(self.mu_p.shape)


class Channel(Protocol):
    """Sends one step's sample of q (encoder) or rebuilds it (decoder)."""

    def send(self, chain: "Chain", step: Step) -> torch.Tensor:
        """Encoder: x_t' for ``step`` (``step.u`` is set); record whatever must be transmitted."""

    def receive(self, chain: "Chain", step: Step) -> torch.Tensor:
        """Decoder: the same x_t' the encoder set, from what was transmitted (``step.u`` is None)."""


class Chain:
    """The encoding schedule of a backbone, its shared randomness (``seed``) and its steps."""

    def __init__(self, backbone: Backbone, schedule: str, seed: int):
        self.backbone = backbone
        self.seed = seed
        T = backbone.schedule.num_train_timesteps
        #: [T, t_1, ..., t_n]: step k goes timesteps[k-1] -> timesteps[k]
        self.timesteps: list[int] = [T] + encoding_timesteps(schedule, T)

    @property
    def n_steps(self) -> int:
        return len(self.timesteps) - 1

    def stop_step_for(self, timestep: int) -> int:
        """Number of coded steps to reach the largest schedule timestep <= ``timestep``."""
        for k, t in enumerate(self.timesteps):
            if k and t <= timestep:
                return k
        raise ValueError(f"timestep {timestep} is below the last encoding timestep {self.timesteps[-1]}")

    def start(self, shape: tuple[int, ...]) -> torch.Tensor:
        """x_T: pure noise from the shared randomness (costs no bits)."""
        return noise_like(self.seed, STREAM_START, shape, self.backbone.device)

    def step(self, x: torch.Tensor, k: int, cond: Any = None, x0: torch.Tensor | None = None) -> Step:
        """The prior of step k at state ``x`` (one network call); ``x0`` given = the encoder's side."""
        t, t_next = self.timesteps[k - 1], self.timesteps[k]
        pc = self.backbone.schedule.posterior(t, t_next)
        predict = lambda: self.backbone.predict_x0(x, t, cond)
        if x0 is None:  # the decoder's: the prior waits for the channel's first read of it
            return Step(k, t, t_next, x, pc.std, pc.c0, pc.ct, predict)
        x0_hat = predict()
        return Step(k, t, t_next, x, pc.std, pc.c0, pc.ct, lambda: x0_hat, (pc.c0 / pc.std) * (x0 - x0_hat))

    def weights(self, step: Step) -> torch.Tensor | None:
        """The backbone's ``kl_weights`` of ``step`` (shape and timesteps only; None = uniform)."""
        return self.backbone.kl_weights(tuple(step.x.shape), step.t, step.t_next)

    def coded_entries(self, step: Step, skip: float) -> torch.Tensor | None:
        """The entries ``step`` codes when the lightest ones, up to a fraction ``skip`` of its
        expected KL, are sent as a prior sample (``diffc.rcc.pfr.coded_entries``; None = all)."""
        return coded_entries(self.weights(step), skip)

    def plan(self, step: Step, n_chunks: int, coded: torch.Tensor | None = None) -> ChunkPlan:
        """The decoder-side chunk plan of ``step`` with ``n_chunks`` chunks over the entries
        ``coded`` (None = all; ``coded_entries``): a function of the seed, the step, the latent's
        shape and the backbone's ``kl_weights`` (shape and timesteps only)."""
        return make_plan(step.x.numel(), n_chunks, stream_key(self.seed, STREAM_PLAN, step.k), self.weights(step),
                         coded=coded)

    def step_key(self, k: int) -> int:
        """Stream key of step k's candidates (``diffc.rcc.randomness``)."""
        return stream_key(self.seed, STREAM_CANDIDATES, k)

    def prior_key(self, k: int) -> int:
        """Stream key of step k's prior sample: row 0, column = latent entry (the entries a plan
        leaves to the prior, ``ChunkPlan.prior``)."""
        return stream_key(self.seed, STREAM_PRIOR, k)

    @torch.no_grad()
    def run(self, channel: Channel, x: torch.Tensor, cond: Any, last: int, x0: torch.Tensor | None = None,
            first: int = 1, progress: bool = False) -> Iterator[tuple[Step, torch.Tensor]]:
        """Walk steps ``first``..``last`` from state ``x`` (= x at timesteps[first-1]); yield each
        step and the state after it. ``x0`` given: encode (``channel.send``); else decode."""
        if not 1 <= first <= last + 1 or last > self.n_steps:
            raise ValueError(f"steps {first}..{last} outside the schedule's 1..{self.n_steps}")
        desc = "encode" if x0 is not None else "decode"
        for k in tqdm(range(first, last + 1), desc=desc, unit="step", disable=not progress, leave=False):
            step = self.step(x, k, cond, x0)
            x = channel.send(self, step) if x0 is not None else channel.receive(self, step)
            yield step, x


class ExactChannel:
    """An ideal channel: x_t' drawn exactly from q = N(mu_p + std u, var I), in float64 from a
    ``torch.Generator`` (not shared randomness: nothing is transmitted, so nothing can be
    received). For theory tests and benchmarks."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def send(self, chain: Chain, step: Step) -> torch.Tensor:
        mu_q = step.mu_p.double() + step.std * step.u.double()
        noise = torch.randn(mu_q.shape, generator=self.generator, dtype=torch.float64).to(mu_q.device)
        return (mu_q + step.std * noise).to(step.mu_p.dtype)

    def receive(self, chain: Chain, step: Step) -> torch.Tensor:
        raise TypeError("ExactChannel transmits nothing: there is nothing to receive")
