"""Stable Diffusion 3.5 Medium backbone (and its tiny random-weight twin): an MMDiT rectified-flow transformer.

- Network: ``SD3Transformer2DModel`` (MMDiT-X for 3.5: dual-attention layers, RMS qk-norm). It takes the
  latent [16, h, w] itself (2x2 patches and position embeddings are inside the model) and returns the
  velocity v = eps - x0 [16, h, w]; its timestep input is 1000 sigma (StableDiffusion3Pipeline passes
  ``scheduler.timesteps`` = sigma T). Images are padded to multiples of 16 (VAE 8x, then 2x2 patches).
- Schedule: ``FlowMatchEulerDiscreteScheduler`` with the static shift of the checkpoint's scheduler
  config (3.0 for SD 3.5 Medium), via ``diffusers_common.FlowMatchingBackbone``; ``shift`` overrides it.
- Text, as ``StableDiffusion3Pipeline.encode_prompt`` (no CFG): CLIP-L and OpenCLIP-bigG
  (``CLIPTextModelWithProjection``: penultimate states, projected pooled vectors) and T5-XXL
  (``max_sequence_length`` tokens, 256). States: CLIP-L ++ bigG on the feature axis, zero-padded to
  T5's width, then followed by the T5 states on the sequence axis; pooled: CLIP-L ++ bigG.
- Latents: the 16-channel VAE's, (z - shift_factor) * scaling_factor (1.5305, 0.0609 from its config).

Tiny twin ``tiny-sd35-medium``: the same classes built from small constructor args after
``torch.manual_seed(seed)`` (dual attention and qk-norm included), three seeded text stages of the
real layout (two pooled CLIP-like, one T5-like), no tokenizer, no hub.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ..backbone import register_backbone
from ..device import resolve_device
from .diffusers_common import (ClipTextStage, FlowMatchingBackbone, SeededTextStage, T5TextStage, open_weights,
                               resolve_dtype, tiny_vae_config)

#: SD 3.5 Medium's scheduler/scheduler_config.json (FlowMatchEulerDiscreteScheduler, static shift).
SD35_SCHEDULER: dict[str, Any] = dict(num_train_timesteps=1000, shift=3.0)

#: Tiny MMDiT-X: 2 joint blocks (the first with dual attention), 2 heads of 16, RMS qk-norm, 2x2 patches.
TINY_TRANSFORMER: dict[str, Any] = dict(
    sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
    pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")
#: 16-channel VAE without quant convs (as SD3's), factors like the real ones' role (latents ~ unit variance).
TINY_SD3_VAE: dict[str, Any] = tiny_vae_config(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                                               scaling_factor=3.0, shift_factor=0.05)
#: Seeded text stages (dim, pooled dim): CLIP-L-like, bigG-like (16 + 16 padded to 32), T5-like (32).
TINY_TEXT: tuple[tuple[int, int | None], ...] = ((16, 16), (16, 16), (32, None))
TINY_TEXT_SEQ_LEN = 8


@dataclass(frozen=True)
class SD3Cond:
    """Per-image conditioning: joint text states [1, 77 + L, 4096], pooled CLIP-L ++ bigG [1, 2048]."""

    hidden: torch.Tensor
    pooled: torch.Tensor


class SD3Backbone(FlowMatchingBackbone):
    """Stable Diffusion 3.x as a DiffC backbone (see the module docstring)."""

    def __init__(self, *, name: str, transformer: torch.nn.Module, vae: torch.nn.Module, text_stages: list[Any],
                 scheduler_config: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 identity: dict[str, Any], shift: float | None = None, compile: bool = False,
                 cpu_offload: bool = False):
        super().__init__(name=name, transformer=transformer, vae=vae, text_stages=text_stages,
                         scheduler_config=scheduler_config, shift=shift, compile=compile, device=device,
                         dtype=dtype, cpu_offload=cpu_offload)
        self.size_multiple = self.vae_scale * int(transformer.config.patch_size)
        self._identity_dict = {**identity, **self._flow_identity()}

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str, *, hub_id: str = "stabilityai/stable-diffusion-3.5-medium",
                        revision: str | None = None, path: str | None = None, dtype: str = "bfloat16",
                        device: str = "auto", compile: bool = False, cpu_offload: bool = False,
                        shift: float | None = None, max_sequence_length: int = 256) -> "SD3Backbone":
        """Load a diffusers-format SD3 checkpoint (transformer, vae, two CLIP encoders, T5)."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        src, dev, dt = open_weights(name, hub_id, revision, path, device, dtype)
        sched = src.load_config(FlowMatchEulerDiscreteScheduler, "scheduler")  # small: fail fast offline
        transformer = src.load(SD3Transformer2DModel, "transformer", torch_dtype=dt)
        vae = src.load(AutoencoderKL, "vae", torch_dtype=dt)
        stages: list[Any] = [
            ClipTextStage(src.load(CLIPTokenizer, f"tokenizer{sfx}"),
                          src.load(CLIPTextModelWithProjection, f"text_encoder{sfx}", dtype=dt), penultimate=True)
            for sfx in ("", "_2")]
        stages.append(T5TextStage(src.load(T5TokenizerFast, "tokenizer_3"),
                                  src.load(T5EncoderModel, "text_encoder_3", dtype=dt), max_sequence_length))
        identity = {"weights": src.identity(), "max_sequence_length": max_sequence_length}
        return cls(name=name, transformer=transformer, vae=vae, text_stages=stages, scheduler_config=sched,
                   device=dev, dtype=dt, identity=identity, shift=shift, compile=compile, cpu_offload=cpu_offload)

    @classmethod
    def tiny(cls, name: str = "tiny-sd35-medium", *, seed: int = 0, dtype: str = "float32", device: str = "auto",
             compile: bool = False, shift: float | None = None, cpu_offload: bool = False) -> "SD3Backbone":
        """Tiny random-weight twin: same classes, weights from ``seed``, seeded text embeddings
        (``dtype`` honoured on the CPU too)."""
        from diffusers import AutoencoderKL, SD3Transformer2DModel

        dev = resolve_device(device)
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**TINY_TRANSFORMER)
        vae = AutoencoderKL(**TINY_SD3_VAE)
        stages = [SeededTextStage(seed, i, TINY_TEXT_SEQ_LEN, d, p) for i, (d, p) in enumerate(TINY_TEXT)]
        identity = {"tiny": {"seed": seed, "transformer": TINY_TRANSFORMER, "vae": TINY_SD3_VAE, "text": TINY_TEXT,
                             "text_seq_len": TINY_TEXT_SEQ_LEN}}
        return cls(name=name, transformer=transformer, vae=vae, text_stages=stages, scheduler_config=SD35_SCHEDULER,
                   device=dev, dtype=resolve_dtype(dtype, dev, cpu_half=True), identity=identity, shift=shift,
                   compile=compile, cpu_offload=cpu_offload)

    # ---- conditioning -----------------------------------------------------------------------------
    def condition(self, caption: str | None) -> SD3Cond:
        """CLIP-L ++ bigG states padded to T5's width, then the T5 states; pooled CLIP-L ++ bigG."""
        *clips, t5 = self._run_text_stages(caption)
        clip = torch.cat([e.hidden for e in clips], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.hidden.shape[-1] - clip.shape[-1]))
        return SD3Cond(torch.cat([clip, t5.hidden], dim=-2), torch.cat([e.pooled for e in clips], dim=-1))

    # ---- network --------------------------------------------------------------------------------
    @torch.no_grad()
    def network(self, model_input: torch.Tensor, t: int, cond: SD3Cond | None) -> torch.Tensor:
        """Velocity v = eps - x0 for one flow-space latent [16, h, w] at chain timestep t."""
        cond = self._cond(cond)
        timestep = self.network_sigma(t) * self.schedule.num_train_timesteps
        out = self.transformer(
            hidden_states=model_input[None].to(self.device, self.dtype), encoder_hidden_states=cond.hidden,
            pooled_projections=cond.pooled,
            timestep=self._constant(("timestep", t), lambda dev, dt: torch.full((1,), timestep, device=dev, dtype=dt)),
            return_dict=False)[0]
        return out[0].float().to(model_input.device)

    def _identity(self) -> dict[str, Any]:
        return {"family": "sd3", **self._identity_dict}


register_backbone("sd35-medium")(functools.partial(SD3Backbone.from_pretrained, "sd35-medium"))
register_backbone("tiny-sd35-medium")(functools.partial(SD3Backbone.tiny, "tiny-sd35-medium"))
