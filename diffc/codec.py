"""The DiffC codec: encode an image once, get a .diffc file for every requested stop timestep.

The chain (``diffc.chain``, docs/design.md §1): x_T = shared noise (0 bits); for each step
t -> t' of the encoding schedule, q = N(c0 x0 + ct x_t, var), p = the same with the model's x0
estimate; x_t' is sent by the PFR channel (``diffc.channels``) in chunks of about ``chunk_bits``
bits of KL, searching K = 2^(chunk_bits + padding_bits) candidates per chunk; a chunk whose real
KL exceeds ``split_above`` x chunk_bits is sent in ceil(KL / chunk_bits) parts (``diffc.pfr``).
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

import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import format as fmt
from .backbone import Backbone, fingerprint
from .chain import Chain, Channel
from .channels import DdcmChannel, PfrChannel, PfrSettings, PfrStepRecord, StepRecord, TurboDdcmChannel
from .determinism import (check_provenance, default_threads, deterministic, drift_psnr_db, machine_threads,
                          provenance_here)
from .schedule import RECON_GRIDS, encoding_timesteps, recon_timesteps

log = logging.getLogger("diffc")

#: most steps of a reconstruction by the probability-flow ODE (the format's varint bound)
MAX_RECON_STEPS = 1000


def check_recon(mode: str | None, steps: int | None, grid: str | tuple[int, ...] | None = None,
                guidance: float | None = None) -> None:
    """Validate a reconstruction choice (None = not given): the one place these are checked."""
    if mode is not None and mode not in fmt.RECON_MODES:
        raise ValueError(f"recon must be one of {fmt.RECON_MODES}, got {mode!r}")
    if steps is not None and not 1 <= steps <= MAX_RECON_STEPS:
        raise ValueError(f"recon_steps must be in 1..{MAX_RECON_STEPS}, got {steps}")
    if isinstance(grid, str) and grid not in RECON_GRIDS:
        raise ValueError(f"recon_grid must be one of {RECON_GRIDS} or a list of timesteps, got {grid!r}")
    if isinstance(grid, tuple) and (not 1 <= len(grid) <= fmt.MAX_GRID or list(grid) != sorted(set(grid), reverse=True)
                                    or grid[-1] < 0 or grid[0] > MAX_RECON_STEPS):
        raise ValueError(f"a recon_grid list must hold 1..{fmt.MAX_GRID} strictly decreasing timesteps in "
                         f"0..{MAX_RECON_STEPS}, got {list(grid)}")
    if guidance is not None and not (0 <= guidance <= fmt.MAX_GUIDANCE and (16 * guidance) % 1 == 0):
        raise ValueError(f"recon_guidance must be in 0..{fmt.MAX_GUIDANCE:g} in steps of 1/16, got {guidance}")


def normal_grid(grid: Any) -> str | tuple[int, ...]:
    """A recon_grid option as CodecParams holds it: a name of RECON_GRIDS, or a tuple of timesteps."""
    return grid if isinstance(grid, str) else tuple(int(t) for t in grid)


@dataclass(frozen=True)
class CodecParams:
    """Everything besides the backbone that the decoder needs (all of it goes in the header).

    Reconstruction (decode-time choices, in the header but not the fingerprint): ``recon``
    (``ode`` = DDIM, eta = 0, or ``denoise`` = one-step posterior mean), over ``recon_grid``
    (``uniform`` = ``recon_steps`` even steps from t to 0; ``reference`` = the reference
    implementation's denoising timesteps below t, ``diffc.schedule.REFERENCE_DENOISING_TIMESTEPS``;
    or a list of timesteps), with guidance scale ``recon_guidance`` (None = the encoder's).

    ``codec`` picks the channel of every step: ``diffc`` (PFR reverse-channel coding: chunk_bits,
    padding_bits, split_above), ``ddcm`` or ``turbo-ddcm`` (a per-step codebook of
    2^codebook_bits noises; turbo-ddcm sends ``atoms`` of them per step). Parameters of the other
    codecs are normalised to 0, so equal settings have one fingerprint.

    ``candidates`` picks diffc's PFR candidates: ``iid`` (hashed normals) or ``sparse-sum``
    (``diffc.sparse_sum``: a bank of ``atoms`` = K_a Gaussian atoms per step, ``sparse_m`` = M
    signed atoms per candidate). Format v5 headers do not carry the choice: the fingerprint does
    (a non-default choice only), so such a file decodes only with the same CodecParams and any
    other decoder refuses it (``FingerprintMismatch``)."""

    schedule: str = "paper"
    chunk_bits: int = 12
    padding_bits: int = 2
    seed: int = 0
    recon: str = "ode"  # 'ode' | 'denoise'
    recon_steps: int = 50
    #: split a chunk whose real KL exceeds split_above x chunk_bits (0 = never; 1..63.75 in steps of 1/4)
    split_above: float = 2.0
    codec: str = "diffc"
    codebook_bits: int = 0
    atoms: int = 0
    recon_grid: str | tuple[int, ...] = "uniform"
    recon_guidance: float | None = None
    candidates: str = "iid"
    sparse_m: int = 0

    def __post_init__(self):
        self._set(recon_grid=normal_grid(self.recon_grid),
                  recon_guidance=None if self.recon_guidance is None else float(self.recon_guidance))
        check_recon(self.recon, self.recon_steps, self.recon_grid, self.recon_guidance)
        if not 0 <= self.seed < 2**32:
            raise ValueError("seed must be in 0..2^32-1")
        if self.codec not in fmt.CODECS:
            raise ValueError(f"codec must be one of {fmt.CODECS}, got {self.codec!r}")
        if self.codec == "diffc":
            if not 1 <= self.chunk_bits <= 24 or not 0 <= self.padding_bits <= 8:
                raise ValueError("chunk_bits must be in 1..24 and padding_bits in 0..8")
            if self.chunk_bits + self.padding_bits > 24:
                raise ValueError("chunk_bits + padding_bits must be <= 24 (2^24 candidates per chunk)")
            if not (self.split_above == 0 or 1 <= self.split_above <= 63.75) or (4 * self.split_above) % 1:
                raise ValueError("split_above must be 0 (never split) or in 1..63.75 in steps of 0.25")
            self._set(split_above=float(self.split_above), codebook_bits=0)  # 2 and 2.0: one fingerprint
            if self.candidates == "iid":
                self._set(atoms=0, sparse_m=0)
            self.pfr.generator  # noqa: B018  raises ValueError on an unknown generator or a bad atom bank
            return
        if self.candidates != "iid" or self.sparse_m:
            raise ValueError(f"candidates={self.candidates!r} / sparse_m apply to codec=diffc only")
        if not 1 <= self.codebook_bits <= fmt.MAX_CODEBOOK_BITS:
            raise ValueError(f"codebook_bits must be in 1..{fmt.MAX_CODEBOOK_BITS} for {self.codec}")
        atoms = self.atoms or 1
        if self.codec == "ddcm" and atoms != 1:
            raise ValueError("ddcm sends one codebook index per step: atoms must be 1 (or 0)")
        if not 1 <= atoms <= min(fmt.MAX_ATOMS, 1 << self.codebook_bits):
            raise ValueError(f"atoms must be in 1..min({fmt.MAX_ATOMS}, 2^codebook_bits)")
        self._set(atoms=atoms, chunk_bits=0, padding_bits=0, split_above=0.0)

    def _set(self, **values) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)

    @property
    def step_bits(self) -> float:
        """Bits per coded step of the codebook codecs: log2 K (ddcm), ceil(log2 C(K, M)) + M
        (turbo-ddcm); 0 for diffc, whose rate varies with the image."""
        if self.codec == "ddcm":
            return float(self.codebook_bits)
        if self.codec == "turbo-ddcm":
            return float((math.comb(1 << self.codebook_bits, self.atoms) - 1).bit_length() + self.atoms)
        return 0.0

    @property
    def pfr(self) -> PfrSettings:
        """The reverse-channel coder's settings."""
        return PfrSettings(self.chunk_bits, self.padding_bits, self.split_above, self.candidates, self.atoms,
                           self.sparse_m)

    @property
    def split_min(self) -> int:
        return self.pfr.split_min

    @property
    def num_candidates(self) -> int:
        return self.pfr.num_candidates


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
    encode_s: float
    #: what the channel did at each step (``PfrStepRecord`` for diffc: the step_* lists below)
    records: list[PfrStepRecord | StepRecord] = field(default_factory=list)

    @property
    def step_kl_bits(self) -> list[float]:
        return [r.kl_bits for r in self.records]

    @property
    def step_delivered_bits(self) -> list[float]:
        return [r.delivered_bits for r in self.records]

    @property
    def step_chunks(self) -> list[int]:
        """Chunk count sent per step (side information)."""
        return [r.n_chunks for r in self.records]

    @property
    def step_plan_chunks(self) -> list[int]:
        """Non-empty chunks of each step's plan (before splitting)."""
        return [r.plan_chunks for r in self.records]

    @property
    def step_indices(self) -> list[int]:
        """Indices coded per step (chunks after splitting)."""
        return [r.n_indices for r in self.records]


@dataclass
class DecodeResult:
    header: fmt.Header
    timestep: int
    x_t: torch.Tensor
    image: torch.Tensor | None
    decode_s: float
    #: what differs from the encoder's setting (``diffc.determinism``), None = bit-exact setting
    drift_warning: str | None = None


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
    (``diffc.chain``) with the channel of ``params.codec`` (``diffc.channels``), packaged as .diffc
    files."""

    def __init__(self, backbone: Backbone, params: CodecParams | None = None, deterministic: bool = True):
        """``deterministic``: deterministic kernels and a fixed intra-op thread count (the
        encoder's, recorded in the file) around encode and decode; False = the speed opt-out
        (decoding is then exact only by luck; see ``diffc.determinism``)."""
        self.backbone = backbone
        self.params = params or CodecParams()
        self.deterministic = deterministic
        self.chain = Chain(backbone, self.params.schedule, self.params.seed)
        self.timesteps = self.chain.timesteps

    # ---- identity -------------------------------------------------------------------------
    def fingerprint(self) -> bytes:
        p = asdict(self.params)
        for key in ("recon", "recon_steps", "recon_grid", "recon_guidance"):
            p.pop(key)  # decode-time choices, they do not change x_t
        if p["candidates"] == "iid":
            del p["candidates"], p["sparse_m"]  # the default generator: fingerprints as before these fields
        return fingerprint({"backbone": self.backbone.config(), "codec": p})

    def header(self, width: int, height: int, n_steps: int, caption: str | None,
               provenance: fmt.Provenance = fmt.Provenance()) -> fmt.Header:
        """The .diffc header of a file of ``n_steps`` coded steps for a ``width`` x ``height`` image."""
        p = self.params
        return fmt.Header(self.backbone.name, self.fingerprint(), width, height, p.seed, p.schedule,
                          p.chunk_bits, p.padding_bits, p.recon, p.recon_steps, n_steps, caption, p.split_above,
                          provenance, p.codec, p.codebook_bits, p.atoms, p.recon_grid, p.recon_guidance)

    def provenance(self, threads: int | None) -> fmt.Provenance:
        """This process's setting for the loaded backbone (``threads`` None = not fixed)."""
        return provenance_here(self.backbone.device, getattr(self.backbone, "dtype", torch.float32), threads)

    def stop_step_for(self, timestep: int) -> int:
        """Number of coded steps to reach the largest schedule timestep <= ``timestep``."""
        return self.chain.stop_step_for(timestep)

    @torch.no_grad()
    def encode(self, image: torch.Tensor, stop_timesteps: Sequence[int] | None = None,
               caption: str | None = None, progress: bool = False, max_bits: float | None = None,
               channel: Callable[[int], Channel] | None = None) -> EncodeResult:
        """Encode ``image`` ([3, H, W] in [0, 1]) once; one ``RatePoint`` per stop timestep.

        ``stop_timesteps`` None = only the end of the schedule. Points are ordered by decreasing
        timestep (increasing rate). ``max_bits``: stop the chain after the first step whose file
        exceeds ``max_bits`` (no later point can fit a rate target), dropping the stops beyond it;
        file sizes are exact (the running range coder is sealed after each step).
        ``channel``: makes the channel to send with from the latent's entry count (default
        ``make_channel``; e.g. a ``PfrChannel`` with another search, benchmarks/coding_efficiency.py).
        """
        t0 = time.perf_counter()
        _check_image(image)
        threads = default_threads() if self.deterministic else None
        with deterministic(threads):
            res = self._encode(image, stop_timesteps, caption, progress, max_bits, channel, self.provenance(threads))
        res.encode_s = time.perf_counter() - t0
        return res

    def _encode(self, image: torch.Tensor, stop_timesteps: Sequence[int] | None, caption: str | None,
                progress: bool, max_bits: float | None, channel: Callable[[int], Channel] | None,
                provenance: fmt.Provenance) -> EncodeResult:
        height, width = image.shape[-2:]
        x0 = self.backbone.encode(pad_for(self.backbone, image)).to(torch.float32)
        cond = self.backbone.condition(caption)
        stops = sorted({self.stop_step_for(t) for t in (stop_timesteps or [self.timesteps[-1]])})
        channel = (channel or self.make_channel)(x0.numel())
        res = EncodeResult([], 0.0)
        x = self.chain.start(tuple(x0.shape))
        first = self.header(width, height, 1, caption, provenance)  # the fingerprint, once per encode
        for step, x in self.chain.run(channel, x, cond, stops[-1], x0=x0, progress=progress):
            k = step.k
            header = replace(first, n_steps=k)
            over = False
            if k in stops or max_bits is not None:
                payload, cost = channel.stream()
                over = max_bits is not None and 8 * (fmt.header_size(header) + len(payload)) > max_bits
                if k in stops or over:
                    res.points.append(self._point(header, payload, cost, channel.records, x))
            if over:
                break
        res.records = channel.records
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

    def make_channel(self, n_dims: int, payload: bytes | None = None) -> PfrChannel | DdcmChannel | TurboDdcmChannel:
        """The channel of ``params.codec`` for a latent of ``n_dims`` entries (``payload``: decoding)."""
        p = self.params
        if p.codec == "ddcm":
            return DdcmChannel(p.codebook_bits, n_dims, payload)
        if p.codec == "turbo-ddcm":
            return TurboDdcmChannel(p.codebook_bits, p.atoms, n_dims, payload)
        return PfrChannel(p.pfr, n_dims, payload)

    def check_header(self, header: fmt.Header) -> None:
        """Raise FingerprintMismatch unless the file was written by this backbone + parameters."""
        if header.backbone != self.backbone.name:
            raise fmt.FingerprintMismatch(
                f"file was written with backbone {header.backbone!r}, but {self.backbone.name!r} is loaded")
        if header.fingerprint != self.fingerprint():
            raise fmt.FingerprintMismatch(
                f"file fingerprint {header.fingerprint.hex()} does not match the loaded {self.backbone.name!r} "
                f"config/weights and codec parameters ({self.fingerprint().hex()}; the header does not carry "
                f"candidates/atoms/sparse_m: a sparse-sum file decodes only with the encoder's)")

    @torch.no_grad()
    def decode(self, data: bytes, reconstruct: bool = True, progress: bool = False, recon: str | None = None,
               recon_steps: int | None = None, recon_grid: Any = None) -> DecodeResult:
        """Rebuild x_t from a .diffc file and (optionally) reconstruct the image; ``recon``,
        ``recon_steps`` and ``recon_grid`` override the header's reconstruction choice."""
        *_, last = self.decode_prefixes(data, None, reconstruct, progress, recon, recon_steps, recon_grid)
        return last

    @torch.no_grad()
    def decode_prefixes(self, data: bytes, step_counts: Sequence[int] | None = None, reconstruct: bool = True,
                        progress: bool = False, recon: str | None = None, recon_steps: int | None = None,
                        recon_grid: Any = None) -> Iterator[DecodeResult]:
        """One pass over a file's chain, yielding the decode of every prefix in ``step_counts``
        (numbers of coded steps, <= the file's; None = the whole file) in increasing order.

        A progressive stream's first k steps are the file of stop step k (the encoder seals the same
        running coder at every stop), so the prefix's x_t is that file's, bit for bit
        (tests/test_codec.py): a sweep decodes every rate point of an image in one chain pass.
        ``decode_s`` counts the chain up to the prefix plus its own reconstruction.
        """
        if recon_grid is not None:
            recon_grid = normal_grid(recon_grid)
        check_recon(recon, recon_steps, recon_grid)
        t0 = time.perf_counter()
        header, payload = fmt.read(data)
        params = params_from_header(header)
        if params.codec == self.params.codec == "diffc" and self.params.candidates != "iid":
            # the candidate generator is not in a v5 header: the fingerprint tells whether it is this codec's
            mine = replace(params, candidates=self.params.candidates, atoms=self.params.atoms,
                           sparse_m=self.params.sparse_m)
            if header.fingerprint == DiffcCodec(self.backbone, mine, self.deterministic).fingerprint():
                params = mine
        if params != self.params:  # every codec parameter comes from the file
            yield from DiffcCodec(self.backbone, params, self.deterministic).decode_prefixes(
                data, step_counts, reconstruct, progress, recon, recon_steps, recon_grid)
            return
        self.check_header(header)
        if header.n_steps > self.chain.n_steps:
            raise fmt.CorruptFile(f"corrupt .diffc file: {header.n_steps} steps but the schedule has {self.chain.n_steps}")
        counts = sorted(set([header.n_steps] if step_counts is None else step_counts))
        if not counts or counts[0] < 0 or counts[-1] > header.n_steps:
            raise ValueError(f"step counts must be in 0..{header.n_steps} (the file's), got {counts}")
        threads = self.decode_threads(header)
        warning = check_provenance(header.provenance, self.provenance(threads))
        if warning:
            log.warning(warning)
        b = self.backbone
        with deterministic(threads):
            shape = b.latent_shape(*b.padded_size(header.height, header.width))
            cond = b.condition(header.caption)
            channel = self.make_channel(math.prod(shape), payload)
            x = self.chain.start(shape)
            busy, mark = 0.0, t0  # seconds in the chain (and setup), outside reconstructions and the caller
            states = self.chain.run(channel, x, cond, counts[-1], progress=progress)
            for k, x in itertools.chain([(0, x)], ((step.k, x) for step, x in states)):
                if k == header.n_steps:
                    check_payload_end(channel, payload)
                if k not in counts:
                    continue
                busy += time.perf_counter() - mark
                t_rec, t, image = time.perf_counter(), self.timesteps[k], None
                if reconstruct:
                    image = self.reconstruct(x, t, header.height, header.width, cond, recon or header.recon,
                                             recon_steps or header.recon_steps,
                                             header.recon_grid if recon_grid is None else recon_grid,
                                             header.recon_guidance)
                yield DecodeResult(replace(header, n_steps=k), t, x.clone(), image,
                                   busy + time.perf_counter() - t_rec, warning)
                mark = time.perf_counter()

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
                                   h.recon, h.recon_steps, h.recon_grid, h.recon_guidance)
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
                    mode: str | None = None, steps: int | None = None, grid: Any = None,
                    guidance: float | None = None) -> torch.Tensor:
        """Image [3, height, width] in [0, 1] from the transmitted x_t (None = this codec's choice)."""
        p = self.params
        x0 = self.denoise(x_t, t, cond, mode or p.recon, steps or p.recon_steps,
                          p.recon_grid if grid is None else normal_grid(grid),
                          p.recon_guidance if guidance is None else guidance)
        return self.backbone.decode(x0)[:, :height, :width].clamp(0, 1)

    def vae_roundtrip(self, image: torch.Tensor) -> torch.Tensor:
        """The image through the backbone's autoencoder only (the quality ceiling)."""
        _check_image(image)
        h, w = image.shape[-2:]
        return self.backbone.decode(self.backbone.encode(pad_for(self.backbone, image)))[:, :h, :w].clamp(0, 1)


