"""The backbone protocol: what a diffusion model must provide to become a DiffC codec.

A backbone owns (1) an autoencoder between images and latents x0 (identity for the Gaussian
backbone), (2) a noise schedule in the VP view, (3) a network and its prediction type, and
(4) optional conditioning (text). The codec never touches the network directly: it calls
``predict_x0(x_t, t, cond)``, which runs the network and converts its output through
``diffc.prediction`` (one conversion layer for every prediction type).

Adapters implement the abstract methods and register a factory (``register_backbone``); see
``diffc.backbones.gaussian`` (analytic), ``diffc.backbones.diffusers_common`` (what every
diffusers pipeline shares) and one module per model family in ``diffc.backbones``.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, Callable

import torch

from .prediction import network_input, x0_from_output
from .schedule import NoiseSchedule


class Backbone(ABC):
    """A pretrained diffusion model seen as a DiffC backbone.

    Units: images are float tensors [3, H, W] in [0, 1]; latents are float32 tensors [C, h, w]
    already multiplied by the VAE scaling factor (and shifted, where the backbone defines a shift),
    i.e. the x0 of the diffusion process.

    Determinism contract (``diffc.determinism``): ``predict_x0``, ``encode`` and ``decode`` must be
    deterministic functions of their inputs on one platform (same device type, dtype, library
    versions, thread count, deterministic kernels: then files decode bit for bit); elsewhere they
    may differ by rounding (bounded drift). Nothing the decoder uses to read the stream may depend
    on their outputs: ``kl_weights`` is a function of the shape and timesteps only, and
    ``config`` (the fingerprint) names the network's function, not its dtype or device.
    """

    #: registry name (conf/model/NAME.yaml), written into the .diffc header
    name: str
    #: 'epsilon' | 'sample' | 'v_prediction' | 'flow'
    prediction_type: str
    #: images are padded (replicate) to a multiple of this before encoding, cropped after decoding
    size_multiple: int = 8
    #: smallest padded side (pixels) the networks accept; 0 = ``size_multiple``. Smaller images
    #: are padded up to it (``padded_size``), so a tiny image never reaches a network it breaks.
    min_side: int = 0
    schedule: NoiseSchedule
    device: torch.device = torch.device("cpu")
    #: guidance scale of the encoder's chain (a backbone option, part of ``config``); a decoder may
    #: reconstruct with another (``predict_x0(guidance=...)``, ``CodecParams.recon_guidance``)
    guidance: float = 1.0

    # ---- autoencoder --------------------------------------------------------------------------
    @abstractmethod
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image [3, H, W] in [0, 1] (H, W multiples of ``size_multiple``) -> latent x0 [C, h, w]."""

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent x0 [C, h, w] -> image [3, H, W] in [0, 1] (clamped)."""

    # ---- conditioning -------------------------------------------------------------------------
    def condition(self, caption: str | None) -> Any:
        """Conditioning for the network (text embeddings...), computed once per image."""
        return None

    # ---- network ------------------------------------------------------------------------------
    @abstractmethod
    def network(self, model_input: torch.Tensor, t: int, cond: Any) -> torch.Tensor:
        """Raw network output for one latent [C, h, w] at integer timestep t (0 <= t < T).

        ``model_input`` is what ``diffc.prediction.network_input`` gives for the prediction type.
        """

    def guided_network(self, model_input: torch.Tensor, t: int, cond: Any, guidance: float) -> torch.Tensor:
        """Network output under guidance scale ``guidance``. The default ignores the scale
        (unconditional and analytic backbones); text-conditioned UNets apply classifier-free
        guidance, Flux passes it to its guidance embedding (see the adapters)."""
        return self.network(model_input, t, cond)

    def network_timestep(self, t: int) -> int:
        """Timestep at which the network is evaluated for chain timestep t (T -> T-1)."""
        return min(t, self.schedule.num_train_timesteps - 1)

    @torch.no_grad()
    def predict_x0(self, x_t: torch.Tensor, t: int, cond: Any = None, guidance: float | None = None) -> torch.Tensor:
        """E[x0 | x_t] as the model sees it, in latent units (float32, shape of x_t), under guidance
        scale ``guidance`` (None = the backbone's ``guidance``, the encoder's)."""
        tn = self.network_timestep(t)
        a, s = self.schedule.a_s(tn)
        inp = network_input(x_t, a, s, self.prediction_type)
        out = self.guided_network(inp, tn, cond, self.guidance if guidance is None else guidance).to(x_t.dtype)
        return x0_from_output(out, x_t, a, s, self.prediction_type)

    def kl_weights(self, shape: tuple[int, ...], t: int, t_prev: int) -> torch.Tensor | None:
        """Relative expected KL per latent entry for step t -> t_prev (a tensor of ``shape``), or None.

        Used to balance the decoder-side chunk plan (chunks of equal *expected* KL). None = uniform.
        A function of the shape and the timesteps only, never of a state or a model output: the
        decoder's plan must not depend on floating-point rounding (docs/design.md §1).
        """
        return None

    # ---- identity -----------------------------------------------------------------------------
    @abstractmethod
    def config(self) -> dict:
        """JSON-able description of everything that changes the network's function (architecture,
        weights id/revision, schedule, options). Hashed into the file fingerprint. Not the device or
        dtype: those change outputs by rounding only, which the determinism contract allows
        (``diffc.determinism``; the header records them as provenance)."""

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) an image of ``height`` x ``width`` is padded to before encoding (and the decoder
        rebuilds from the header): at least ``min_side``, rounded up to ``size_multiple``."""
        up = lambda v: max(v, self.min_side) + (-max(v, self.min_side) % self.size_multiple)
        return up(height), up(width)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of the latent of a (padded) image of this size."""
        img = torch.zeros(3, height, width, device=self.device)
        return tuple(self.encode(img).shape)


def fingerprint(obj: dict) -> bytes:
    """4-byte fingerprint of a JSON-able dict (canonical JSON, sha256)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).digest()[:4]


# ---- registry -----------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., Backbone]] = {}
#: the shipped backbones' ids in a .diffc header (``diffc.format``: 5 bits, 1..31; a backbone without
#: an id is written by name). Part of the format: an id is never reused for another backbone.
BACKBONE_IDS = {"gaussian": 1, "sd15": 2, "sd21": 3, "sdxl": 4, "flux-dev": 5, "sd35-medium": 6, "ddpm-church": 7,
                "tiny-sd15": 8, "tiny-sd21": 9, "tiny-sdxl": 10, "tiny-flux": 11, "tiny-sd35-medium": 12,
                "tiny-ddpm": 13}


def register_backbone(*names: str):
    """Decorator: register a factory ``f(**options) -> Backbone`` under one or more names."""

    def deco(factory):
        for n in names:
            _REGISTRY[n] = factory
        return factory

    return deco


def registered_backbones() -> list[str]:
    """Names of every registered backbone (the built-in adapters included), sorted."""
    from . import backbones  # noqa: F401  (registers the built-in adapters)

    return sorted(_REGISTRY)


def load_backbone(name: str, **options: Any) -> Backbone:
    """Build the backbone registered as ``name`` (options come from conf/model/NAME.yaml)."""
    if name not in registered_backbones():
        raise KeyError(f"unknown backbone {name!r}; available: {', '.join(registered_backbones())}")
    return _REGISTRY[name](**options)
