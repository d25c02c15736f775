"""Pixel-space DDPM backbones (Ho et al. 2020; diffusers' ``google/ddpm-*``) and their tiny twin.

No autoencoder: the latent is the image itself scaled to [-1, 1], x0 = 2 image - 1 [3, H, W]
(``DiffusersBackbone`` with ``vae=None``), so the only loss of the codec is the chain's.

- ``ddpm-church``: google/ddpm-church-256 (LSUN churches at 256 px, epsilon prediction, linear betas
  1e-4 .. 0.02 over 1000 steps, ``clip_sample``). The other google/ddpm-* checkpoints (cifar10-32,
  celebahq-256, bedroom-256, cat-256 and their ema-* variants) load by ``hub_id``, not code. The
  UNet is convolutional: it runs at any size that is a multiple of 2^(levels - 1) (32 for the 256 px
  models), even off its training resolution.
- Network: ``UNet2DModel(x_t, t)``. Learned-variance UNets (``out_channels`` = 2 x 3) return the
  variance too; the first 3 channels are the prediction.
- Schedule and prediction type come from the checkpoint's ``DDPMScheduler`` config
  (``ddpm_schedule``: ``linear``, ``scaled_linear`` or ``squaredcos_cap_v2`` betas).
- ``clip_sample`` (the scheduler config's unless overridden): the x0 estimate is clamped to
  [-clip_sample_range, clip_sample_range] in ``predict_x0``, and everything downstream uses the
  clamped x0 alone. The coding prior's mean is the DDPM posterior mean from it, c0 clip(x0_hat) + ct x_t
  (diffc/chain.py): exactly ``DDPMScheduler.step``'s with ``clip_sample``. The probability-flow
  reconstruction (``recon: ode``, diffc/codec.py) recomputes the noise from the clamped x0,
  eps = (x_t - a clip(x0_hat)) / s, which is ``DDIMScheduler.step(..., use_clipped_model_output=True)``;
  ``DDIMPipeline`` by default (``use_clipped_model_output`` unset = False) keeps the network's own eps
  next to the clamped x0, so a DDIM reconstruction of ours and the pipeline's differ wherever the
  clamp is active. Ours keeps x0 and eps consistent with x_t (x_t = a x0 + s eps), and it is a
  decoder-side function of x_t, so encoder and decoder stay bit-identical. The clamp matters at the
  start of the chain, where an epsilon model's x0 = (x_t - s eps) / a divides by a = 0.006 (linear
  betas at t = 999).

Tiny twin ``tiny-ddpm``: a 3-level ``UNet2DModel`` (one attention level) after ``torch.manual_seed(seed)``,
the church model's scheduler config (``beta_schedule`` overridable, e.g. ``squaredcos_cap_v2``).
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from ..backbone import register_backbone
from ..device import resolve_device
from .diffusers_common import DiffusersBackbone, ddpm_schedule, open_weights, resolve_dtype

#: google/ddpm-church-256's scheduler config (DDPMScheduler).
DDPM_CHURCH_SCHEDULER: dict[str, Any] = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                             num_train_timesteps=1000, clip_sample=True, variance_type="fixed_small")

#: Tiny UNet2DModel: 3 levels (16, 16, 32), attention in the middle level, pixel space (size multiple 4).
TINY_UNET: dict[str, Any] = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)


class DDPMBackbone(DiffusersBackbone):
    """A pixel-space DDPM (UNet2DModel + DDPMScheduler) as a DiffC backbone; unconditional."""

    def __init__(self, *, name: str, unet: torch.nn.Module, scheduler_config: dict[str, Any], device: torch.device,
                 dtype: torch.dtype, identity: dict[str, Any], clip_sample: bool | None = None,
                 compile: bool = False):
        schedule, self.scheduler_config = ddpm_schedule(scheduler_config)
        super().__init__(name=name, vae=None, text_stages=[], schedule=schedule, device=device, dtype=dtype,
                         prediction_type=scheduler_config.get("prediction_type", "epsilon"))
        if clip_sample is None:
            clip_sample = bool(scheduler_config.get("clip_sample", True))  # DDPMScheduler's default
        #: |x0| bound of the x0 estimate, or None
        self.clip_range = float(scheduler_config.get("clip_sample_range", 1.0)) if clip_sample else None
        self.unet = self._denoiser(unet, compile)
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1)
        self._identity_dict = identity

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str, *, hub_id: str = "google/ddpm-church-256", revision: str | None = None,
                        path: str | None = None, dtype: str = "float32", device: str = "auto",
                        compile: bool = False, clip_sample: bool | None = None) -> "DDPMBackbone":
        """Load a diffusers DDPM checkpoint: ``unet/`` + ``scheduler/`` (or the same files at the root)."""
        from diffusers import DDPMScheduler, UNet2DModel

        src, dev, dt = open_weights(name, hub_id, revision, path, device, dtype)
        sched = src.load_config(DDPMScheduler, ("scheduler", None))  # small file first: fail fast offline
        unet = src.load(UNet2DModel, ("unet", None), torch_dtype=dt)
        return cls(name=name, unet=unet, scheduler_config=sched, device=dev, dtype=dt,
                   identity={"weights": src.identity()}, clip_sample=clip_sample, compile=compile)

    @classmethod
    def tiny(cls, name: str = "tiny-ddpm", *, seed: int = 0, dtype: str = "float32", device: str = "auto",
             compile: bool = False, beta_schedule: str = "linear", clip_sample: bool | None = None) -> "DDPMBackbone":
        """Tiny random-weight twin: the church model's scheduler config (``beta_schedule`` overridable)."""
        from diffusers import UNet2DModel

        dev = resolve_device(device)
        torch.manual_seed(seed)
        unet = UNet2DModel(**TINY_UNET)
        return cls(name=name, unet=unet, scheduler_config={**DDPM_CHURCH_SCHEDULER, "beta_schedule": beta_schedule},
                   device=dev, dtype=resolve_dtype(dtype, dev, cpu_half=True),
                   identity={"tiny": {"seed": seed, "unet": TINY_UNET}},
                   clip_sample=clip_sample, compile=compile)

    # ---- network --------------------------------------------------------------------------------
    @torch.no_grad()
    def network(self, model_input: torch.Tensor, t: int, cond: Any) -> torch.Tensor:
        """UNet output (eps, x0 or v per ``prediction_type``) for one image-space latent [3, H, W]."""
        out = self.unet(model_input[None].to(self.device, self.dtype), self._timestep(t), return_dict=False)[0]
        return out[0, : model_input.shape[0]].float().to(model_input.device)

    @torch.no_grad()
    def predict_x0(self, x_t: torch.Tensor, t: int, cond: Any = None, guidance: float | None = None) -> torch.Tensor:
        """The model's x0 estimate, clamped to [-clip_range, clip_range] with ``clip_sample``."""
        x0 = super().predict_x0(x_t, t, cond, guidance)
        return x0 if self.clip_range is None else x0.clamp(-self.clip_range, self.clip_range)

    def _identity(self) -> dict[str, Any]:
        return {"family": "ddpm", "scheduler": self.scheduler_config, "clip_range": self.clip_range,
                **self._identity_dict}


register_backbone("ddpm-church")(functools.partial(DDPMBackbone.from_pretrained, "ddpm-church"))
register_backbone("tiny-ddpm")(functools.partial(DDPMBackbone.tiny, "tiny-ddpm"))
