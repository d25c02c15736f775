"""Shared machinery of the diffusers-based backbones (Stable Diffusion 1.5 / 2.1 / XL / 3.5, Flux,
pixel-space DDPM).

A new diffusers backbone is one module in this package (its network call, conditioning layout,
loading and tiny twin) plus ``conf/model/NAME.yaml``; everything below is shared. What lives here:

- device / dtype resolution (``device: auto`` = CUDA when available; float32 forced on CPU);
- :class:`WeightsSource`: loading components by hub id or local path with ``from_pretrained``,
  turning every failure into one :class:`BackboneLoadError` that says what was looked for, where,
  and how to point ``model.options.path`` (or ``DIFFC_<NAME>_PATH``; a part kept in another
  repository: ``model.options.PART_path``, ``DIFFC_<NAME>_<PART>_PATH``) at a local copy. Hub ids are
  tried in the local HF cache first (``local_files_only``); only when that fails is the hub asked,
  after a 3-second reachability check (``hub_offline_reason``), so an offline machine gets the
  error in seconds instead of after huggingface_hub's ~30 s of retries;
- text stages: CLIP / T5 prompt encoders for real weights, and a seeded stand-in for the tiny
  twins (no tokenizer, no hub access);
- schedules from scheduler configs: :func:`ddpm_schedule` (DDPMScheduler betas) and
  :func:`flow_shift` (FlowMatchEulerDiscreteScheduler's static or resolution-dependent shift);
- :func:`tiny_vae_config`: the tiny twins' AutoencoderKL;
- :class:`DiffusersBackbone`: the autoencoder side shared by every adapter (a VAE, or none for
  pixel-space models), devices, offloading, identity; :class:`FlowMatchingBackbone` adds the
  rectified-flow schedule of the Flux / SD3 transformers.

Latent convention (``Backbone`` units): x0 = (mode of q_VAE(z | image) - shift_factor) * scaling_factor,
with shift_factor = 0 where the VAE defines none (SD 1.x/2.x/XL). The image goes into the VAE as
2 * image - 1 (range [-1, 1]); decoding inverts both maps and clamps to [0, 1]. The distribution's
mode (its mean) is used, never a sample, so ``encode`` is deterministic. Pixel-space models
(``vae=None``) use the same maps with an identity autoencoder: x0 = 2 * image - 1, [3, H, W].

Dtypes: the codec works in float32. Adapters cast inputs to the model dtype on the way in and
outputs back to float32 on the way out; returned tensors live on the device of the input tensor.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ..backbone import Backbone
from ..device import resolve_device
from ..prediction import flow_sigma
from ..schedule import NoiseSchedule, check_labels

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


class BackboneLoadError(RuntimeError):
    """A backbone's weights (or config) could not be loaded; the message says where we looked."""


def _cause(err: BaseException) -> str:
    """``TypeName: first line of its message``: the failure under a load error, kept to one line
    (the core raises one-line messages; the command lines' convention is analysis/errors.py's)."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# ---- device / dtype -----------------------------------------------------------------------------
def resolve_dtype(dtype: str | torch.dtype, device: torch.device, cpu_half: bool = False) -> torch.dtype:
    """Model dtype from its name; float32 on CPU whatever was asked (half kernels are slow or absent),
    unless ``cpu_half`` (the tiny twins: their float16 / bfloat16 paths are tested on the CPU)."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in _DTYPES:
        resolved = _DTYPES[dtype]
    else:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return torch.float32 if device.type == "cpu" and not cpu_half else resolved


