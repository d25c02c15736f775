"""Per-image captions as text conditioning: ``caption=auto`` = a BLIP-2 caption, as the reference.

The reference implementation captions every image with BLIP-2 (``Salesforce/blip2-opt-2.7b-coco``,
``generate(max_length=75)``, greedy) and uses the caption as the prompt of the text-conditioned
backbones. The caption is data the decoder needs: the codec stores it in the .diffc file (zlib) and
counts it in bpp, so a caption never has to be regenerated on the decoding side, and captions made
on another device or dtype (rounding may change a word) are safe to reuse.

- :class:`Captioner`: a BLIP-2 ``Blip2Processor`` + ``Blip2ForConditionalGeneration``, loaded by hub
  id (+ revision) or from a local copy (``path``, or ``$DIFFC_BLIP2_PATH``), through the backbones'
  loader (``diffc/backbones/diffusers_common.py``: the local HF cache first, a fast offline check,
  one-line errors); or :meth:`Captioner.tiny`, random weights of the same classes from a small
  ``Blip2Config`` (vision / Q-Former / OPT) and a byte-level tokenizer built in memory: offline,
  deterministic under its seed, for tests and demos.
- ``caption_image(img)``: greedy decoding of at most ``max_length`` new text tokens (the
  reference's 75; the 32 query positions and BOS of the prompt are not counted), special tokens
  dropped, surrounding white space stripped.
- A caption cache: ``$DIFFC_CACHE/captions/<captioner>/<pixels>.json``, where ``<pixels>`` is the
  sha256 of the image's uint8 pixels (and shape) and ``<captioner>`` 16 hex digits of the sha256 of
  the captioner's identity (hub id, revision, max_length; the tiny twin's seed and architecture).
  Files are written atomically; a sweep re-run (or a second model on the same dataset) never loads
  BLIP-2 again, and a model is loaded only on the first cache miss.
- :func:`resolve_caption`: ``caption=none`` (or null) -> "", ``auto`` -> the cached caption, any
  other text -> that text.

Configs: ``conf/captioner/blip2.yaml`` (the reference's settings) and ``conf/captioner/tiny-blip2.yaml``.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from analysis.errors import describe
from diffc.backbones.diffusers_common import (BackboneLoadError, WeightsSource, default_path, hub_cli,
                                              path_env_var, resolve_dtype)
from diffc.checks import checked_int
from diffc.device import resolve_device

from .common import PipelineError, atomic_write, plain
from .datasets import cache_dir

#: the reference implementation's captioner and generation length (``lib/blip.py``)
REFERENCE_HUB_ID = "Salesforce/blip2-opt-2.7b-coco"
MAX_LENGTH = 75

# ---- tiny architecture ------------------------------------------------------------------------------
#: ViT on 32x32 images in 8x8 patches (16 patches), a 2-layer Q-Former with 4 queries, a 2-layer OPT
#: decoder: ~75k parameters, about 1 ms per generated token on a CPU. Weights are drawn with standard
#: deviation ``TINY_INIT_STD`` (transformers' default 0.02 gives near-constant logits: the same
#: letter repeated for every image); at 1.0 the caption depends on the image.
TINY_IMAGE_SIZE = 32
TINY_QUERIES = 4
TINY_INIT_STD = 1.0
TINY_VISION: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=TINY_IMAGE_SIZE, patch_size=8, initializer_range=TINY_INIT_STD)
TINY_QFORMER: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    cross_attention_frequency=1, encoder_hidden_size=TINY_VISION["hidden_size"],
                                    initializer_range=TINY_INIT_STD)
#: OPT's special-token layout (pad 1, BOS = EOS = 2); vocab_size is the tiny tokenizer's
TINY_TEXT: dict[str, Any] = dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                 num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                                 pad_token_id=1, bos_token_id=2, eos_token_id=2, init_std=TINY_INIT_STD)
#: three special ids in OPT's places (unk 0, pad 1, BOS = EOS 2); then the byte-level symbols of
#: printable ASCII (space is U+0120 'Ġ', bytes 33..126 map to themselves), so that every generated
#: token decodes to printable text
TINY_SPECIALS = ("<unk>", "<pad>", "</s>")
TINY_SYMBOLS = ("\u0120", *(chr(b) for b in range(33, 127)))


def tiny_tokenizer() -> Any:
    """An OPT-like byte-level tokenizer built in memory (no files, no network): one token per
    printable ASCII character, other bytes -> ``<unk>``; BOS = EOS = ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + TINY_SYMBOLS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


