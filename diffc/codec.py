"""The DiffC codec: encode an image once, get a .diffc file for every requested stop timestep.

The chain (``diffc.chain``, docs/design.md §1): x_T = shared noise (0 bits); for each step
t -> t' of the encoding schedule, q = N(c0 x0 + ct x_t, var), p = the same with the model's x0
estimate; x_t' is sent by the PFR channel (``diffc.rcc``) in chunks of about ``chunk_bits``
bits of KL, searching K = 2^(chunk_bits + padding_bits) candidates per chunk; a chunk whose real
KL exceeds ``split_above`` x chunk_bits is sent in ceil(KL / chunk_bits) parts (``diffc.rcc.pfr``).
The decoder runs the same chain without x0 and rebuilds exactly the encoder's x_t', then
reconstructs an image by one-step denoising (posterior mean) or the probability-flow ODE
(DDIM, eta = 0) down to t = 0. This module only packages the chain's output as files.

Progressive: a file for stop step k holds the symbols of steps 1..k; one encode pass gives the
files of every stop step (the running range coder is sealed at each stop).

Rates: ``bits_total`` = 8 x file size. ``bits_side`` and ``bits_payload`` split the range-coded
stream in proportion to the ideal code lengths of the side information (chunk counts, split
chunks and their parts) and of the indices;
``bits_header`` = header fields + CRC. ``kl_bits`` = sum of KL(q||p) in bits (the ideal rate);
``delivered_bits`` = sum of log2 q/p(sent sample) (what the truncated search actually sent).
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import format as fmt
from .backbone import Backbone, fingerprint
from .chain import Chain
from .determinism import (check_provenance, default_threads, deterministic, drift_psnr_db, machine_threads,
                          provenance_here)
from .params import CodecParams
from .plugins import MAX_STEP_ENTRIES, CodingChannel, Search, StepRecord, channel_spec
from .profiles import profile_params
from .rate import RateTarget, within
from .recon import Recon
from .schedule import encoding_timesteps, recon_timesteps

log = logging.getLogger("diffc")


class UnknownChannel(fmt.DiffcFormatError):
    """The file names a channel that is not installed here."""

    prefix = ".diffc file uses a channel that is not installed here: "


@dataclass
class RatePoint:
    """One rate point of a progressive encode: the file and its accounting."""

    timestep: int  # chain timestep reached (x_t is what the file transmits)
    step_index: int  # number of coded steps
    data: bytes
    x_t: torch.Tensor
    width: int
    height: int
    bits_header: int
    bits_side: float
    bits_payload: float
    kl_bits: float
    delivered_bits: float

    @property
    def bits_total(self) -> int:
        return 8 * len(self.data)

    @property
    def bpp(self) -> float:
        return self.bits_total / (self.width * self.height)


@dataclass
class EncodeResult:
    points: list[RatePoint]
    encode_s: float  # wall-clock seconds
    #: CPU seconds of the process over the encode (all threads; time.process_time): next to
    #: ``encode_s`` it shows a loaded machine (cpu / wall well below the threads used)
    encode_cpu_s: float = math.nan
    #: what the channel did at each step (its own record type, e.g. ``diffc.rcc.channel.PfrStepRecord``)
    records: list[StepRecord] = field(default_factory=list)
    #: the points keyed by the request (``diffc.rate.RateTarget.keys``, in increasing rate): per stop
    #: timestep its point, or per bpp budget the highest-rate point within it (None: none fits)
    by_target: dict[float, RatePoint | None] = field(default_factory=dict)

    @property
    def step_kl_bits(self) -> list[float]:
        return [r.kl_bits for r in self.records]

    @property
    def step_delivered_bits(self) -> list[float]:
        return [r.delivered_bits for r in self.records]


@dataclass
class DecodeResult:
    header: fmt.Header
    timestep: int
    x_t: torch.Tensor
    image: torch.Tensor | None
    decode_s: float  # wall-clock seconds
    #: what differs from the encoder's setting (``diffc.determinism``), None = bit-exact setting
    drift_warning: str | None = None
    decode_cpu_s: float = math.nan  # CPU seconds of the process over what ``decode_s`` counts


def pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate-pad [3, H, W] at the bottom/right to ``height`` x ``width`` (>= H, W)."""
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    return F.pad(image[None], (0, width - w, 0, height - h), mode="replicate")[0]


