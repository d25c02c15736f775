"""Entropy models for the .diffc payload (coded with constriction's range coder).

Per coded step the stream holds
1. side information: the step's chunk count n (an integer >= 1), under a quantized Laplace
   centred on the previous step's count (scale 1 + n_prev / 8);
2. one PFR index per chunk, under a truncated Zipf law P(N = n) ~ (n + 1)^-(1 + 1/lambda) on
   0..K-1, lambda = ZIPF_SCALE * chunk_bits * ln 2 (nats): the law of PFR indices for a chunk
   carrying about ``chunk_bits`` of KL (Li & El Gamal 2018).

Code lengths are reported in bits (log2).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import constriction
import numpy as np

#: lambda / (chunk KL in nats); measured by benchmarks/coding_efficiency.py
ZIPF_SCALE = 1.0
MAX_CHUNKS = (1 << 24) - 1


@functools.lru_cache(maxsize=32)
def zipf_probabilities(num_candidates: int, chunk_bits: float) -> np.ndarray:
    """float64 [K] truncated Zipf probabilities for PFR indices."""
    lam = max(ZIPF_SCALE * chunk_bits * math.log(2), 1e-3)
    n = np.arange(1, num_candidates + 1, dtype=np.float64)
    logp = -(1.0 + 1.0 / lam) * np.log(n)
    p = np.exp(logp - logp.max())
    return p / p.sum()


@functools.lru_cache(maxsize=32)
def _index_model(num_candidates: int, chunk_bits: float):
    return constriction.stream.model.Categorical(zipf_probabilities(num_candidates, chunk_bits), perfect=False)


def count_bound(n_dims: int) -> int:
    """Largest chunk count of a step on a latent of ``n_dims`` entries (the count model's support,
    known to the decoder): 64 chunks per entry (entries are split into parts beyond one chunk's
    share, ``diffc.pfr.make_plan``), at most 2^20 so the 24-bit quantized model stays sharp."""
    return max(2, min(1 << 20, 64 * n_dims))


@functools.lru_cache(maxsize=32)
def _count_model(max_chunks: int):
    # Support 1..max_chunks (the decoder knows the bound: count_bound of the latent size). Over the whole
    # 1..MAX_CHUNKS range the coder's 24-bit leaky quantization gives every one of the 2^24 symbols
    # one quantum, i.e. a uniform law: ~24 bits per count instead of a few. constriction needs >= 2
    # symbols.
    return constriction.stream.model.QuantizedLaplace(1, max(2, min(max_chunks, MAX_CHUNKS)))


def _count_params(prev: int) -> tuple[np.ndarray, np.ndarray]:
    return np.array([float(prev)]), np.array([1.0 + prev / 8.0])


@dataclass
class StepSymbols:
    """What one coded step puts in the stream."""

    n_chunks: int
    indices: np.ndarray  # int32 [n_chunks]


@dataclass
class StreamCost:
    """Ideal code lengths in bits, split by kind."""

    side_bits: float = 0.0
    index_bits: float = 0.0
    per_step: list[tuple[float, float]] = field(default_factory=list)


def laplace_bits(x: int, mean: float, scale: float) -> float:
    """-log2 of the quantized Laplace mass of integer x (unbounded support; ideal code length)."""
    cdf = lambda v: 0.5 * math.exp((v - mean) / scale) if v < mean else 1 - 0.5 * math.exp(-(v - mean) / scale)
    return -math.log2(max(cdf(x + 0.5) - cdf(x - 0.5), 1e-300))


@functools.lru_cache(maxsize=8)
def _zipf_log2(num_candidates: int, chunk_bits: float) -> np.ndarray:
    return np.log2(zipf_probabilities(num_candidates, chunk_bits))


def step_bits(st: StepSymbols, prev: int, num_candidates: int, chunk_bits: float) -> tuple[float, float]:
    """Ideal code lengths in bits (side, indices) of one step that follows a step of ``prev`` chunks."""
    mean, scale = _count_params(prev)
    return (laplace_bits(st.n_chunks, mean[0], scale[0]),
            float(-_zipf_log2(num_candidates, chunk_bits)[np.asarray(st.indices)].sum()))


def encode_steps(steps: list[StepSymbols], num_candidates: int, chunk_bits: float,
                 max_chunks: int = MAX_CHUNKS) -> tuple[bytes, StreamCost]:
    """Range-code a sequence of steps; returns the bytes and the ideal cost split.

    ``max_chunks`` bounds every chunk count (the decoder passes the same bound to ``next_count``).
    """
    enc = constriction.stream.queue.RangeEncoder()
    cost = StreamCost()
    prev = 1
    for st in steps:
        if not 1 <= st.n_chunks <= min(max_chunks, MAX_CHUNKS):
            raise ValueError(f"chunk count {st.n_chunks} outside 1..{min(max_chunks, MAX_CHUNKS)}")
        mean, scale = _count_params(prev)
        enc.encode(np.array([st.n_chunks], dtype=np.int32), _count_model(max_chunks), mean, scale)
        enc.encode(np.asarray(st.indices, dtype=np.int32), _index_model(num_candidates, chunk_bits))
        sb, ib = step_bits(st, prev, num_candidates, chunk_bits)
        cost.side_bits += sb
        cost.index_bits += ib
        cost.per_step.append((sb, ib))
        prev = st.n_chunks
    words = enc.get_compressed()
    return words.astype("<u4").tobytes(), cost


class StepDecoder:
    """Decodes steps one at a time from a payload (the decoder needs step s before it can plan s+1)."""

    def __init__(self, payload: bytes, num_candidates: int, chunk_bits: float):
        if len(payload) % 4:
            raise ValueError("payload length is not a multiple of 4 bytes")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        self._dec = constriction.stream.queue.RangeDecoder(words)
        self._model = _index_model(num_candidates, chunk_bits)
        self._prev = 1

    def _decode(self, *args):
        try:
            return self._dec.decode(*args)
        except (AssertionError, RuntimeError) as e:  # constriction: "invalid for the employed entropy model"
            raise ValueError(f"invalid range-coded data ({e})") from None

    def next_count(self, max_chunks: int) -> int:
        mean, scale = _count_params(self._prev)
        n = int(self._decode(_count_model(max_chunks), mean, scale)[0])
        if not 1 <= n <= max_chunks:
            raise ValueError(f"decoded chunk count {n} outside 1..{max_chunks}")
        self._prev = n
        return n

    def next_indices(self, n_chunks: int) -> np.ndarray:
        return np.asarray(self._decode(self._model, n_chunks), dtype=np.int64)