# ---- loading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsSource:
    """Where a real backbone's weights come from: a hub id, or a local diffusers-format copy of it.

    ``path`` (a directory with ``unet/``, ``vae/``, ``text_encoder/``... subfolders, as written by
    ``DiffusionPipeline.save_pretrained`` or ``hf download``) overrides ``hub_id``.
    ``hub_id`` + ``revision`` name the weights in ``config()``; the path is only where they live.

    ``part`` names a component kept in another repository (SDXL's ``refiner``, a separate ``vae``):
    its options are ``model.options.PART_hub_id`` / ``PART_path``, its environment variable
    ``DIFFC_<NAME>_<PART>_PATH``; None = the model's own repository (``hub_id`` / ``path``,
    ``DIFFC_<NAME>_PATH``). ``path_origin``: the option or environment variable that gave ``path``
    (what the error messages name); ``hint``: an extra way out appended to a not-found message.
    """

    backbone: str
    hub_id: str
    revision: str | None = None
    path: str | None = None
    part: str | None = None
    path_origin: str | None = None
    hint: str | None = None

    @classmethod
    def resolve(cls, backbone: str, hub_id: str, revision: str | None, path: str | None,
                     part: str | None = None, hint: str | None = None) -> "WeightsSource":
        """The source the options name: ``path`` if given, else ``$DIFFC_<NAME>[_<PART>]_PATH`` if set,
        else the hub id (the HF cache first)."""
        env = path_env_var(backbone, part)
        origin = option_key("path", part) if path is not None else env if os.environ.get(env) else None
        return cls(backbone, hub_id, revision, default_path(backbone, path, part), part, origin, hint)

    @property
    def location(self) -> str:
        return self.path if self.path is not None else self.hub_id

    @property
    def label(self) -> str:
        """'backbone 'sdxl'' or 'backbone 'sdxl' (refiner)': the subject of the error messages."""
        return f"backbone {self.backbone!r}" + (f" ({self.part})" if self.part else "")

    def identity(self) -> dict[str, Any]:
        return {"hub_id": self.hub_id, "revision": self.revision}

    def load(self, cls: Any, subfolder: Subfolder, **kwargs: Any) -> Any:
        """``cls.from_pretrained(location, subfolder=...)``; any failure -> :class:`BackboneLoadError`.

        ``subfolder`` may be a tuple of alternatives tried in order (``None`` = the repository root,
        e.g. ``("unet", None)`` for repos that also keep a model's files flat at the root).
        """
        return self._call(cls.from_pretrained, subfolder, **kwargs)

    def load_config(self, cls: Any, subfolder: Subfolder) -> dict[str, Any]:
        """The component's config dict (e.g. the scheduler's ``scheduler_config.json``)."""
        return dict(self._call(cls.load_config, subfolder))

    def _call(self, fn: Any, subfolder: Subfolder, **kwargs: Any) -> Any:
        with quiet_loading():
            return self._load(fn, subfolder, **kwargs)

    def _load(self, fn: Any, subfolder: Subfolder, **kwargs: Any) -> Any:
        alternatives = subfolder if isinstance(subfolder, tuple) else (subfolder,)
        label = " or ".join(f"{a}/" if a else "the repository root" for a in alternatives)
        if self.path is not None and not os.path.isdir(self.path):
            raise BackboneLoadError(
                f"{self.label}: {self._path_given()} is not a directory; it must be a local "
                f"diffusers-format copy of {self.hub_id!r} (with {label})")
        if self.path is not None:
            result, err = _first_success(fn, self.path, alternatives, kwargs)
            if err is not None:
                raise BackboneLoadError(self.explain(label, err)) from err
            return result
        kwargs["revision"] = self.revision
        # 1. The local HF cache only: no network, no retries (fast when the weights are there).
        # (diffusers/transformers/hub raise OSError, ValueError, HTTP errors...)
        result, cache_err = _first_success(fn, self.hub_id, alternatives, {**kwargs, "local_files_only": True})
        if cache_err is None:
            return result
        # 2. Not cached: download, unless offline (huggingface_hub would retry a dead network for ~30 s).
        offline = hub_offline_reason()
        if offline is not None:
            raise BackboneLoadError(self.explain(label, cache_err, offline)) from cache_err
        result, err = _first_success(fn, self.hub_id, alternatives, kwargs)
        if err is not None:
            raise BackboneLoadError(self.explain(label, err, "download failed")) from err
        return result

    def _path_given(self) -> str:
        """'model.options.refiner_path='/x'' or 'DIFFC_SDXL_REFINER_PATH='/x'': where the path came from."""
        return f"{self.path_origin or option_key('path', self.part)}={self.path!r}"

    def explain(self, where: str, err: BaseException, why: str | None = None) -> str:
        """One line: what was looked for (``where``: "unet/", "unet/ or the repository root"), where,
        and how to fix it, naming the options of this source (``model.options.[PART_]path``)."""
        from huggingface_hub import constants

        cause = _cause(err)
        if self.path is not None:
            return (f"{self.label}: could not load {where} from the local copy {self._path_given()} "
                    f"(expected a diffusers-format copy of {self.hub_id!r} with {where}). Cause: {cause}")
        rev = f" at revision {self.revision!r}" if self.revision else ""
        why = f" ({why})" if why else ""
        key = option_key("path", self.part)
        hint = f"; or {self.hint}" if self.hint else ""
        return (f"{self.label}: could not load {where} of model {self.hub_id!r}{rev} "
                f"({option_key('hub_id', self.part)}): not in the Hugging Face cache {constants.HF_HUB_CACHE} "
                f"and not downloadable{why}. Either download it there (`{hub_cli()} download {self.hub_id}` "
                f"on a machine with access; gated models need `{hub_cli()} login`), or point "
                f"{key} at a local diffusers-format copy, e.g. `{key}=/data/models/{self.hub_id.split('/')[-1]}` "
                f"(or set {path_env_var(self.backbone, self.part)}){hint}. Cause: {cause}")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """diffusers' and transformers' chatter off while ``from_pretrained`` runs: their loading
    progress bars and warnings below ERROR ('accelerate not found', deprecated arguments), so a
    command's stderr holds its own output and its one-line error only. Failures still raise."""
    import warnings

    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    bars = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error(), tlog.set_verbosity_error()
    dlog.disable_progress_bar(), tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # huggingface_hub's deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        dlog.set_verbosity(levels[0]), tlog.set_verbosity(levels[1])
        for module, enabled in zip((dlog, tlog), bars):
            if enabled:
                module.enable_progress_bar()


