"""Shared machinery of the diffusers-based backbones (Stable Diffusion 1.5 / 2.1 / XL, Flux).

What lives here, used by ``stable_diffusion.py`` and ``flux.py``:

- device / dtype resolution (``device: auto`` = CUDA when available; float32 forced on CPU);
- :class:`WeightsSource`: loading components by hub id or local path with ``from_pretrained``,
  turning every failure into one :class:`BackboneLoadError` that says what was looked for, where,
  and how to point ``model.options.path`` (or ``DIFFC_<NAME>_PATH``) at a local copy. Hub ids are
  tried in the local HF cache first (``local_files_only``); only when that fails is the hub asked,
  after a 3-second reachability check (``hub_offline_reason``), so an offline machine gets the
  error in seconds instead of after huggingface_hub's ~30 s of retries;
- text stages: CLIP / T5 prompt encoders for real weights, and a seeded stand-in for the tiny
  twins (no tokenizer, no hub access);
- :class:`DiffusersBackbone`: the VAE side shared by every adapter.

Latent convention (``Backbone`` units): x0 = (mode of q_VAE(z | image) - shift_factor) * scaling_factor,
with shift_factor = 0 where the VAE defines none (SD family). The image goes into the VAE as
2 * image - 1 (range [-1, 1]); decoding inverts both maps and clamps to [0, 1]. The distribution's
mode (its mean) is used, never a sample, so ``encode`` is deterministic.

Dtypes: the codec works in float32. Adapters cast inputs to the model dtype on the way in and
outputs back to float32 on the way out; returned tensors live on the device of the input tensor.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..backbone import Backbone
from ..schedule import NoiseSchedule

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


class BackboneLoadError(RuntimeError):
    """A backbone's weights (or config) could not be loaded; the message says where we looked."""


# ---- device / dtype -----------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed to torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Model dtype from its name; float32 on CPU whatever was asked (half kernels are slow or absent)."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in _DTYPES:
        resolved = _DTYPES[dtype]
    else:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return torch.float32 if device.type == "cpu" else resolved


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' | 'float16' | 'bfloat16' (for configs and headers)."""
    return str(dtype).removeprefix("torch.")


# ---- loading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsSource:
    """Where a real backbone's weights come from: a hub id, or a local diffusers-format copy of it.

    ``path`` (a directory with ``unet/``, ``vae/``, ``text_encoder/``... subfolders, as written by
    ``DiffusionPipeline.save_pretrained`` or ``huggingface-cli download``) overrides ``hub_id``.
    ``hub_id`` + ``revision`` name the weights in ``config()``; the path is only where they live.
    """

    backbone: str
    hub_id: str
    revision: str | None = None
    path: str | None = None

    @property
    def location(self) -> str:
        return self.path if self.path is not None else self.hub_id

    def identity(self) -> dict[str, Any]:
        return {"hub_id": self.hub_id, "revision": self.revision}

    def load(self, cls: Any, subfolder: str, **kwargs: Any) -> Any:
        """``cls.from_pretrained(location, subfolder=...)``; any failure -> :class:`BackboneLoadError`."""
        return self._call(cls.from_pretrained, subfolder, **kwargs)

    def load_config(self, cls: Any, subfolder: str) -> dict[str, Any]:
        """The component's config dict (e.g. the scheduler's ``scheduler_config.json``)."""
        return dict(self._call(cls.load_config, subfolder))

    def _call(self, fn: Any, subfolder: str, **kwargs: Any) -> Any:
        if self.path is not None and not os.path.isdir(self.path):
            raise BackboneLoadError(
                f"backbone {self.backbone!r}: model.options.path={self.path!r} is not a directory; "
                f"it must be a local diffusers-format copy of {self.hub_id!r} (with {subfolder}/ and the "
                "other component subfolders)")
        if self.path is not None:
            try:
                return fn(self.path, subfolder=subfolder, **kwargs)
            except Exception as e:
                raise BackboneLoadError(self.explain(subfolder, e)) from e
        kwargs["revision"] = self.revision
        # 1. The local HF cache only: no network, no retries (fast when the weights are there).
        try:
            return fn(self.hub_id, subfolder=subfolder, local_files_only=True, **kwargs)
        except Exception as e:  # diffusers/transformers/hub raise OSError, ValueError, HTTP errors...
            cache_err: BaseException = e
        # 2. Not cached: download, unless offline (huggingface_hub would retry a dead network for ~30 s).
        offline = hub_offline_reason()
        if offline is not None:
            raise BackboneLoadError(self.explain(subfolder, cache_err, offline)) from cache_err
        try:
            return fn(self.hub_id, subfolder=subfolder, **kwargs)
        except Exception as e:
            raise BackboneLoadError(self.explain(subfolder, e, "download failed")) from e

    def explain(self, subfolder: str, err: BaseException, why: str | None = None) -> str:
        """One line: what was looked for, where, and how to fix it."""
        from huggingface_hub import constants

        cause = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        env = path_env_var(self.backbone)
        if self.path is not None:
            return (f"backbone {self.backbone!r}: could not load {subfolder!r} from the local copy "
                    f"model.options.path={self.path!r} (expected a diffusers-format copy of "
                    f"{self.hub_id!r} with a {subfolder}/ subfolder). Cause: {cause}")
        rev = f" at revision {self.revision!r}" if self.revision else ""
        why = f" ({why})" if why else ""
        return (f"backbone {self.backbone!r}: could not load {subfolder!r} of model {self.hub_id!r}{rev}: "
                f"not in the Hugging Face cache {constants.HF_HUB_CACHE} and not downloadable{why}. "
                f"Either download it there (`huggingface-cli download {self.hub_id}` on a machine with "
                "access; gated models need `huggingface-cli login`), or point model.options.path at a local "
                f"diffusers-format copy, e.g. `model.options.path=/data/models/{self.hub_id.split('/')[-1]}` "
                f"(or set {env}). Cause: {cause}")