def pad_for(backbone: Backbone, image: torch.Tensor) -> torch.Tensor:
    """The image as the backbone encodes it: float32 on its device, padded to ``padded_size``."""
    return pad_to(image.to(backbone.device, torch.float32), *backbone.padded_size(*image.shape[-2:]))


class DiffcCodec:
    """Encode/decode images with a backbone (CompressAI-like: bytes in, bytes out): the chain
    (``diffc.chain``) with the channel of ``params.channel`` (``diffc.plugins``), packaged as .diffc
    files."""

    def __init__(self, backbone: Backbone, params: CodecParams | None = None, deterministic: bool = True,
                 search: Search = Search(), provenance: bool = False):
        """``deterministic``: deterministic kernels and a fixed intra-op thread count (the
        encoder's, recorded in the file) around encode and decode; False = the speed opt-out
        (decoding is then exact only by luck; see ``diffc.determinism``). ``search``: how the
        encoder's channel runs its search (compiled, block size; never what it finds).
        ``provenance``: record the device type, dtype and library versions in the files (8 bytes
        when every version part is < 128; a decoder then names what differs from its own setting); the thread count is
        always recorded."""
        self.backbone = backbone
        self.params = params or CodecParams()
        self.deterministic = deterministic
        self.search = search
        self.record_provenance = provenance
        self.chain = Chain(backbone, self.params.schedule, self.params.seed)
        self.timesteps = self.chain.timesteps

    # ---- identity -------------------------------------------------------------------------
    def fingerprint(self) -> bytes:
        """sha256[:2] (``fmt.FINGERPRINT_BYTES``) of the backbone's config and what x_t depends on:
        schedule, seed, the channel's name and parameters (not the reconstruction, not the parity:
        the backbone config covers it)."""
        codec = self.params.fingerprint_fields()
        return fingerprint({"backbone": self.backbone.config(), "codec": codec})[:fmt.FINGERPRINT_BYTES]

    def header(self, width: int, height: int, n_steps: int, caption: str | None,
               provenance: fmt.Provenance = fmt.Provenance()) -> fmt.Header:
        """The .diffc header of a file of ``n_steps`` coded steps for a ``width`` x ``height`` image."""
        p = self.params
        return fmt.Header(backbone=self.backbone.name, fingerprint=self.fingerprint(), width=width, height=height,
                          seed=p.seed, schedule=p.schedule, channel=p.channel.name,
                          channel_params=p.channel.to_bytes(), n_steps=n_steps, recon=p.recon, caption=caption,
                          provenance=provenance, parity=p.parity)

    def provenance(self, threads: int | None) -> fmt.Provenance:
        """This process's setting for the loaded backbone (``threads`` None = not fixed)."""
        return provenance_here(self.backbone.device, getattr(self.backbone, "dtype", torch.float32), threads)

    def file_provenance(self, threads: int | None) -> fmt.Provenance:
        """What an encode records: the thread count, and the rest with ``provenance=True``."""
        here = self.provenance(threads)
        return here if self.record_provenance else here.without_information()

    def stop_step_for(self, timestep: int) -> int:
        """Number of coded steps to reach the largest schedule timestep <= ``timestep``."""
        return self.chain.stop_step_for(timestep)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """The latent of a ``width`` x ``height`` image, refused (``fmt.TooLarge``) when one step of the
        channel would materialise more than ``MAX_STEP_ENTRIES`` floats."""
        b = self.backbone
        shape = tuple(b.latent_shape(*b.padded_size(height, width)))
        entries = self.params.channel.decode_entries(math.prod(shape))
        if entries > MAX_STEP_ENTRIES:
            raise fmt.TooLarge(f"{self.params.channel.name} on a {width}x{height} image would materialise {entries} "
                               f"floats per step, above the limit of {MAX_STEP_ENTRIES}")
        return shape

    def stop_steps(self, rate: RateTarget) -> dict[int, int]:
        """Each stop timestep of ``rate`` -> its number of coded steps (``stop_step_for``), in
        increasing rate: the one conversion of a request; ValueError for a timestep below the
        schedule's last."""
        return {t: self.stop_step_for(t) for t in rate.stops(self.timesteps)}

    @torch.no_grad()
    def encode(self, image: torch.Tensor, rate: RateTarget | None = None, caption: str | None = None,
               progress: bool = False, channel: Callable[[int], CodingChannel] | None = None, *,
               stop_timesteps: Sequence[int] | None = None) -> EncodeResult:
        """Encode ``image`` (float [3, H, W] or [1, 3, H, W] in [0, 1]; other dtypes and ranges are
        refused, ``_check_image``) once, for the rate points of ``rate`` (``diffc.rate``).

        ``rate`` None = only the end of the schedule; ``stop_timesteps=[...]`` is short for
        ``RateTarget(timesteps=...)``. ``EncodeResult.by_target`` holds the points keyed by the
        request (``RateTarget.keys``); ``points``, the coded stops in increasing rate. With bpp
        budgets the chain stops after the first step whose file exceeds the largest budget (no
        later point can fit), that file being the last of ``points``; file sizes are exact (the
        running range coder is sealed after each step).
        ``channel``: makes the channel to send with from the latent's entry count (default: the
        spec's; e.g. a ``PfrChannel`` with another search, benchmarks/coding_efficiency.py).
        """
        if rate is not None and stop_timesteps is not None:
            raise TypeError("give rate or stop_timesteps, not both")
        if rate is not None and not isinstance(rate, RateTarget):
            raise TypeError(f"rate must be a diffc.rate.RateTarget, got {type(rate).__name__} (stop timesteps: "
                            f"encode(image, stop_timesteps=[...]))")
        if rate is None:
            rate = RateTarget(tuple(stop_timesteps) if stop_timesteps is not None else (self.timesteps[-1],))
        steps = self.stop_steps(rate)
        t0, c0 = time.perf_counter(), time.process_time()
        image = _check_image(image)
        self.latent_shape(*image.shape[-2:])
        threads = default_threads() if self.deterministic else None
        with deterministic(threads):
            res = self._encode(image, rate, steps, caption, progress, channel, self.file_provenance(threads))
        res.encode_s, res.encode_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        return res

    def _encode(self, image: torch.Tensor, rate: RateTarget, steps: dict[int, int], caption: str | None,
                progress: bool, channel: Callable[[int], CodingChannel] | None,
                provenance: fmt.Provenance) -> EncodeResult:
        height, width = image.shape[-2:]
        x0 = self.backbone.encode(pad_for(self.backbone, image)).to(torch.float32)
        cond = self.backbone.condition(caption)
        stops = sorted(set(steps.values()))
        max_bits = rate.max_bits(width * height)
        channel = channel(x0.numel()) if channel else self.params.channel.channel(x0.numel(), search=self.search)
        res = EncodeResult([], 0.0)
        x = self.chain.start(tuple(x0.shape))
        first = self.header(width, height, 1, caption, provenance)  # the fingerprint, once per encode
        # a rate target ends the chain at an unknown step: the bar counts the file's bits of the budget
        budget = tqdm(total=math.ceil(max_bits), unit="bit", desc="file bits of the bpp budget", leave=False,
                      disable=not progress) if max_bits is not None else None
        for step, x in self.chain.run(channel, x, cond, stops[-1], x0=x0, progress=progress and budget is None):
            k = step.k
            header = replace(first, n_steps=k)
            over = False
            if k in stops or max_bits is not None:
                payload, cost = channel.stream()
                bits = 8 * (fmt.header_size(header) + len(payload))
                over = max_bits is not None and bits > max_bits
                if budget is not None:
                    budget.update(min(bits, budget.total) - budget.n)
                if k in stops or over:
                    res.points.append(self._point(header, payload, cost, channel.records, x))
            if over:
                break
        if budget is not None:
            budget.close()
        res.records = channel.records
        if rate.bpp:
            res.by_target = {b: within(res.points, b) for b in rate.bpp}
        else:
            by_step = {p.step_index: p for p in res.points}
            res.by_target = {t: by_step[k] for t, k in steps.items()}
        return res

    def _point(self, header: fmt.Header, payload: bytes, cost, records: list, x: torch.Tensor) -> RatePoint:
        """The rate point of a file: its bytes and accounting (``bits_side``/``bits_payload`` split
        the range-coded bytes in proportion to the ideal code lengths)."""
        data = fmt.write(header, payload)
        coded = cost.side_bits + cost.index_bits
        side = 8 * len(payload) * (cost.side_bits / coded if coded else 0.0)
        k = header.n_steps
        return RatePoint(timestep=self.timesteps[k], step_index=k, data=data, x_t=x.clone(), width=header.width,
                         height=header.height, bits_header=8 * (len(data) - len(payload)), bits_side=side,
                         bits_payload=8 * len(payload) - side, kl_bits=sum(r.kl_bits for r in records[:k]),
                         delivered_bits=sum(r.delivered_bits for r in records[:k]))

    def check_header(self, header: fmt.Header) -> None:
        """Raise FingerprintMismatch unless the file was written by this backbone + parameters."""
        if header.backbone != self.backbone.name:
            raise fmt.FingerprintMismatch(f"written with backbone {header.backbone!r}, but {self.backbone.name!r} "
                                          "is loaded")
        if header.fingerprint != self.fingerprint():
            raise fmt.FingerprintMismatch(
                f"its fingerprint {header.fingerprint.hex()} does not match the loaded {self.backbone.name!r} "
                f"config/weights with the file's codec parameters ({self.fingerprint().hex()}): the file was "
                f"encoded with other weights or model options")

    @torch.no_grad()
    def decode(self, data: bytes, reconstruct: bool = True, progress: bool = False,
               max_pixels: int = fmt.DEFAULT_MAX_PIXELS, **recon: Any) -> DecodeResult:
        """Rebuild x_t from a .diffc file and (optionally) reconstruct the image. ``recon``: overrides
        of the header's reconstruction (``recon``, ``recon_steps``, ``recon_grid``, ``recon_guidance``;
        None = the file's). ``max_pixels``: refuse a file claiming a larger image (``fmt.TooLarge``)."""
        *_, last = self.decode_prefixes(data, None, reconstruct, progress, max_pixels, **recon)
        return last

    @torch.no_grad()
    def decode_prefixes(self, data: bytes, step_counts: Sequence[int] | None = None, reconstruct: bool = True,
                        progress: bool = False, max_pixels: int = fmt.DEFAULT_MAX_PIXELS,
                        **recon: Any) -> Iterator[DecodeResult]:
        """One pass over a file's chain, yielding the decode of every prefix in ``step_counts``
        (numbers of coded steps, <= the file's; None = the whole file) in increasing order.

        Everything the chain needs comes from the header (``params_from_header``): this codec's
        backbone decodes any file its fingerprint matches, whatever this codec's own parameters.
        A progressive stream's first k steps are the file of stop step k (the encoder seals the same
        running coder at every stop), so the prefix's x_t is that file's, bit for bit
        (tests/test_codec.py): a sweep decodes every rate point of an image in one chain pass.
        ``decode_s`` counts the chain up to the prefix plus its own reconstruction.
        """
        Recon().override(**recon)  # bad overrides are refused before the file is read
        t0, c0 = time.perf_counter(), time.process_time()
        header, payload = fmt.read(data, max_pixels)
        params = params_from_header(header)
        if params != self.params:
            yield from DiffcCodec(self.backbone, params, self.deterministic, self.search).decode_prefixes(
                data, step_counts, reconstruct, progress, max_pixels, **recon)
            return
        self.check_header(header)
        if header.n_steps > self.chain.n_steps:
            raise fmt.CorruptFile(f"{header.n_steps} steps but the schedule has {self.chain.n_steps}")
        counts = sorted(set([header.n_steps] if step_counts is None else step_counts))
        if not counts or counts[0] < 0 or counts[-1] > header.n_steps:
            raise ValueError(f"step counts must be in 0..{header.n_steps} (the file's), got {counts}")
        rec = header.recon.override(**recon)
        shape = self.latent_shape(header.height, header.width)
        threads = self.decode_threads(header)
        warning = check_provenance(header.provenance, self.provenance(threads))
        if warning:
            log.warning(warning)
        b = self.backbone
        with deterministic(threads):
            cond = b.condition(header.caption)
            channel = self.params.channel.channel(math.prod(shape), payload)
            x = self.chain.start(shape)
            # seconds (wall, CPU) in the chain (and setup), outside reconstructions and the caller
            busy, cbusy, mark, cmark = 0.0, 0.0, t0, c0
            states = self.chain.run(channel, x, cond, counts[-1], progress=progress)
            for k, x in itertools.chain([(0, x)], ((step.k, x) for step, x in states)):
                if k == header.n_steps:
                    check_payload_end(channel, payload)
                if k not in counts:
                    continue
                busy += time.perf_counter() - mark
                cbusy += time.process_time() - cmark
                t_rec, c_rec, t, image = time.perf_counter(), time.process_time(), self.timesteps[k], None
                if reconstruct:
                    image = self.reconstruct(x, t, header.height, header.width, cond, rec)
                yield DecodeResult(replace(header, n_steps=k), t, x.clone(), image,
                                   busy + time.perf_counter() - t_rec, warning,
                                   cbusy + time.process_time() - c_rec)
                mark, cmark = time.perf_counter(), time.process_time()

    def decode_threads(self, header: fmt.Header) -> int | None:
        """Intra-op threads around a decode's model calls: the file's, capped at this machine's CPUs
        (a performance hint: ``diffc.determinism``), or this process's when the file fixed none;
        None (not fixed) with ``deterministic=False``."""
        if not self.deterministic:
            return None
        return min(header.provenance.threads, machine_threads()) if header.provenance.threads else default_threads()

    def drift(self, point: RatePoint, decoded: DecodeResult) -> tuple[float, float]:
        """(max |x_t decoder - x_t encoder|, PSNR in dB between the encoder-side and the decoder's
        reconstructions) of a file this codec encoded and decoded: (0, inf) when x_t is bit-exact
        (the same codec then reconstructs the same image), (inf, -inf) when the decoder's x_t is not
        finite. ``diffc.determinism.desynchronised`` tells drift from desynchronisation."""
        if not bool(torch.isfinite(decoded.x_t).all()):
            return math.inf, -math.inf
        xt_max = float((decoded.x_t.cpu() - point.x_t.cpu()).abs().max())
        if xt_max == 0.0 or decoded.image is None:
            return xt_max, math.inf if xt_max == 0.0 else math.nan
        h = decoded.header
        with deterministic(self.decode_threads(h)):
            ref = self.reconstruct(point.x_t, point.timestep, h.height, h.width, self.backbone.condition(h.caption),
                                   h.recon)
        return xt_max, drift_psnr_db(ref, decoded.image)

    # ---- reconstruction -------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, t: int, cond: Any = None, mode: str = "ode", steps: int = 50,
                grid: str | tuple[int, ...] = "uniform", guidance: float | None = None) -> torch.Tensor:
        """x0 estimate from x_t: one-step posterior mean, or DDIM (eta = 0) through ``grid``.

        ``uniform``: ``steps`` even steps down to t = 0, then the x0 estimate at t = 0. ``reference``
        or a list: DDIM through the grid timesteps strictly below t (``diffc.schedule.recon_timesteps``);
        a final 0 is the clean image (abar = 1), so the last step lands on the previous x0 estimate
        (the reference implementation's loop). ``guidance`` = the network's guidance scale (None =
        the backbone's, the encoder's). Network evaluations: len(timesteps) (uniform), or
        len(timesteps) - 1 when the grid ends at 0.
        """
        pred = lambda x, ti: self.backbone.predict_x0(x, ti, cond, guidance)
        if mode == "denoise" or t == 0:
            return pred(x_t, t)
        if mode != "ode":
            raise ValueError(f"unknown reconstruction mode {mode!r}")
        ts = recon_timesteps(t, grid, steps)
        clean_end = grid != "uniform" and ts[-1] == 0
        sched = self.backbone.schedule
        x = x_t
        for i, ti in enumerate(ts[:-1]):
            x0_hat = pred(x, ti)
            if clean_end and i == len(ts) - 2:
                return x0_hat
            a, s = sched.a_s(ti)
            eps = (x - a * x0_hat) / s
            a_n, s_n = sched.a_s(ts[i + 1])
            x = a_n * x0_hat + s_n * eps
        return pred(x, ts[-1])

    def reconstruct(self, x_t: torch.Tensor, t: int, height: int, width: int, cond: Any = None,
                    recon: Recon | None = None) -> torch.Tensor:
        """Image [3, height, width] in [0, 1] from the transmitted x_t (``recon`` None = this codec's)."""
        r = recon or self.params.recon
        x0 = self.denoise(x_t, t, cond, r.mode, r.steps, r.grid, r.guidance)
        return self.backbone.decode(x0)[:, :height, :width].clamp(0, 1)

    def vae_roundtrip(self, image: torch.Tensor) -> torch.Tensor:
        """The image through the backbone's autoencoder only (the quality ceiling)."""
        image = _check_image(image)
        h, w = image.shape[-2:]
        return self.backbone.decode(self.backbone.encode(pad_for(self.backbone, image)))[:, :h, :w].clamp(0, 1)