#: A component's subfolder, None for the repository root, or a tuple of alternatives tried in order.
Subfolder = str | None | tuple[str | None, ...]


def _first_success(fn: Any, location: str, alternatives: tuple[str | None, ...],
                   kwargs: dict[str, Any]) -> tuple[Any, BaseException | None]:
    """``fn(location, subfolder=a, **kwargs)`` for each alternative a: (first result, None), or
    (None, the first alternative's error) when all fail."""
    first: BaseException | None = None
    for a in alternatives:
        try:
            return fn(location, subfolder=a, **kwargs), None
        except Exception as e:
            first = first or e
    return None, first


def hub_cli() -> str:
    """The Hugging Face command-line tool of the installed huggingface_hub: ``hf`` (its CLI since
    0.34, the only one in 1.x), else the older ``huggingface-cli``; error messages name its commands."""
    import huggingface_hub
    from packaging.version import Version

    return "hf" if Version(huggingface_hub.__version__) >= Version("0.34") else "huggingface-cli"


def path_env_var(backbone: str, part: str | None = None) -> str:
    """Environment variable naming a local copy of ``backbone``'s weights (or of its ``part``):
    sd15 -> DIFFC_SD15_PATH, flux-dev -> DIFFC_FLUX_DEV_PATH, (sdxl, refiner) -> DIFFC_SDXL_REFINER_PATH.
    Used when ``model.options.path`` (``PART_path``) is null."""
    name = backbone if part is None else f"{backbone}-{part}"
    return "DIFFC_" + "".join(c if c.isalnum() else "_" for c in name.upper()) + "_PATH"


def option_key(option: str, part: str | None = None) -> str:
    """The command-line key of a loading option: ('path', None) -> model.options.path,
    ('path', 'refiner') -> model.options.refiner_path."""
    return f"model.options.{part + '_' if part else ''}{option}"


def default_path(backbone: str, path: str | None, part: str | None = None) -> str | None:
    """``path`` if given, else the value of :func:`path_env_var` (None when unset or empty)."""
    return path if path is not None else (os.environ.get(path_env_var(backbone, part)) or None)