class CaptionerWeights(WeightsSource):
    """The backbones' weights source (hub cache first, offline check) with the captioner's wording."""

    def explain(self, where: str, err: BaseException, why: str | None = None) -> str:
        """One line: what was looked for, where, and how to fix it (``captioner.options.path``)."""
        from huggingface_hub import constants

        cause = describe(err)
        if self.path is not None:
            return (f"captioner {self.backbone!r}: could not load BLIP-2 from captioner.options.path={self.path!r} "
                    f"(expected a copy of {self.hub_id!r}: processor and model files at its root). Cause: {cause}")
        rev = f" at revision {self.revision!r}" if self.revision else ""
        why = f" ({why})" if why else ""
        return (f"captioner {self.backbone!r}: could not load model {self.hub_id!r}{rev}: not in the Hugging Face "
                f"cache {constants.HF_HUB_CACHE} and not downloadable{why}. Download it there "
                f"(`{hub_cli()} download {self.hub_id}` on a machine with access), or point "
                f"captioner.options.path at a local copy (or set {path_env_var(self.backbone)}), "
                f"or give the caption as text (caption=\"...\"). Cause: {cause}")


class Captioner:
    """BLIP-2 image captioning: ``processor`` (image resize / normalisation, tokenizer) + ``model``."""

    def __init__(self, processor: Any, model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 max_length: int = MAX_LENGTH):
        self.processor, self.max_length = processor, int(max_length)
        self.device, self.dtype = device, dtype
        self.model = model.to(device).eval()

    @classmethod
    def from_pretrained(cls, hub_id: str = REFERENCE_HUB_ID, revision: str | None = None, path: str | None = None,
                        dtype: str = "float16", device: str = "auto", max_length: int = MAX_LENGTH) -> "Captioner":
        """BLIP-2 by hub id (+ revision) or from a local copy (``path``, else ``$DIFFC_BLIP2_PATH``):
        a directory with the processor and model files at its root (``save_pretrained`` or
        ``hf download --local-dir``). float32 on a CPU whatever ``dtype`` says."""
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        path = default_path("blip2", path)
        if path is not None and not os.path.isdir(path):
            raise BackboneLoadError(f"captioner 'blip2': captioner.options.path={path!r} is not a directory; it must "
                                    f"be a local copy of {hub_id!r} (processor and model files at its root)")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        src = CaptionerWeights("blip2", hub_id, revision, path)
        processor = src.load(Blip2Processor, "")  # small files first: fail fast offline
        model = src.load(Blip2ForConditionalGeneration, "", dtype=dt)
        return cls(processor, model, dev, dt, max_length)

    @classmethod
    def tiny(cls, seed: int = 0, device: str = "auto", max_length: int = MAX_LENGTH) -> "Captioner":
        """Random-weight BLIP-2 of the real classes (:data:`TINY_VISION`, :data:`TINY_QFORMER`,
        :data:`TINY_TEXT`), weights drawn after ``torch.manual_seed(seed)`` inside a forked RNG (the
        caller's global RNG state is left alone), float32, with :func:`tiny_tokenizer`."""
        import transformers
        from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

        # the PIL image processor where transformers has one (no torchvision needed, no warning)
        image_cls = getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor
        size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
        processor = Blip2Processor(image_processor=image_cls(size=size), tokenizer=tiny_tokenizer(),
                                   num_query_tokens=TINY_QUERIES)  # adds the <image> token
        vocab = len(processor.tokenizer)
        config = Blip2Config(vision_config=TINY_VISION, qformer_config=TINY_QFORMER | {"vocab_size": vocab},
                             text_config=TINY_TEXT | {"vocab_size": vocab}, num_query_tokens=TINY_QUERIES,
                             image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
                             initializer_range=TINY_INIT_STD)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Blip2ForConditionalGeneration(config)
        return cls(processor, model, resolve_device(device), torch.float32, max_length)

    @torch.no_grad()
    def caption_image(self, img: np.ndarray) -> str:
        """Caption of a uint8 [H, W, 3] image: greedy decoding of at most ``max_length`` new tokens,
        special tokens (query placeholders, BOS, EOS) dropped, white space stripped."""
        from PIL import Image

        check_image(img)
        pixels = self.processor(images=Image.fromarray(img), return_tensors="pt").pixel_values
        ids = self.model.generate(pixel_values=pixels.to(self.device, self.dtype), max_new_tokens=self.max_length,
                                  do_sample=False, num_beams=1)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


# ---- configs ------------------------------------------------------------------------------------
#: captioner name (conf/captioner/NAME.yaml ``name``) -> loader, and the loader options that name
#: the captions it makes (with ``max_length``, the cache identity; paths, devices, dtypes do not)
CAPTIONERS: dict[str, tuple[Callable[..., Captioner], tuple[str, ...]]] = {
    "blip2": (Captioner.from_pretrained, ("hub_id", "revision")),
    "tiny-blip2": (Captioner.tiny, ("seed",)),
}