def check_payload_end(channel: CodingChannel, payload: bytes) -> None:
    """After a file's last coded step: its payload must be exactly what those steps code to
    (the decoding channel re-codes what it reads), so data after the payload is refused. A
    progressive file's lower rate points are separate files (each sealed with its own header's
    step count), never a cut of a longer one."""
    coded, _ = channel.stream()
    if coded == payload:
        return
    if len(payload) > len(coded) and payload.startswith(coded):
        raise fmt.CorruptFile(f"{len(payload) - len(coded)} bytes of trailing data after the {len(coded)}-byte payload")
    raise fmt.CorruptFile("the payload is not the coded stream of the steps it decodes to")


@functools.lru_cache(maxsize=64)
def default_profile(backbone: str, parity: str = "project") -> fmt.Profile:
    """The codec parameters a header leaves out (``diffc.profiles.profile_params``: a shipped
    backbone's codec defaults, ``CodecParams()`` for any other) as the header fields they stand for
    (``diffc.format.Profile``). Part of the format: changing a shipped default changes what old files
    say (the fingerprint refuses those whose x_t changes; docs/format.md)."""
    p = profile_params(backbone, parity)
    return fmt.Profile(p.seed, p.schedule, p.channel.name, p.channel.to_bytes(), p.recon)


def params_from_header(header: fmt.Header) -> CodecParams:
    """The codec parameters a file was written with: the chain's, the channel's spec (parsed by the
    spec registered under the header's channel name) and the reconstruction."""
    try:
        spec_cls = channel_spec(header.channel)
    except ValueError as e:
        raise UnknownChannel(e) from None
    try:
        encoding_timesteps(header.schedule)
        return CodecParams(header.schedule, header.seed, spec_cls.from_bytes(header.channel_params), header.recon,
                           header.parity)
    except (ValueError, fmt.DiffcFormatError) as e:
        raise fmt.CorruptFile(e) from None