def open_weights(name: str, hub_id: str, revision: str | None, path: str | None, device: str,
                 dtype: str) -> tuple[WeightsSource, torch.device, torch.dtype]:
    """What every ``from_pretrained`` starts with: the weights source (``path`` or ``DIFFC_<NAME>_PATH``
    over ``hub_id``), the resolved device and model dtype."""
    dev = resolve_device(device)
    return WeightsSource.resolve(name, hub_id, revision, path), dev, resolve_dtype(dtype, dev)


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
        g = torch.Generator("cpu").manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
        hidden = torch.randn(1, self.seq_len, self.dim, generator=g, device="cpu")  # CPU draws: the same everywhere
        pooled = torch.randn(1, self.pooled_dim, generator=g, device="cpu") if self.pooled_dim else None
        return TextEmbeds(hidden.to(device), None if pooled is None else pooled.to(device))


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)`` only when needed (diffusers warns on every cast)."""
    p = next(module.parameters(), None)
    return module if p is None or p.dtype == dtype else module.to(dtype)


# ---- schedules from scheduler configs -----------------------------------------------------------
#: DDPMScheduler's defaults for the keys a schedule depends on (google/ddpm-* configs rely on some).
DDPM_SCHEDULER_DEFAULTS: dict[str, Any] = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                               num_train_timesteps=1000)


def ddpm_schedule(scheduler_config: dict[str, Any],
                  timestep_labels: str = "project") -> tuple[NoiseSchedule, dict[str, Any]]:
    """The ``NoiseSchedule`` of a DDPMScheduler config, and the config values it depends on (for
    ``config()``). Never hard-coded: betas, beta schedule and T come from the checkpoint.
    ``timestep_labels``: ``NoiseSchedule.ddpm``'s (project | reference)."""
    if scheduler_config.get("trained_betas") is not None or scheduler_config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler configs with trained_betas or rescale_betas_zero_snr are not supported "
                         "(zero terminal SNR has no VP start state to code from)")
    kept = {k: scheduler_config.get(k, v) for k, v in DDPM_SCHEDULER_DEFAULTS.items()}
    return NoiseSchedule.ddpm(**kept, timestep_labels=timestep_labels), kept


