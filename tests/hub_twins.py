"""Tiny random-weight twins of the shipped real models, in their real diffusers layout, written into a
Hugging Face hub cache: what a user's machine holds after ``hf download HUB_ID``.

The real adapters (``diffc/backbones/*.py`` ``from_pretrained``) then load them by hub id, with no
path override, exactly as they load the real weights: the same component classes (UNet, VAE,
transformers, CLIP / T5 text encoders), real tokenizer classes (CLIPTokenizer from vocab.json +
merges.txt, T5TokenizerFast from a tokenizers-made tokenizer.json), the real scheduler classes'
configs, ``model_index.json`` from the real pipeline class. Only the sizes are tiny: the
architectures are the tiny twins' (``TINY_*`` in diffc/backbones/*.py), so a 64x64 image codes in
seconds on a CPU.

    build_hub_cache(root, ["sd15", "sdxl"])  # -> {hub_id: revision}; then HF_HUB_CACHE=root

Hub ids come from conf/model/NAME.yaml (``hub_id``, and sdxl's ``refiner_hub_id`` / the reference
parity's ``vae_hub_id``): the cache follows the configs. Layout, as huggingface_hub writes it:
``models--ORG--NAME/refs/main`` (the revision), ``snapshots/REV/<file>`` (relative symlinks to)
``blobs/<sha256>``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from pipelines.common import model_config, plain

#: the shipped real model configs (conf/model/NAME.yaml) this module can twin
REAL_MODELS = ("sd15", "sd21", "sdxl", "flux-dev", "sd35-medium", "ddpm-church")
CLIP_MAX_LENGTH = 77  # the real CLIP tokenizers' model_max_length


# ---- tokenizers ---------------------------------------------------------------------------------
def _clip_tokenizer(dest: Path, pad_token: str = "<|endoftext|>") -> Any:
    """A tiny byte-level BPE CLIP tokenizer written as the real repos ship it (vocab.json,
    merges.txt, tokenizer_config.json, special_tokens_map.json; no tokenizer.json), then loaded
    back with CLIPTokenizer. Vocabulary: the 256 byte symbols, their word-final ``</w>`` forms, a
    few merges and the two special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    merges = [("t", "h"), ("th", "e</w>"), ("a", "t</w>"), ("c", "at</w>")]
    symbols = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols))}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    dest.mkdir(parents=True)
    (dest / "vocab.json").write_text(json.dumps(vocab))
    (dest / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    (dest / "special_tokens_map.json").write_text(json.dumps(special))
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_MAX_LENGTH, "do_lower_case": True,
         "add_prefix_space": False, "errors": "replace", **special}))
    return CLIPTokenizer.from_pretrained(dest)


def _t5_tokenizer(dest: Path) -> Any:
    """A tiny Unigram T5 tokenizer: tokenizer.json made with the ``tokenizers`` library (T5's
    normalizer-free Metaspace pre-tokenizer, ``</s>`` appended), loaded back with T5TokenizerFast."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + [f"\u2581{w}" for w in ("a", "the", "cat", "photo", "of")]
    pieces += list("abcdefghijklmnopqrstuvwxyz")
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    dest.mkdir(parents=True)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "eos_token": "</s>", "unk_token": "<unk>",
         "pad_token": "<pad>", "extra_ids": 0}))
    return T5TokenizerFast.from_pretrained(dest)


# ---- text encoders ------------------------------------------------------------------------------
def _clip_text(tokenizer: Any, hidden: int, projection: int | None = None) -> torch.nn.Module:
    """CLIPTextModel (``projection`` None) or CLIPTextModelWithProjection, 2 layers, of this width."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH,
                         projection_dim=projection or hidden, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModel if projection is None else CLIPTextModelWithProjection)(cfg)


def _t5_text(tokenizer: Any, d_model: int) -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model,
                                   num_layers=1, num_heads=2, feed_forward_proj="gated-gelu",
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))


# ---- pipelines, one per real model ----------------------------------------------------------------
#: FLUX.1-dev and SD 3.5 ship their big transformer / T5 weights in shards (``*.safetensors.index.json``):
#: the twins shard every component above this size, so the sharded loading path runs too
SHARDED = "30KB"


def _save(pipe: Any, dest: Path, tmp: Path, max_shard_size: str | None = None) -> None:
    """``pipe.save_pretrained(dest)`` (model_index.json and the component folders), then the
    tokenizer folders as written in ``tmp`` by the ``_*_tokenizer`` builders (save_pretrained would
    rewrite a CLIP tokenizer as tokenizer.json; the real repos ship vocab.json + merges.txt)."""
    pipe.save_pretrained(dest, max_shard_size=max_shard_size)
    for folder in tmp.iterdir():
        shutil.rmtree(dest / folder.name)
        shutil.copytree(folder, dest / folder.name)