def _check_image(image: torch.Tensor) -> torch.Tensor:
    """``image`` as the [3, H, W] float tensor in [0, 1] the codec codes (a [1, 3, H, W] batch of one
    is taken as its image); anything else is refused in one line naming what it got: another shape,
    an integer dtype (uint8 images: ``x.float() / 255``), values outside [0, 1] (0..255 floats) or
    non-finite values, a size no file can hold (sides over MAX_SIDE; pixels: ``fmt.check_pixels`` at
    MAX_PIXELS, before any value is read). Nothing is rescaled silently: a wrong range would code a
    wrong image."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor [3, H, W] in [0, 1], got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W] or [1, 3, H, W], got shape {tuple(image.shape)}")
    if image.shape[1] > fmt.MAX_SIDE or image.shape[2] > fmt.MAX_SIDE:
        raise ValueError(f"image is {image.shape[2]}x{image.shape[1]}: sides must be <= {fmt.MAX_SIDE}")
    fmt.check_pixels(image.shape[2], image.shape[1], fmt.MAX_PIXELS, "the image")  # what a file can hold
    if not image.is_floating_point():
        hint = " (convert with image.float() / 255)" if image.dtype == torch.uint8 else ""
        raise ValueError(f"image must be a float tensor in [0, 1], got dtype {image.dtype}{hint}")
    if image.numel():
        lo, hi = image.min().item(), image.max().item()
        if not (0.0 <= lo and hi <= 1.0):  # NaN fails too
            raise ValueError(f"image values must lie in [0, 1], got [{lo:g}, {hi:g}] ({image.dtype}; "
                             f"0..255 floats: divide by 255)")
    return image