#: Default token count for a dynamic flow shift: a 768x512 image (Kodak) = 48 x 32 tokens of 16x16 px.
KODAK_SEQ_LEN = (768 // 16) * (512 // 16)
#: x0 of an image: the VAE posterior's mode (ours, deterministic) or an unseeded sample (the reference's bug)
VAE_POSTERIORS = ("mode", "sample")


def dynamic_flow_shift(image_seq_len: int, base_image_seq_len: int = 256, max_image_seq_len: int = 4096,
                       base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Flux's resolution-dependent shift exp(mu), mu linear in the packed token count.

    mu = base_shift + (n - base_image_seq_len) (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    (diffusers ``calculate_shift``); the exponential time shift sigma' = e^mu sigma / (1 + (e^mu - 1) sigma)
    is exactly ``NoiseSchedule.flow_matching(shift=e^mu)``. 1536 tokens (768x512) -> 2.048.
    """
    slope = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    return math.exp(base_shift + (image_seq_len - base_image_seq_len) * slope)


def flow_shift(scheduler_config: dict[str, Any], image_seq_len: int) -> float:
    """The shift a FlowMatchEulerDiscreteScheduler config implies: its static ``shift`` (SD3), or with
    ``use_dynamic_shifting`` (FLUX.1-dev) the dynamic shift at ``image_seq_len`` tokens."""
    sc = scheduler_config
    if not sc.get("use_dynamic_shifting", False):
        return float(sc.get("shift", 1.0))
    return dynamic_flow_shift(image_seq_len, sc["base_image_seq_len"], sc["max_image_seq_len"],
                              sc["base_shift"], sc["max_shift"])


# ---- tiny twins ---------------------------------------------------------------------------------------
def tiny_vae_config(**overrides: Any) -> dict[str, Any]:
    """AutoencoderKL args of a tiny twin: the real 8x downsampling (4 blocks), tiny widths (64x64 image
    -> C x 8 x 8 latent); ``overrides`` set the latent channels, scaling / shift factors, quant convs."""
    return {**dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                   block_out_channels=(16, 16, 32, 32), sample_size=64,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
            **overrides}


# ---- the shared adapter base ----------------------------------------------------------------------
class DiffusersBackbone(Backbone):
    """Autoencoder, devices, dtypes and offloading shared by every diffusers adapter.

    ``vae`` is an ``AutoencoderKL``, or None for pixel-space models (x0 = 2 image - 1, [3, H, W]).
    ``text_stages`` is a list of CLIP / T5 / seeded stages (see above; empty = unconditional).
    Subclasses set ``size_multiple`` (class or instance attribute), place their network with
    ``_denoiser`` and implement ``network``, ``condition`` (unless unconditional) and ``_identity``
    (what besides the autoencoder and schedule defines their outputs).
    """

    def __init__(self, *, name: str, vae: torch.nn.Module | None, text_stages: list[Any], schedule: NoiseSchedule,
                 prediction_type: str, device: torch.device, dtype: torch.dtype, cpu_offload: bool = False,
                 timestep_labels: str = "project", vae_posterior: str = "mode", guidance: float = 1.0):
        self.name, self.schedule, self.prediction_type = name, schedule, prediction_type
        self.timestep_labels, self.guidance = check_labels(timestep_labels), float(guidance)
        if vae_posterior not in VAE_POSTERIORS:
            raise ValueError(f"vae_posterior must be one of {VAE_POSTERIORS}, got {vae_posterior!r}")
        self.vae_posterior = vae_posterior
        self.device, self.dtype, self.cpu_offload = device, dtype, cpu_offload
        if vae is None:  # pixel space: the identity autoencoder, kept in float32 (the codec's dtype)
            self.vae, self.vae_dtype, self.scaling_factor, self.shift_factor = None, torch.float32, 1.0, 0.0
            self.vae_scale, self.latent_channels = 1, 3
        else:
            # VAEs that overflow in fp16 (config.force_upcast, SD/SDXL/Flux VAEs) run in float32, as
            # diffusers' pipelines do.
            self.vae_dtype = torch.float32 if vae.config.force_upcast else dtype
            self.vae = self._place(cast(vae, self.vae_dtype).eval())
            self.scaling_factor = float(vae.config.scaling_factor)
            self.shift_factor = float(vae.config.shift_factor or 0.0)
            self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
            self.latent_channels = int(vae.config.latent_channels)
        self.text_stages = text_stages
        self._empty_cond: Any = None
        self._constants: dict[tuple, torch.Tensor] = {}
        for stage in text_stages:
            if stage.model is not None:
                self._place(cast(stage.model, dtype).eval())

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

    def _denoiser(self, module: torch.nn.Module, compile: bool = False) -> torch.nn.Module:
        """The denoising network: model dtype, on the device (never offloaded), eval mode, and
        ``torch.compile`` when asked (first call slow, later calls faster on GPU)."""
        module = cast(module, self.dtype).to(self.device).eval()
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

    def _constant(self, key: tuple, make: Callable[[torch.device, torch.dtype], torch.Tensor]) -> torch.Tensor:
        """A small per-step network input (timestep, position or time ids) made once on the device by
        ``make(device, dtype)`` and reused: no host tensor and no host-to-device copy per step. Keyed
        by ``key`` and the current device and model dtype (both may change after construction)."""
        full = (*key, self.device, self.dtype)
        value = self._constants.get(full)
        if value is None:
            value = self._constants[full] = make(self.device, self.dtype)
        return value

    def _timestep(self, t: int) -> torch.Tensor:
        """The integer timestep ``t`` as the UNets take it: int64 [1] on the device (what diffusers
        builds from a Python int on every call, with a host-to-device copy)."""
        return self._constant(("timestep", t), lambda dev, _: torch.full((1,), t, dtype=torch.int64, device=dev))

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
                             "pad it first (diffc.codec.pad_for)")

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image [3, H, W] in [0, 1] -> x0 = (VAE mode - shift) * scaling, float32 [C, H/f, W/f]
        (pixel space: x0 = 2 image - 1, f = 1). ``vae_posterior='sample'``: a draw of the VAE
        posterior from torch's global generator, unseeded as the reference's (docs/parity.md row 9):
        the encoder's x0 changes run to run (the decoder never needs x0, files still decode)."""
        self._check_size(image)
        with self._on_device(self.vae) as vae:
            x = (image[None].to(self.device, self.vae_dtype) * 2 - 1)
            dist = None if vae is None else vae.encode(x).latent_dist
            z = x if dist is None else dist.mode() if self.vae_posterior == "mode" else dist.sample()
        return ((z.float() - self.shift_factor) * self.scaling_factor)[0].to(image.device)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """(C, H / f, W / f) for the VAE's downsampling factor f (8; 1 in pixel space), without running it."""
        return (self.latent_channels, height // self.vae_scale, width // self.vae_scale)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent x0 [C, h, w] -> image [3, f h, f w] in [0, 1] (float32, clamped)."""
        z = (latent[None].float() / self.scaling_factor + self.shift_factor).to(self.device, self.vae_dtype)
        with self._on_device(self.vae) as vae:
            img = z if vae is None else vae.decode(z).sample
        return ((img.float() + 1) / 2).clamp(0, 1)[0].to(latent.device)

    # -- identity --
    def _identity(self) -> dict[str, Any]:
        """Subclass part of ``config()``: weights id or tiny architecture, options that change outputs."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able: backbone name, prediction type, schedule, VAE factors (None in pixel space) +
        ``_identity``. Not the dtype or device: they change outputs only by rounding, and a file
        encoded in fp16 on a GPU must decode in fp32 on a CPU (with drift; ``diffc.determinism``,
        where the header's provenance records them)."""
        ac = self.schedule.alphas_cumprod
        return {
            "backbone": self.name,
            "prediction_type": self.prediction_type,
            "schedule": {"T": self.schedule.num_train_timesteps,
                         "abar_sha256": hashlib.sha256(ac.astype("<f8").tobytes()).hexdigest()[:16],
                         "abar_first": float(ac[0]), "abar_last": float(ac[-1])},
            "vae": None if self.vae is None else {"scaling_factor": self.scaling_factor,
                                                  "shift_factor": self.shift_factor},
            "timestep_labels": self.timestep_labels, "guidance": self.guidance,
            **self._identity(),
        }


class FlowMatchingBackbone(DiffusersBackbone):
    """Rectified-flow transformers (Flux, SD3): x_sigma = (1 - sigma) x0 + sigma eps, and the
    transformer predicts the velocity v = eps - x0 (``prediction_type = 'flow'``, converted by
    ``diffc.prediction``).

    The integer chain timestep t maps to sigma(t) = shift u / (1 + (shift - 1) u), u = (t + 1) / T
    (FlowMatchEulerDiscreteScheduler's training grid, ``NoiseSchedule.flow_matching``). The shift is
    the scheduler config's (:func:`flow_shift`: static, or dynamic at ``image_seq_len`` tokens), unless
    ``shift`` fixes it (1.0 = no shift). A backbone has one schedule for every image size, by choice
    (rate points of different sizes share timesteps; diffc/backbones/flux.py).

    ``timestep_labels='reference'``: the reference implementation's labels, noise at
    u = t - 1 and the transformer told u = t (``network_sigma``); with ``shift: 1.0`` that is its
    sigma = (t - 1) / 1000 and timestep t / 1000 (docs/parity.md, rows 1 and 7).
    """

    def __init__(self, *, transformer: torch.nn.Module, scheduler_config: dict[str, Any],
                 shift: float | None = None, image_seq_len: int = KODAK_SEQ_LEN, compile: bool = False,
                 timestep_labels: str = "project", **kwargs: Any):
        self.shift = float(shift) if shift is not None else flow_shift(scheduler_config, image_seq_len)
        if shift is not None:
            self.shift_rule = "fixed"
        else:
            self.shift_rule = f"dynamic@{image_seq_len}" if scheduler_config.get("use_dynamic_shifting") else "config"
        T = scheduler_config.get("num_train_timesteps", 1000)
        reference = check_labels(timestep_labels) == "reference"
        schedule = NoiseSchedule.flow_matching(self.shift, T, label_offset=2 if reference else 0)
        self._network_schedule = NoiseSchedule.flow_matching(self.shift, T, label_offset=1) if reference else schedule
        super().__init__(schedule=schedule, prediction_type="flow", timestep_labels=timestep_labels, **kwargs)
        self.transformer = self._denoiser(transformer, compile)

    def sigma(self, t: int) -> float:
        """The flow-matching sigma of chain timestep t (the noise level of x_t)."""
        return flow_sigma(*self.schedule.a_s(t))

    def network_sigma(self, t: int) -> float:
        """The sigma the transformer is told at chain timestep t: ``sigma(t)``, or with reference
        labels the sigma of u = t (one label above the noise level, as the reference does)."""
        return flow_sigma(*self._network_schedule.a_s(t))

    def _flow_identity(self) -> dict[str, Any]:
        return {"shift": self.shift, "shift_rule": self.shift_rule}