def check_payload_end(channel: PfrChannel | DdcmChannel | TurboDdcmChannel, payload: bytes) -> None:
    """After a file's last coded step: its payload must be exactly what those steps code to
    (the decoding channel re-codes what it reads), so data after the payload is refused. A
    progressive file's lower rate points are separate files (each sealed with its own header's
    step count), never a cut of a longer one."""
    coded, _ = channel.stream()
    if coded == payload:
        return
    if len(payload) > len(coded) and payload.startswith(coded):
        raise fmt.CorruptFile(f"corrupt .diffc file: {len(payload) - len(coded)} bytes of trailing data after "
                              f"the {len(coded)}-byte payload")
    raise fmt.CorruptFile("corrupt .diffc file: the payload is not the coded stream of the steps it decodes to")


def params_from_header(header: fmt.Header) -> CodecParams:
    """The codec parameters a file was written with."""
    try:
        encoding_timesteps(header.schedule)
        return CodecParams(header.schedule, header.chunk_bits, header.padding_bits, header.seed,
                           header.recon, header.recon_steps, header.split_above, header.codec,
                           header.codebook_bits, header.atoms, header.recon_grid, header.recon_guidance)
    except ValueError as e:
        raise fmt.CorruptFile(f"corrupt .diffc file: {e}") from None


def _check_image(image: torch.Tensor) -> None:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    if image.shape[1] > fmt.MAX_SIDE or image.shape[2] > fmt.MAX_SIDE or image.shape[1] * image.shape[2] > fmt.MAX_PIXELS:
        raise ValueError(f"image sides must be <= {fmt.MAX_SIDE} and pixels <= {fmt.MAX_PIXELS}")