@dataclass(frozen=True)
class CaptionerSpec:
    """A validated captioner config: ``name`` (a key of :data:`CAPTIONERS`), loading ``options``,
    ``max_length`` (most new text tokens per caption)."""

    name: str
    options: tuple[tuple[str, Any], ...]
    max_length: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "CaptionerSpec":
        """From ``conf/captioner/NAME.yaml`` (a DictConfig or a mapping); one-line errors."""
        if cfg is None:
            raise PipelineError("caption=auto needs a captioner config: captioner=blip2 (or tiny-blip2)")
        cfg = plain(cfg)
        name = cfg.get("name")
        if name not in CAPTIONERS:
            raise PipelineError(f"unknown captioner {name!r}; available: {', '.join(CAPTIONERS)}")
        max_length = cfg.get("max_length", MAX_LENGTH)
        checked_int("captioner.max_length", max_length, 1)
        options = plain(cfg.get("options"))
        allowed = set(inspect.signature(CAPTIONERS[name][0]).parameters) - {"max_length"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise PipelineError(f"captioner {name}: unknown options {unknown} (known: {', '.join(sorted(allowed))})")
        return cls(name, tuple(sorted(options.items())), max_length)

    def identity(self) -> dict[str, Any]:
        """What names the captions (JSON-able): name, max_length, the identifying options with the
        loader's defaults filled in, and the tiny twin's architecture."""
        loader, keys = CAPTIONERS[self.name]
        params = inspect.signature(loader).parameters
        given = dict(self.options)
        ident = {"name": self.name, "max_length": self.max_length} | {k: given.get(k, params[k].default) for k in keys}
        if self.name == "tiny-blip2":
            ident["tiny"] = {"vision": TINY_VISION, "qformer": TINY_QFORMER, "text": TINY_TEXT,
                             "tokens": TINY_SPECIALS + TINY_SYMBOLS}
        return ident

    def key(self) -> str:
        """16 hex digits of the sha256 of :meth:`identity`: the cache folder of these captions."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def load(self) -> Captioner:
        """The captioner (loaded once per process and spec); loading failures -> one-line PipelineError."""
        return _load(self)


@functools.lru_cache(maxsize=2)
def _load(spec: CaptionerSpec) -> Captioner:
    try:
        return CAPTIONERS[spec.name][0](**dict(spec.options), max_length=spec.max_length)
    except BackboneLoadError as exc:
        raise PipelineError(str(exc)) from exc
    except Exception as exc:  # bad option values, incompatible files: one line for the user
        raise PipelineError(f"captioner {spec.name}: {describe(exc)}") from exc


# ---- cache --------------------------------------------------------------------------------------
def check_image(img: np.ndarray) -> None:
    """A caption is made of a uint8 [H, W, 3] image (what ``pipelines.datasets`` yields)."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise PipelineError(f"captions are made of uint8 [H, W, 3] images, got {got}")


def pixels_sha256(img: np.ndarray) -> str:
    """sha256 (hex) of the image's shape and uint8 pixels in row-major order: the image's cache key."""
    check_image(img)
    h, w, c = img.shape
    return hashlib.sha256(f"{h}x{w}x{c}:".encode() + np.ascontiguousarray(img).tobytes()).hexdigest()


def cache_path(spec: CaptionerSpec, img: np.ndarray) -> Path:
    """``$DIFFC_CACHE/captions/<captioner key>/<pixels sha256>.json``."""
    return cache_dir() / "captions" / spec.key() / f"{pixels_sha256(img)}.json"


def cached_caption(img: np.ndarray, captioner_cfg: Mapping[str, Any] | None) -> str:
    """The captioner's caption of ``img``: from the cache, else generated (the captioner is loaded
    on the first miss only) and stored atomically. A cache file that does not parse is remade."""
    spec = CaptionerSpec.from_config(captioner_cfg)
    path = cache_path(spec, img)
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["caption"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    caption = spec.load().caption_image(img)
    record = {"caption": caption, "captioner": spec.identity(), "pixels_sha256": path.stem,
              "shape": list(img.shape)}
    atomic_write(path, json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))
    return caption


def resolve_caption(mode: str | None, img: np.ndarray, captioner_cfg: Mapping[str, Any] | None) -> str:
    """The prompt of ``img`` for the option ``caption=MODE``: ``none`` or null -> "" (unconditional),
    ``auto`` -> the (cached) caption of the configured captioner, any other text -> that text."""
    if mode is None or mode == "none":
        return ""
    if not isinstance(mode, str):
        raise PipelineError(f"caption must be auto, none or a text, got {mode!r}")
    return cached_caption(img, captioner_cfg) if mode == "auto" else mode