def _sd_scheduler(name: str) -> Any:
    """The scheduler class and config each real SD repo ships (PNDM for 1.5, DDIM + v for 2.1,
    Euler for XL and its refiner); the adapters read its DDPM betas and prediction type."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if name == "sd15":
        return PNDMScheduler(**betas, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    if name == "sd21":
        return DDIMScheduler(**betas, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
                             steps_offset=1)
    return EulerDiscreteScheduler(**betas, prediction_type="epsilon", steps_offset=1, timestep_spacing="leading")


def _sd(name: str, dest: Path, tmp: Path) -> None:
    """SD 1.5 / 2.1: StableDiffusionPipeline (unet, vae, text_encoder, tokenizer, scheduler)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    from diffc.backbones.stable_diffusion import TINY_SPECS, TINY_VAE

    spec = TINY_SPECS[f"tiny-{name}"]
    tok = _clip_tokenizer(tmp / "tokenizer", pad_token="<|endoftext|>" if name == "sd15" else "!")
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**TINY_VAE), text_encoder=_clip_text(tok, spec.unet["cross_attention_dim"]),
        tokenizer=tok, unet=UNet2DConditionModel(**spec.unet), scheduler=_sd_scheduler(name),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    _save(pipe, dest, tmp)


def _sdxl(dest: Path, tmp: Path) -> None:
    """SDXL base: StableDiffusionXLPipeline (CLIP-L-like + bigG-like encoders, text_time UNet)."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel

    from diffc.backbones.stable_diffusion import TINY_SPECS, TINY_VAE

    spec = TINY_SPECS["tiny-sdxl"]
    (dim_l, _), (dim_g, pooled) = spec.text
    tok, tok2 = _clip_tokenizer(tmp / "tokenizer"), _clip_tokenizer(tmp / "tokenizer_2", pad_token="!")
    torch.manual_seed(0)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**TINY_VAE), text_encoder=_clip_text(tok, dim_l),
        text_encoder_2=_clip_text(tok2, dim_g, pooled), tokenizer=tok, tokenizer_2=tok2,
        unet=UNet2DConditionModel(**spec.unet), scheduler=_sd_scheduler("sdxl"))
    _save(pipe, dest, tmp)


def _sdxl_refiner(dest: Path, tmp: Path) -> None:
    """SDXL refiner: StableDiffusionXLImg2ImgPipeline with the bigG-like encoder only."""
    from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    from diffc.backbones.stable_diffusion import TINY_SPECS, TINY_VAE

    spec = TINY_SPECS["tiny-sdxl"]
    _, (dim_g, pooled) = spec.text
    tok2 = _clip_tokenizer(tmp / "tokenizer_2", pad_token="!")
    torch.manual_seed(1)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=AutoencoderKL(**TINY_VAE), text_encoder=None, text_encoder_2=_clip_text(tok2, dim_g, pooled),
        tokenizer=None, tokenizer_2=tok2, unet=UNet2DConditionModel(**spec.refiner_unet),
        scheduler=_sd_scheduler("sdxl"), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    _save(pipe, dest, tmp)


def _sdxl_vae(dest: Path, tmp: Path) -> None:
    """A stand-alone VAE repo (files at the root), as madebyollin/sdxl-vae-fp16-fix."""
    from diffusers import AutoencoderKL

    from diffc.backbones.stable_diffusion import TINY_VAE

    torch.manual_seed(2)
    AutoencoderKL(**TINY_VAE).save_pretrained(dest)


def _flux(dest: Path, tmp: Path) -> None:
    """FLUX.1-dev: FluxPipeline (transformer, 16-ch VAE, CLIP-L-like + T5-like encoders)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from diffc.backbones.flux import FLUX_SCHEDULER, TINY_FLUX_VAE, TINY_TRANSFORMER

    tok, tok2 = _clip_tokenizer(tmp / "tokenizer"), _t5_tokenizer(tmp / "tokenizer_2")
    torch.manual_seed(0)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=AutoencoderKL(**TINY_FLUX_VAE),
        text_encoder=_clip_text(tok, TINY_TRANSFORMER["pooled_projection_dim"]), tokenizer=tok,
        text_encoder_2=_t5_text(tok2, TINY_TRANSFORMER["joint_attention_dim"]), tokenizer_2=tok2,
        transformer=FluxTransformer2DModel(**TINY_TRANSFORMER))
    _save(pipe, dest, tmp, SHARDED)


