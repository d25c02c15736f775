"""The DiffC codec: encode an image once, get a .diffc file for every requested stop timestep.

Chain (DESIGN.md §1), in the VP view of ``diffc.schedule``: x_T = shared noise (0 bits); for each
step t -> t' of the encoding schedule, q = N(c0 x0 + ct x_t, var), p = the same with the model's
x0 estimate; x_t' is sent by PFR (``diffc.pfr``) in chunks of about ``chunk_bits`` bits of KL,
searching K = 2^(chunk_bits + padding_bits) candidates per chunk; a chunk whose real KL exceeds
``split_above`` x chunk_bits is sent in ceil(KL / chunk_bits) parts (``diffc.pfr``). The decoder
repeats the chain without x0 and rebuilds exactly the encoder's x_t', then reconstructs an image
by one-step denoising (posterior mean) or the probability-flow ODE (DDIM, eta = 0) down to t = 0.

Progressive: a file for stop step k holds the symbols of steps 1..k; one encode pass gives the
files of every stop step (each file is a separate range-coded stream of that symbol prefix).

Rates: ``bits_total`` = 8 x file size. ``bits_side`` and ``bits_payload`` split the range-coded
stream in proportion to the ideal code lengths of the side information (chunk counts, split
chunks and their parts) and of the indices;
``bits_header`` = header fields + CRC. ``kl_bits`` = sum of KL(q||p) in bits (the ideal rate);
``delivered_bits`` = sum of log2 q/p(sent sample) (what the truncated search actually sent).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import format as fmt
from .backbone import Backbone, fingerprint
from .entropy import StepDecoder, StepSymbols, count_bound, encode_prefixes, step_bits
from .pfr import chunk_sums, decode_chunks, encode_chunks, make_plan, split_parts
from .randomness import noise_like, stream_key
from .schedule import encoding_timesteps

LN2 = math.log(2.0)


@dataclass(frozen=True)
class CodecParams:
    """Everything besides the backbone that the decoder needs (all of it goes in the header)."""

    schedule: str = "paper"
    chunk_bits: int = 12
    padding_bits: int = 2
    seed: int = 0
    recon: str = "ode"  # 'ode' | 'denoise'
    recon_steps: int = 50
    #: split a chunk whose real KL exceeds split_above x chunk_bits (0 = never; 1..63.75 in steps of 1/4)
    split_above: float = 2.0

    def __post_init__(self):
        if not 1 <= self.chunk_bits <= 24 or not 0 <= self.padding_bits <= 8:
            raise ValueError("chunk_bits must be in 1..24 and padding_bits in 0..8")
        if self.chunk_bits + self.padding_bits > 24:
            raise ValueError("chunk_bits + padding_bits must be <= 24 (2^24 candidates per chunk)")
        if self.recon not in fmt.RECON_MODES:
            raise ValueError(f"recon must be one of {fmt.RECON_MODES}, got {self.recon!r}")
        if not 1 <= self.recon_steps <= 1000:
            raise ValueError("recon_steps must be in 1..1000")
        if not 0 <= self.seed < 2**32:
            raise ValueError("seed must be in 0..2^32-1")
        if not (self.split_above == 0 or 1 <= self.split_above <= 63.75) or (4 * self.split_above) % 1:
            raise ValueError("split_above must be 0 (never split) or in 1..63.75 in steps of 0.25")
        object.__setattr__(self, "split_above", float(self.split_above))  # 2 and 2.0: one fingerprint

    @property
    def split_min(self) -> int:
        """Fewest parts of a split chunk (KL > split_above x chunk_bits): floor(split_above) + 1; 0 = off."""
        return int(self.split_above) + 1 if self.split_above else 0

    @property
    def num_candidates(self) -> int:
        return 1 << (self.chunk_bits + self.padding_bits)


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
    step_kl_bits: list[float] = field(default_factory=list)
    step_delivered_bits: list[float] = field(default_factory=list)
    step_chunks: list[int] = field(default_factory=list)  # chunk count sent per step (side information)
    step_plan_chunks: list[int] = field(default_factory=list)  # non-empty chunks of each step's plan
    step_indices: list[int] = field(default_factory=list)  # indices coded per step (chunks after splitting)


@dataclass
class DecodeResult:
    header: fmt.Header
    timestep: int
    x_t: torch.Tensor
    image: torch.Tensor | None
    decode_s: float


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad [3, H, W] at the bottom/right to multiples of ``multiple``."""
    h, w = image.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return image
    return F.pad(image[None], (0, pw, 0, ph), mode="replicate")[0]


