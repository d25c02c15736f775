"""FLUX.1-dev backbone (and its tiny random-weight twin): a rectified-flow transformer.

Flow matching (``diffusers_common.FlowMatchingBackbone``): x_sigma = (1 - sigma) x0 + sigma eps, the
transformer predicts the velocity v = eps - x0. The integer chain timestep t maps to sigma through
``NoiseSchedule.flow_matching(shift)``, and the transformer receives sigma (diffusers' Flux pipeline
passes ``timestep / 1000`` with ``timestep = 1000 sigma``).

The shift: FLUX.1-dev's scheduler config sets ``use_dynamic_shifting`` — its pipeline shifts by
exp(mu), mu linear in the number of packed image tokens (``dynamic_flow_shift``), i.e. each image
size gets its own schedule. We fix the token count at ``image_seq_len`` instead (default 1536 = a
768x512 Kodak image: latent 96x64 packed 2x2 -> 48x32 tokens; shift = 2.048,
``diffusers_common.dynamic_flow_shift``), whatever the image's size. A deliberate choice, not a
necessity: the header gives the decoder the image size before any step, so a size-dependent shift
would be decodable. One schedule per backbone keeps the chain's timesteps, the per-step KL
weights and the fingerprint independent of the image size, so rate points of images of different
sizes (a dataset sweep, Kodak's 768x512 and 512x768, DIV2K's buckets) share timesteps and compare
step by step; it departs from FluxPipeline only for images of other than ``image_seq_len`` tokens.
``image_seq_len`` is the knob (e.g. 4096 for 1024x1024 images: shift 3.16, the pipeline's), and
``shift`` fixes the shift directly (1.0 = no shift). The reference implementation uses no shift and
its own labels, sigma = (t - 1) / 1000 with the transformer told t / 1000: ``shift: 1.0,
timestep_labels: reference`` (conf/model/flux-dev.yaml under ``parity=reference``).

Latents: the 16-channel VAE latent in ``Backbone`` units is (z - shift_factor) * scaling_factor,
kept unpacked [16, h, w]; ``network`` packs 2x2 patches into tokens [h/2 * w/2, 64], builds the
image position ids (0, row, col) and zero text ids, runs the transformer and unpacks. Images are
padded to multiples of 16 (VAE 8x, then 2x2 packing).

Guidance: FLUX.1-dev is guidance-distilled; its ``guidance`` input is the CFG scale it imitates.
We default to 1.0 (= no guidance: the plain conditional model, the best density model for coding),
not the 3.5 its pipeline uses for generation; the reference passes 0. ``guided_network`` passes the
scale it is given (the encoder's ``guidance`` or the codec's ``recon_guidance``) to that input.

``vae_shift_factor: false`` reproduces a reference bug (it ignores the VAE's shift_factor: x0 =
z * scaling_factor both ways); never the default.

Text: CLIP-L pooled vector + T5-XXL states (``max_sequence_length`` tokens, 512 for dev), the
empty prompt by default. ``cpu_offload`` keeps T5/CLIP and the VAE on the CPU between their
once-per-image uses; the transformer stays on the device.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ..backbone import register_backbone
from ..device import resolve_device
from .diffusers_common import (KODAK_SEQ_LEN, ClipTextStage, FlowMatchingBackbone, SeededTextStage, T5TextStage,
                               open_weights, resolve_dtype, tiny_vae_config)

#: FLUX.1-dev's scheduler/scheduler_config.json (FlowMatchEulerDiscreteScheduler).
FLUX_SCHEDULER: dict[str, Any] = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                      max_shift=1.15, num_train_timesteps=1000, shift=3.0,
                                      use_dynamic_shifting=True)

#: Tiny twin: one double + one single block, 2 heads of 16 (rope axes 4 + 4 + 8 = 16).
TINY_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
    axes_dims_rope=(4, 4, 8))
#: 16-channel VAE with the real 8x downsampling, no quant convs (as FLUX.1's). Factors chosen like the
#: real ones (latents of natural images ~ unit variance), with a non-zero shift to exercise that path.
TINY_FLUX_VAE: dict[str, Any] = tiny_vae_config(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                                                 scaling_factor=3.0, shift_factor=-0.01)
TINY_TEXT_SEQ_LEN = 8


def pack_latent(x: torch.Tensor) -> torch.Tensor:
    """[C, h, w] -> tokens [h/2 * w/2, 4C]: 2x2 patches, row-major, channels-major within a token."""
    c, h, w = x.shape
    return x.view(c, h // 2, 2, w // 2, 2).permute(1, 3, 0, 2, 4).reshape((h // 2) * (w // 2), c * 4)


def unpack_latent(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latent`: tokens [h/2 * w/2, 4C] -> [C, h, w]."""
    c = tokens.shape[-1] // 4
    return tokens.view(h // 2, w // 2, c, 2, 2).permute(2, 0, 3, 1, 4).reshape(c, h, w)


def image_ids(h: int, w: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Position ids [h/2 * w/2, 3] of the packed tokens: (0, row, col), made on ``device``."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


@dataclass(frozen=True)
class FluxCond:
    """Per-image conditioning: T5 states [1, L, 4096], CLIP pooled [1, 768], text ids [L, 3]."""

    hidden: torch.Tensor
    pooled: torch.Tensor
    txt_ids: torch.Tensor


class FluxBackbone(FlowMatchingBackbone):
    """FLUX.1 as a DiffC backbone (see the module docstring for the math)."""

    size_multiple = 16

    def __init__(self, *, name: str, transformer: torch.nn.Module, vae: torch.nn.Module, text_stages: list[Any],
                 scheduler_config: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 identity: dict[str, Any], shift: float | None = None, image_seq_len: int = KODAK_SEQ_LEN,
                 guidance: float = 1.0, compile: bool = False, cpu_offload: bool = False,
                 timestep_labels: str = "project", vae_posterior: str = "mode",
                 vae_shift_factor: bool = True):
        super().__init__(name=name, transformer=transformer, vae=vae, text_stages=text_stages,
                         scheduler_config=scheduler_config, shift=shift, image_seq_len=image_seq_len,
                         compile=compile, device=device, dtype=dtype, cpu_offload=cpu_offload,
                         timestep_labels=timestep_labels, vae_posterior=vae_posterior, guidance=guidance)
        if not vae_shift_factor:
            self.shift_factor = 0.0  # the reference's bug, on request only (config() records it)
        self._identity_dict = {**identity, **self._flow_identity()}

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str, *, hub_id: str = "black-forest-labs/FLUX.1-dev", revision: str | None = None,
                        path: str | None = None, dtype: str = "bfloat16", device: str = "auto",
                        compile: bool = False, cpu_offload: bool = False, shift: float | None = None,
                        image_seq_len: int = KODAK_SEQ_LEN, guidance: float = 1.0,
                        max_sequence_length: int = 512, timestep_labels: str = "project",
                        vae_posterior: str = "mode", vae_shift_factor: bool = True) -> "FluxBackbone":
        """Load a diffusers-format Flux checkpoint (transformer, vae, CLIP + T5 encoders)."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        src, dev, dt = open_weights(name, hub_id, revision, path, device, dtype)
        sched = src.load_config(FlowMatchEulerDiscreteScheduler, "scheduler")  # small: fail fast
        transformer = src.load(FluxTransformer2DModel, "transformer", torch_dtype=dt)
        vae = src.load(AutoencoderKL, "vae", torch_dtype=dt)
        stages = [ClipTextStage(src.load(CLIPTokenizer, "tokenizer"), src.load(CLIPTextModel, "text_encoder", dtype=dt)),
                  T5TextStage(src.load(T5TokenizerFast, "tokenizer_2"),
                              src.load(T5EncoderModel, "text_encoder_2", dtype=dt), max_sequence_length)]
        identity = {"weights": src.identity(), "max_sequence_length": max_sequence_length}
        return cls(name=name, transformer=transformer, vae=vae, text_stages=stages, scheduler_config=sched,
                   device=dev, dtype=dt, identity=identity, shift=shift, image_seq_len=image_seq_len,
                   guidance=guidance, compile=compile, cpu_offload=cpu_offload, timestep_labels=timestep_labels,
                   vae_posterior=vae_posterior, vae_shift_factor=vae_shift_factor)

    @classmethod
    def tiny(cls, name: str = "tiny-flux", *, seed: int = 0, dtype: str = "float32", device: str = "auto",
             compile: bool = False, shift: float | None = None, image_seq_len: int = KODAK_SEQ_LEN,
             guidance: float = 1.0, timestep_labels: str = "project", vae_posterior: str = "mode",
             vae_shift_factor: bool = True, cpu_offload: bool = False) -> "FluxBackbone":
        """Tiny random-weight twin: same classes, weights from ``seed``, seeded text embeddings
        (``dtype`` honoured on the CPU too)."""
        from diffusers import AutoencoderKL, FluxTransformer2DModel

        dev = resolve_device(device)
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**TINY_TRANSFORMER)
        vae = AutoencoderKL(**TINY_FLUX_VAE)
        tt = TINY_TRANSFORMER
        stages = [SeededTextStage(seed, 0, TINY_TEXT_SEQ_LEN, tt["joint_attention_dim"], tt["pooled_projection_dim"])]
        identity = {"tiny": {"seed": seed, "transformer": TINY_TRANSFORMER, "vae": TINY_FLUX_VAE,
                             "text_seq_len": TINY_TEXT_SEQ_LEN}}
        return cls(name=name, transformer=transformer, vae=vae, text_stages=stages, scheduler_config=FLUX_SCHEDULER,
                   device=dev, dtype=resolve_dtype(dtype, dev, cpu_half=True), identity=identity, shift=shift,
                   image_seq_len=image_seq_len, guidance=guidance, compile=compile, timestep_labels=timestep_labels,
                   vae_posterior=vae_posterior, vae_shift_factor=vae_shift_factor, cpu_offload=cpu_offload)

    # ---- conditioning -----------------------------------------------------------------------------
    def condition(self, caption: str | None) -> FluxCond:
        """T5 states from the last stage, CLIP pooled vector from the first (one seeded stage for tiny)."""
        outs = self._run_text_stages(caption)
        hidden = outs[-1].hidden
        txt_ids = torch.zeros(hidden.shape[1], 3, device=self.device, dtype=self.dtype)
        return FluxCond(hidden, outs[0].pooled, txt_ids)

    # ---- network --------------------------------------------------------------------------------
    @torch.no_grad()
    def network(self, model_input: torch.Tensor, t: int, cond: FluxCond | None,
                guidance: float | None = None) -> torch.Tensor:
        """Velocity v = eps - x0 for one flow-space latent [16, h, w] at chain timestep t, with the
        guidance embedding at ``guidance`` (None = the backbone's)."""
        cond = self._cond(cond)
        _, h, w = model_input.shape
        sigma = self.network_sigma(t)
        tokens = pack_latent(model_input.to(self.device, self.dtype))[None]
        scale = self.guidance if guidance is None else guidance
        full = lambda value: lambda dev, dt: torch.full((1,), value, device=dev, dtype=dt)  # noqa: E731
        out = self.transformer(
            hidden_states=tokens, encoder_hidden_states=cond.hidden, pooled_projections=cond.pooled,
            timestep=self._constant(("sigma", t), full(sigma)),
            img_ids=self._constant(("img_ids", h, w), lambda dev, dt: image_ids(h, w, dev, dt)),
            txt_ids=cond.txt_ids,
            guidance=self._constant(("guidance", scale), full(scale)) if self.transformer.config.guidance_embeds
            else None,
            return_dict=False)[0]
        return unpack_latent(out[0].float(), h, w).to(model_input.device)

    def guided_network(self, model_input: torch.Tensor, t: int, cond: FluxCond | None, guidance: float) -> torch.Tensor:
        """The guidance-distilled transformer at guidance embedding ``guidance`` (one call)."""
        return self.network(model_input, t, cond, guidance)

    def _identity(self) -> dict[str, Any]:
        return {"family": "flux", **self._identity_dict}


register_backbone("flux-dev")(functools.partial(FluxBackbone.from_pretrained, "flux-dev"))
register_backbone("tiny-flux")(functools.partial(FluxBackbone.tiny, "tiny-flux"))