def path_env_var(backbone: str) -> str:
    """Environment variable naming a local copy of ``backbone``'s weights: sd15 -> DIFFC_SD15_PATH,
    flux-dev -> DIFFC_FLUX_DEV_PATH. Used when ``model.options.path`` is null."""
    return "DIFFC_" + "".join(c if c.isalnum() else "_" for c in backbone.upper()) + "_PATH"


def default_path(backbone: str, path: str | None) -> str | None:
    """``path`` if given, else the value of :func:`path_env_var` (None when unset or empty)."""
    return path if path is not None else (os.environ.get(path_env_var(backbone)) or None)


_HUB_REACHABLE: dict[str, bool] = {}


def hub_offline_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used now ('HF_HUB_OFFLINE is set', 'hub unreachable...'), or None.

    One TCP connection attempt to the hub endpoint (or the HTTPS proxy) with a short timeout,
    cached per process: offline machines fail in seconds instead of huggingface_hub's retries.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    key = f"{host}:{port}"
    if key not in _HUB_REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _HUB_REACHABLE[key] = True
        except OSError:
            _HUB_REACHABLE[key] = False
    return None if _HUB_REACHABLE[key] else f"hub {constants.ENDPOINT} unreachable: no network"


# ---- text conditioning --------------------------------------------------------------------------
@dataclass(frozen=True)
class TextEmbeds:
    """One text encoder's output for one caption: per-token states [1, L, D], pooled vector [1, P]."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None


class ClipTextStage:
    """CLIP tokenizer + text encoder (``CLIPTextModel`` or ``CLIPTextModelWithProjection``).

    ``penultimate=True`` returns the second-to-last layer's states (SDXL), else the final
    (layer-normed) states (SD 1.5 / 2.1). Pooled = projected ``text_embeds`` when the model has a
    projection, else ``pooler_output`` (Flux's CLIP).
    """

    def __init__(self, tokenizer: Any, model: torch.nn.Module, penultimate: bool = False):
        self.tokenizer, self.model, self.penultimate = tokenizer, model, penultimate

    def __call__(self, caption: str, device: torch.device) -> TextEmbeds:
        ids = self.tokenizer(caption, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        out = self.model(ids, output_hidden_states=True)
        hidden = out.hidden_states[-2] if self.penultimate else out.last_hidden_state
        pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        return TextEmbeds(hidden, pooled)


class T5TextStage:
    """T5 tokenizer + encoder (Flux): states [1, max_length, 4096], no pooled vector."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, max_length: int = 512):
        self.tokenizer, self.model, self.max_length = tokenizer, model, max_length

    def __call__(self, caption: str, device: torch.device) -> TextEmbeds:
        ids = self.tokenizer(caption, padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        return TextEmbeds(self.model(ids)[0], None)


class SeededTextStage:
    """Stand-in text encoder of the tiny twins: no tokenizer, no weights, no hub.

    The caption's UTF-8 bytes and the twin's seed are hashed (sha256) into a generator seed, and
    hidden [1, seq_len, dim] and pooled [1, pooled_dim] are N(0, 1) draws from it: deterministic,
    a different caption gives different embeddings (so a caption changes the output), and the
    empty caption has fixed embeddings like a real encoder's empty prompt.
    """

    model = None  # no weights to place or offload

    def __init__(self, seed: int, index: int, seq_len: int, dim: int, pooled_dim: int | None):
        self.seed, self.index = seed, index
        self.seq_len, self.dim, self.pooled_dim = seq_len, dim, pooled_dim

    def __call__(self, caption: str, device: torch.device) -> TextEmbeds:
        key = f"{self.seed}:{self.index}:".encode() + caption.encode("utf-8")
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
        hidden = torch.randn(1, self.seq_len, self.dim, generator=g)
        pooled = torch.randn(1, self.pooled_dim, generator=g) if self.pooled_dim else None
        return TextEmbeds(hidden.to(device), None if pooled is None else pooled.to(device))


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)`` only when needed (diffusers warns on every cast)."""
    p = next(module.parameters(), None)
    return module if p is None or p.dtype == dtype else module.to(dtype)


# ---- the shared adapter base ----------------------------------------------------------------------
class DiffusersBackbone(Backbone):
    """VAE, devices, dtypes and offloading shared by the SD-family and Flux adapters.

    ``text_stages`` is a list of CLIP / T5 / seeded stages (see above). Subclasses set
    ``size_multiple`` and implement ``network``, ``condition`` and ``_identity`` (what besides the
    VAE and schedule defines their outputs).
    """

    def __init__(self, *, name: str, vae: torch.nn.Module, text_stages: list[Any], schedule: NoiseSchedule,
                 prediction_type: str, device: torch.device, dtype: torch.dtype, cpu_offload: bool = False):
        self.name, self.schedule, self.prediction_type = name, schedule, prediction_type
        self.device, self.dtype, self.cpu_offload = device, dtype, cpu_offload
        # VAEs that overflow in fp16 (config.force_upcast, SD/SDXL/Flux VAEs) run in float32, as
        # diffusers' pipelines do.
        self.vae_dtype = torch.float32 if vae.config.force_upcast else dtype
        self.vae = self._place(cast(vae, self.vae_dtype).eval())
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.shift_factor or 0.0)
        self.text_stages = text_stages
        self._empty_cond: Any = None
        for stage in text_stages:
            if stage.model is not None:
                self._place(cast(stage.model, dtype).eval())
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)

    # -- placement / offload --
    def _place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Where an auxiliary module (VAE, text encoder) lives between calls: on the device, or on
        the CPU with ``cpu_offload``. The denoising network always stays on the device: it runs at
        every step, while the VAE and text encoders run once per image."""
        return module.to("cpu" if self.cpu_offload else self.device)

    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module | None) -> Iterator[torch.nn.Module | None]:
        """Model offload: with ``cpu_offload`` move ``module`` to the device for the call, then back."""
        if not self.cpu_offload or module is None:
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @staticmethod
    def _maybe_compile(module: torch.nn.Module, compile: bool) -> torch.nn.Module:
        """``torch.compile`` opt-in (first call slow, later calls faster on GPU)."""
        return torch.compile(module) if compile else module

    @torch.no_grad()
    def _run_text_stages(self, caption: str | None) -> list[TextEmbeds]:
        """Each text stage's embeddings of ``caption`` (None = empty prompt), on the device, model dtype."""
        outs = []
        for stage in self.text_stages:
            with self._on_device(stage.model):
                e = stage(caption or "", self.device)
            outs.append(TextEmbeds(e.hidden.to(self.device, self.dtype),
                                   None if e.pooled is None else e.pooled.to(self.device, self.dtype)))
        return outs

    def _cond(self, cond: Any) -> Any:
        """``cond``, or the (cached) empty-prompt conditioning when the caller passed None."""
        if cond is not None:
            return cond
        if self._empty_cond is None:
            self._empty_cond = self.condition(None)
        return self._empty_cond

    # -- autoencoder --
    def _check_size(self, image: torch.Tensor) -> None:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{self.name}: expected an image [3, H, W], got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"{self.name}: image {h}x{w} is not a multiple of {self.size_multiple}; "
                             "pad it first (diffc.codec.pad_to_multiple)")

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image [3, H, W] in [0, 1] -> x0 = (VAE mode - shift) * scaling, float32 [C, H/8, W/8]."""
        self._check_size(image)
        with self._on_device(self.vae) as vae:
            x = (image[None].to(self.device, self.vae_dtype) * 2 - 1)
            z = vae.encode(x).latent_dist.mode()
        return ((z.float() - self.shift_factor) * self.scaling_factor)[0].to(image.device)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """(C, H / f, W / f) for the VAE's downsampling factor f (8), without running the VAE."""
        return (self.latent_channels, height // self.vae_scale, width // self.vae_scale)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent x0 [C, h, w] -> image [3, 8h, 8w] in [0, 1] (float32, clamped)."""
        z = latent[None].float() / self.scaling_factor + self.shift_factor
        with self._on_device(self.vae) as vae:
            img = vae.decode(z.to(self.device, self.vae_dtype)).sample
        return ((img.float() + 1) / 2).clamp(0, 1)[0].to(latent.device)

    # -- identity --
    def _identity(self) -> dict[str, Any]:
        """Subclass part of ``config()``: weights id or tiny architecture, options that change outputs."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able: backbone name, model dtype, prediction type, schedule, VAE factors + ``_identity``."""
        ac = self.schedule.alphas_cumprod
        return {
            "backbone": self.name,
            "dtype": dtype_name(self.dtype),
            "prediction_type": self.prediction_type,
            "schedule": {"T": self.schedule.num_train_timesteps,
                         "abar_sha256": hashlib.sha256(ac.astype("<f8").tobytes()).hexdigest()[:16],
                         "abar_first": float(ac[0]), "abar_last": float(ac[-1])},
            "vae": {"scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
                    "dtype": dtype_name(self.vae_dtype)},
            **self._identity(),
        }