def _sd35(dest: Path, tmp: Path) -> None:
    """SD 3.5 Medium: StableDiffusion3Pipeline (MMDiT-X, two projected CLIPs, T5)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from diffc.backbones.sd3 import SD35_SCHEDULER, TINY_SD3_VAE, TINY_TEXT, TINY_TRANSFORMER

    (d1, p1), (d2, p2), (d3, _) = TINY_TEXT
    tok, tok2, tok3 = (_clip_tokenizer(tmp / "tokenizer"), _clip_tokenizer(tmp / "tokenizer_2", pad_token="!"),
                       _t5_tokenizer(tmp / "tokenizer_3"))
    torch.manual_seed(0)
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**TINY_TRANSFORMER),
        scheduler=FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER), vae=AutoencoderKL(**TINY_SD3_VAE),
        text_encoder=_clip_text(tok, d1, p1), tokenizer=tok, text_encoder_2=_clip_text(tok2, d2, p2),
        tokenizer_2=tok2, text_encoder_3=_t5_text(tok3, d3), tokenizer_3=tok3)
    _save(pipe, dest, tmp, SHARDED)


def _ddpm(dest: Path, tmp: Path) -> None:
    """google/ddpm-church-256's layout: UNet2DModel and scheduler files flat at the repository root,
    PyTorch .bin weights (no safetensors), model_index.json of DDPMPipeline."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from diffc.backbones.ddpm import DDPM_CHURCH_SCHEDULER, TINY_UNET

    torch.manual_seed(0)
    unet = UNet2DModel(**TINY_UNET)
    unet.save_pretrained(dest, safe_serialization=False)
    DDPMScheduler(**DDPM_CHURCH_SCHEDULER).save_pretrained(dest)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**DDPM_CHURCH_SCHEDULER)).save_config(dest)


def repos(name: str) -> dict[str, Callable[[Path, Path], None]]:
    """The hub repositories model ``name``'s config loads (hub id -> builder(dest, scratch)): its
    ``hub_id``; for sdxl also ``refiner_hub_id`` and the reference parity's ``vae_hub_id``."""
    project, reference = (plain(model_config(name, p)["options"]) for p in ("project", "reference"))
    builders: dict[str, Callable[[Path, Path], None]] = {
        "sd15": lambda d, t: _sd("sd15", d, t), "sd21": lambda d, t: _sd("sd21", d, t), "sdxl": _sdxl,
        "flux-dev": _flux, "sd35-medium": _sd35, "ddpm-church": _ddpm}
    out = {project["hub_id"]: builders[name]}
    if name == "sdxl":
        out[project["refiner_hub_id"]] = _sdxl_refiner
        out[reference["vae_hub_id"]] = _sdxl_vae
    return out


def build_pipeline(name: str, dest: Path) -> None:
    """Model ``name``'s main repository (its ``hub_id``) as a local diffusers-format folder (what
    ``model.options.path`` points at); ``dest`` must not exist."""
    hub_id = plain(model_config(name)["options"])["hub_id"]
    build_repo(name, hub_id, dest)


def build_repo(name: str, hub_id: str, dest: Path) -> None:
    """One of ``repos(name)`` (e.g. sdxl's refiner) as a local folder at ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        repos(name)[hub_id](Path(dest), Path(tmp))


# ---- the hub cache layout -------------------------------------------------------------------------
def revision_of(hub_id: str) -> str:
    """A fixed 40-hex commit id per repository (what refs/main holds)."""
    return hashlib.sha1(hub_id.encode()).hexdigest()


def install_in_cache(root: Path, hub_id: str, folder: Path) -> str:
    """Put ``folder``'s files into the hub cache ``root`` as huggingface_hub does: content-addressed
    blobs, a snapshot of relative symlinks, refs/main -> the revision. Returns the revision."""
    repo = root / f"models--{hub_id.replace('/', '--')}"
    rev = revision_of(hub_id)
    snapshot = repo / "snapshots" / rev
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return rev


def build_hub_cache(root: Path, names: list[str] | tuple[str, ...] = REAL_MODELS) -> dict[str, str]:
    """Write the tiny twins of models ``names`` (conf/model/NAME.yaml) into the hub cache directory
    ``root`` (use it as HF_HUB_CACHE). Returns {hub_id: revision} of every repository written."""
    root = Path(root)
    written: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for hub_id, build in repos(name).items():
                if hub_id in written:
                    continue
                folder, scratch = Path(tmp) / f"{len(written)}", Path(tmp) / f"{len(written)}-scratch"
                build(folder, scratch)
                written[hub_id] = install_in_cache(root, hub_id, folder)
                shutil.rmtree(folder)
    return written
