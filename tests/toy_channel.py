"""A toy channel, the proof of the plug-in (``diffc.plugins``): each step sends the mean of u,
rounded to a uniform grid of 2^bits levels over [-LIMIT, LIMIT], and sets x_t' = mu_p + std
(mean + 0 noise) on both sides. One module and a two-line conf/codec/toy-mean.yaml (tests/conf), nothing else:
``DIFFC_CHANNELS=tests.toy_channel`` makes it findable by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import constriction
import numpy as np
import torch

from diffc.rcc.entropy import PayloadEncoder, StreamCost, payload_decoder
from diffc.plugins import ChannelSpec, StepRecord, register_channel

LIMIT = 4.0


@register_channel
@dataclass(frozen=True)
class ToyMeanSpec(ChannelSpec):
    name: ClassVar[str] = "toy-mean"
    toy_bits: int = 6

    def __post_init__(self):
        if not 1 <= self.toy_bits <= 16:
            raise ValueError(f"toy_bits must be in 1..16, got {self.toy_bits}")

    def channel(self, n_dims: int, payload: bytes | None = None, search=None) -> "ToyMeanChannel":
        return ToyMeanChannel(self, payload)


class ToyMeanChannel:
    def __init__(self, spec: ToyMeanSpec, payload: bytes | None):
        self.levels = 1 << spec.toy_bits
        self.model = constriction.stream.model.Uniform(self.levels)
        self.records: list[StepRecord] = []
        self._enc = PayloadEncoder()
        self._dec = None if payload is None else payload_decoder(payload)

    def _z(self, q: int, like: torch.Tensor) -> torch.Tensor:
        mean = (q + 0.5) / self.levels * 2 * LIMIT - LIMIT
        return torch.full((like.numel(),), mean, dtype=torch.float32, device=like.device)

    def send(self, chain, step) -> torch.Tensor:
        q = int(np.clip((float(step.u.mean()) + LIMIT) / (2 * LIMIT) * self.levels, 0, self.levels - 1))
        self._enc.encode(np.array([q], dtype=np.int32), self.model)
        self.records.append(StepRecord(step.kl_bits, 0.0))
        return step.sample(self._z(q, step.x))

    def receive(self, chain, step) -> torch.Tensor:
        q = int(self._dec.decode(self.model, 1)[0])
        self._enc.encode(np.array([q], dtype=np.int32), self.model)  # re-coded: stream() is the payload read
        return step.sample(self._z(q, step.x))

    def stream(self) -> tuple[bytes, StreamCost]:
        return self._enc.sealed(), StreamCost(0.0, 0.0)