class DiffcCodec:
    """Encode/decode images with a backbone (CompressAI-like: bytes in, bytes out)."""

    def __init__(self, backbone: Backbone, params: CodecParams | None = None):
        self.backbone = backbone
        self.params = params or CodecParams()
        T = backbone.schedule.num_train_timesteps
        self.timesteps = [T] + encoding_timesteps(self.params.schedule, T)

    # ---- identity -------------------------------------------------------------------------
    def fingerprint(self) -> bytes:
        p = asdict(self.params)
        p.pop("recon"), p.pop("recon_steps")  # decode-time choices, they do not change x_t
        return fingerprint({"backbone": self.backbone.config(), "codec": p})

    def _header(self, width: int, height: int, n_steps: int, caption: str | None) -> fmt.Header:
        p = self.params
        return fmt.Header(self.backbone.name, self.fingerprint(), width, height, p.seed, p.schedule,
                          p.chunk_bits, p.padding_bits, p.recon, p.recon_steps, n_steps, caption, p.split_above)

    def stop_step_for(self, timestep: int) -> int:
        """Number of coded steps to reach the largest schedule timestep <= ``timestep``."""
        for k, t in enumerate(self.timesteps):
            if k and t <= timestep:
                return k
        raise ValueError(f"timestep {timestep} is below the last encoding timestep {self.timesteps[-1]}")

    # ---- the chain ------------------------------------------------------------------------
    def _start(self, shape: tuple[int, ...]) -> torch.Tensor:
        return noise_like(self.params.seed, 0, shape, self.backbone.device)

    def _prior(self, x: torch.Tensor, k: int, cond: Any):
        """Model prior of step k (timesteps[k-1] -> timesteps[k]): (x0_hat, mu_p, std, coeffs)."""
        t, t_prev = self.timesteps[k - 1], self.timesteps[k]
        x0_hat = self.backbone.predict_x0(x, t, cond)
        pc = self.backbone.schedule.posterior(t, t_prev)
        return x0_hat, pc.c0 * x0_hat + pc.ct * x, pc

    def chunk_count(self, kl_bits: float, n_dims: int) -> int:
        """Chunks of a step carrying ``kl_bits`` of KL: ceil(KL / chunk_bits), within the count
        model's support (the side information the encoder sends)."""
        return int(min(max(1, math.ceil(kl_bits / self.params.chunk_bits)), count_bound(n_dims)))

    def _plan(self, x: torch.Tensor, k: int, n_chunks: int):
        """The decoder-side plan of step k (before heavy chunks are split)."""
        w = self.backbone.kl_weights(x, self.timesteps[k - 1], self.timesteps[k])
        return make_plan(x.numel(), n_chunks, stream_key(self.params.seed, 1, k), w)

    def _split(self, plan, u: torch.Tensor):
        """The encoder's split of heavy chunks: (parts per chunk of ``plan``, the split plan), from
        each chunk's real KL = |u_c|^2 / 2 (``diffc.pfr.split_parts``)."""
        u_coded = plan.coded(u)
        kl_bits = chunk_sums(0.5 * u_coded * u_coded, plan) / LN2
        parts = split_parts(kl_bits, self.params.chunk_bits, self.params.split_above,
                            torch.bincount(plan.chunk_of, minlength=plan.n_chunks))
        return parts, plan.split_chunks(parts)

    def _step_key(self, k: int) -> int:
        return stream_key(self.params.seed, 2, k)

    def _sample(self, mu_p: torch.Tensor, std: float, plan, indices: torch.Tensor, k: int):
        """(x_t', the coded candidates): x_t' = mu_p + std * z_N, split parts summed (the same
        function on both sides: bit-identical)."""
        z_coded = decode_chunks(indices, plan, self._step_key(k), mu_p.device)
        return mu_p + std * plan.combine(z_coded, mu_p.numel()).reshape(mu_p.shape), z_coded

    @torch.no_grad()
    def encode(self, image: torch.Tensor, stop_timesteps: Sequence[int] | None = None,
               caption: str | None = None, progress: bool = False, max_bits: float | None = None) -> EncodeResult:
        """Encode ``image`` ([3, H, W] in [0, 1]) once; one ``RatePoint`` per stop timestep.

        ``stop_timesteps`` None = only the end of the schedule. Points are ordered by decreasing
        timestep (increasing rate). ``max_bits``: stop the chain after the first step whose file
        would exceed ``max_bits`` (no later point can fit a rate target), dropping the stops
        beyond it; the ideal code length screens each step and real bytes confirm.
        """
        t0 = time.perf_counter()
        _check_image(image)
        height, width = image.shape[-2:]
        img = pad_to_multiple(image.to(self.backbone.device, torch.float32), self.backbone.size_multiple)
        x0 = self.backbone.encode(img).to(torch.float32)
        cond = self.backbone.condition(caption)
        stops = sorted({self.stop_step_for(t) for t in (stop_timesteps or [self.timesteps[-1]])})
        p = self.params
        x = self._start(tuple(x0.shape))
        steps: list[StepSymbols] = []
        res = EncodeResult([], 0.0)
        points: list[tuple[int, torch.Tensor]] = []
        ideal = 0.0  # ideal payload bits so far (max_bits screening)
        for k in tqdm(range(1, stops[-1] + 1), desc="encode", unit="step", disable=not progress, leave=False):
            x0_hat, mu_p, pc = self._prior(x, k, cond)
            std = pc.std
            u = (pc.c0 / std) * (x0 - x0_hat)
            kl_bits = float((u.double() ** 2).sum()) / 2 / LN2
            n_chunks = self.chunk_count(kl_bits, x.numel())
            plan = self._plan(x, k, n_chunks)
            res.step_plan_chunks.append(plan.n_chunks)
            parts, plan = self._split(plan, u)
            u_coded = plan.coded(u)
            idx = encode_chunks(u_coded, plan, p.num_candidates, self._step_key(k))
            x_next, z = self._sample(mu_p, std, plan, idx, k)
            delivered = float(chunk_sums(z * u_coded - 0.5 * u_coded * u_coded, plan).sum()) / LN2
            steps.append(StepSymbols(n_chunks, idx.cpu().numpy().astype(np.int32),  # one index per chunk after splitting
                                     parts.numpy().astype(np.int32) if p.split_min else None))
            res.step_kl_bits.append(kl_bits)
            res.step_delivered_bits.append(delivered)
            res.step_chunks.append(n_chunks)
            res.step_indices.append(plan.n_chunks)
            x = x_next
            if k in stops:
                points.append((k, x.clone()))
            if max_bits is not None:
                ideal += sum(step_bits(steps[-1], steps[-2] if k > 1 else None, p.num_candidates, p.chunk_bits,
                                       p.split_min))
                header_bits = 8 * fmt.header_size(self._header(width, height, k, caption))
                if header_bits + ideal > max_bits and \
                        header_bits + 8 * len(self._payloads(steps, [k], x.numel())[0][0]) > max_bits:
                    if not points or points[-1][0] != k:
                        points.append((k, x.clone()))
                    break
        payloads = self._payloads(steps, [k for k, _ in points], x.numel())
        for (k, x_k), (payload, cost) in zip(points, payloads):
            header = self._header(width, height, k, caption)
            data = fmt.write(header, payload)
            coded = cost.side_bits + cost.index_bits
            side = 8 * len(payload) * (cost.side_bits / coded if coded else 0.0)
            res.points.append(RatePoint(
                timestep=self.timesteps[k], step_index=k, data=data, x_t=x_k, width=width, height=height,
                bits_header=8 * (len(data) - len(payload)), bits_side=side, bits_payload=8 * len(payload) - side,
                kl_bits=sum(res.step_kl_bits[:k]), delivered_bits=sum(res.step_delivered_bits[:k])))
        res.encode_s = time.perf_counter() - t0
        return res

    def _payloads(self, steps: list[StepSymbols], lengths: list[int], n_dims: int):
        """Range-coded payloads (bytes, ideal cost) of the first n steps, for each n in ``lengths``."""
        p = self.params
        return encode_prefixes(steps, lengths, p.num_candidates, p.chunk_bits, count_bound(n_dims), p.split_min)

    def check_header(self, header: fmt.Header) -> None:
        """Raise FingerprintMismatch unless the file was written by this backbone + parameters."""
        if header.backbone != self.backbone.name:
            raise fmt.FingerprintMismatch(
                f"file was written with backbone {header.backbone!r}, but {self.backbone.name!r} is loaded")
        if header.fingerprint != self.fingerprint():
            raise fmt.FingerprintMismatch(
                f"file fingerprint {header.fingerprint.hex()} does not match the loaded {self.backbone.name!r} "
                f"config/weights and codec parameters ({self.fingerprint().hex()})")

    @torch.no_grad()
    def decode(self, data: bytes, reconstruct: bool = True, progress: bool = False,
               recon: str | None = None, recon_steps: int | None = None) -> DecodeResult:
        """Rebuild x_t from a .diffc file and (optionally) reconstruct the image."""
        if recon is not None and recon not in fmt.RECON_MODES:
            raise ValueError(f"recon must be one of {fmt.RECON_MODES}, got {recon!r}")
        if recon_steps is not None and not 1 <= recon_steps <= 1000:
            raise ValueError("recon_steps must be in 1..1000")
        t0 = time.perf_counter()
        header, payload = fmt.read(data)
        params = params_from_header(header)
        if params != self.params:  # every codec parameter comes from the file
            return DiffcCodec(self.backbone, params).decode(data, reconstruct, progress, recon, recon_steps)
        self.check_header(header)
        if header.n_steps >= len(self.timesteps):
            raise fmt.CorruptFile(f"corrupt .diffc file: {header.n_steps} steps but the schedule has {len(self.timesteps) - 1}")
        b = self.backbone
        pad_h = header.height + (-header.height % b.size_multiple)
        pad_w = header.width + (-header.width % b.size_multiple)
        shape = b.latent_shape(pad_h, pad_w)
        cond = b.condition(header.caption)
        p = self.params
        try:
            dec = StepDecoder(payload, p.num_candidates, p.chunk_bits, p.split_min)
        except ValueError as e:
            raise fmt.CorruptFile(f"corrupt .diffc file: {e}") from None
        x = self._start(shape)
        n_dims = math.prod(shape)
        for k in tqdm(range(1, header.n_steps + 1), desc="decode", unit="step", disable=not progress, leave=False):
            _, mu_p, pc = self._prior(x, k, cond)
            try:
                plan = self._plan(x, k, dec.next_count(count_bound(n_dims)))
                plan = plan.split_chunks(torch.from_numpy(dec.next_parts(plan.n_chunks, count_bound(n_dims))))
                idx = torch.from_numpy(dec.next_indices(plan.n_chunks))
            except (ValueError, RuntimeError) as e:
                raise fmt.CorruptFile(f"corrupt .diffc file: payload does not decode at step {k} ({e})") from None
            x, _ = self._sample(mu_p, pc.std, plan, idx, k)
        t = self.timesteps[header.n_steps]
        image = None
        if reconstruct:
            image = self.reconstruct(x, t, header.height, header.width, cond,
                                     recon or header.recon, recon_steps or header.recon_steps)
        return DecodeResult(header, t, x, image, time.perf_counter() - t0)

    # ---- reconstruction -------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, t: int, cond: Any = None, mode: str = "ode", steps: int = 50) -> torch.Tensor:
        """x0 estimate from x_t: one-step posterior mean, or DDIM (eta = 0) over ``steps`` steps."""
        if mode == "denoise" or t == 0:
            return self.backbone.predict_x0(x_t, t, cond)
        if mode != "ode":
            raise ValueError(f"unknown reconstruction mode {mode!r}")
        grid = sorted({int(round(v)) for v in np.linspace(t, 0, steps + 1)}, reverse=True)
        sched = self.backbone.schedule
        x = x_t
        for i, ti in enumerate(grid[:-1]):
            x0_hat = self.backbone.predict_x0(x, ti, cond)
            a, s = sched.a_s(ti)
            eps = (x - a * x0_hat) / s
            a_n, s_n = sched.a_s(grid[i + 1])
            x = a_n * x0_hat + s_n * eps
        return self.backbone.predict_x0(x, grid[-1], cond)

    def reconstruct(self, x_t: torch.Tensor, t: int, height: int, width: int, cond: Any = None,
                    mode: str | None = None, steps: int | None = None) -> torch.Tensor:
        """Image [3, height, width] in [0, 1] from the transmitted x_t."""
        x0 = self.denoise(x_t, t, cond, mode or self.params.recon, steps or self.params.recon_steps)
        return self.backbone.decode(x0)[:, :height, :width].clamp(0, 1)

    def vae_roundtrip(self, image: torch.Tensor) -> torch.Tensor:
        """The image through the backbone's autoencoder only (the quality ceiling)."""
        _check_image(image)
        h, w = image.shape[-2:]
        img = pad_to_multiple(image.to(self.backbone.device, torch.float32), self.backbone.size_multiple)
        return self.backbone.decode(self.backbone.encode(img))[:, :h, :w].clamp(0, 1)


def params_from_header(header: fmt.Header) -> CodecParams:
    """The codec parameters a file was written with."""
    try:
        encoding_timesteps(header.schedule)
        return CodecParams(header.schedule, header.chunk_bits, header.padding_bits, header.seed,
                           header.recon, header.recon_steps, header.split_above)
    except ValueError as e:
        raise fmt.CorruptFile(f"corrupt .diffc file: {e}") from None


def _check_image(image: torch.Tensor) -> None:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    if image.shape[1] > fmt.MAX_SIDE or image.shape[2] > fmt.MAX_SIDE or image.shape[1] * image.shape[2] > fmt.MAX_PIXELS:
        raise ValueError(f"image sides must be <= {fmt.MAX_SIDE} and pixels <= {fmt.MAX_PIXELS}")
