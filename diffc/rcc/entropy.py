"""Entropy models for the .diffc payload (coded with constriction's range coder).

Per coded step the stream holds
1. side information: the step's chunk count n (an integer >= 1), under a quantized Laplace
   centred on the previous step's count (scale COUNT_SCALE_MIN + n_prev / COUNT_SCALE_DIVISOR);
2. when heavy chunks may be split (``split_min`` > 0, ``diffc.rcc.pfr.split_parts``): the number m
   of split chunks among the plan's C (quantized Laplace centred on the previous step's m), a
   flag per chunk under Bernoulli(m / C) (skipped when m is 0 or C), and each split chunk's
   parts s - split_min under a Zipf law ~ (e + 1)^-PARTS_ZIPF;
3. one PFR index per chunk (after splitting), under a truncated Zipf law P(N = n) ~
   (n + 1)^-(1 + 1/lambda) on 0..K-1, lambda = ZIPF_SCALE * chunk_bits * ln 2 (nats): the law of
   PFR indices for a chunk carrying about ``chunk_bits`` of KL (Li & El Gamal 2018).

Code lengths are reported in bits (log2).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import constriction
import numpy as np

from .pfr import MAX_PARTS

#: lambda / (chunk KL in nats). Li & El Gamal's law for an untruncated search is scale 1; with the
#: codec's truncated searches (K = 2^(chunk_bits + padding_bits)) the indices are nearly
#: log-uniform, P(N = n) ~ 1/(n + 1): benchmarks/coding_efficiency.py finds the best scale of
#: its grid at 64 for every setting (8/2: 7.61 -> 7.50 bits per chunk against scale 1).
ZIPF_SCALE = 64.0
#: floor of the Zipf law's lambda (nats): keeps the exponent 1 + 1/lambda finite for chunk_bits -> 0
MIN_ZIPF_LAMBDA = 1e-3
#: largest chunk count any model codes: constriction's quantized models have 24-bit precision,
#: so a support above 2^24 symbols cannot give every symbol a nonzero quantum
MAX_CHUNKS = (1 << 24) - 1
#: chunk counts per latent entry that ``count_bound`` allows (entries are split into parts beyond
#: one chunk's share, ``diffc.rcc.pfr.make_plan``)
CHUNKS_PER_ENTRY = 64
#: cap of ``count_bound`` (2^20): far enough below MAX_CHUNKS that the 24-bit count model stays sharp
MAX_COUNT_BOUND = 1 << 20
#: Laplace scale of a chunk count (and of a split count) given the previous step's value v:
#: COUNT_SCALE_MIN + v / COUNT_SCALE_DIVISOR, i.e. counts may move by about 1/8 of their size per
#: step, and by about one when small. Part of the format: changing either changes every bitstream.
COUNT_SCALE_MIN = 1.0
COUNT_SCALE_DIVISOR = 8.0
#: the "previous step" values the first coded step is predicted from: one chunk, no split chunks
FIRST_COUNT = 1
FIRST_SPLIT_COUNT = 0
#: smallest probability ``laplace_bits`` takes the log of (a mass that underflows to 0 costs
#: ~997 bits instead of infinity)
MIN_PROBABILITY = 1e-300
#: exponent of the law of (parts - split_min) of a split chunk; fits benchmarks/coding_efficiency.py
#: (8/2 and 12/2 at split_above 2: 66 %, 16 %, 9 %, 3 %, ... for e = 0, 1, 2, 3)
PARTS_ZIPF = 2.0


@functools.lru_cache(maxsize=32)
def zipf_probabilities(num_candidates: int, chunk_bits: float, scale: float | None = None) -> np.ndarray:
    """float64 [K] truncated Zipf probabilities for PFR indices (``scale`` None = ZIPF_SCALE)."""
    lam = max((ZIPF_SCALE if scale is None else scale) * chunk_bits * math.log(2), MIN_ZIPF_LAMBDA)
    n = np.arange(1, num_candidates + 1, dtype=np.float64)
    logp = -(1.0 + 1.0 / lam) * np.log(n)
    p = np.exp(logp - logp.max())
    return p / p.sum()


@functools.lru_cache(maxsize=32)
def _index_model(num_candidates: int, chunk_bits: float):
    return constriction.stream.model.Categorical(zipf_probabilities(num_candidates, chunk_bits), perfect=False)


def count_bound(n_dims: int) -> int:
    """Largest chunk count of a step on a latent of ``n_dims`` entries (the count model's support,
    known to the decoder): CHUNKS_PER_ENTRY (64) chunks per entry (entries are split into parts
    beyond one chunk's share, ``diffc.rcc.pfr.make_plan``), at most MAX_COUNT_BOUND (2^20) so the 24-bit
    quantized model stays sharp; at least 2 (constriction's smallest support)."""
    return max(2, min(MAX_COUNT_BOUND, CHUNKS_PER_ENTRY * n_dims))


@functools.lru_cache(maxsize=32)
def _count_model(max_chunks: int):
    # Support 1..max_chunks (the decoder knows the bound: count_bound of the latent size). Over the whole
    # 1..MAX_CHUNKS range the coder's 24-bit leaky quantization gives every one of the 2^24 symbols
    # one quantum, i.e. a uniform law: ~24 bits per count instead of a few. constriction needs >= 2
    # symbols.
    return constriction.stream.model.QuantizedLaplace(1, max(2, min(max_chunks, MAX_CHUNKS)))


def _count_params(prev: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) arrays of the quantized Laplace of a count whose previous value is ``prev``."""
    return np.array([float(prev)]), np.array([COUNT_SCALE_MIN + prev / COUNT_SCALE_DIVISOR])


@functools.lru_cache(maxsize=32)
def _split_count_model(max_chunks: int):
    return constriction.stream.model.QuantizedLaplace(0, max(1, min(max_chunks, MAX_CHUNKS)))


@functools.lru_cache(maxsize=8)
def _parts_log2(split_min: int) -> np.ndarray:
    """log2 P(parts - split_min = e), e = 0..MAX_PARTS - split_min."""
    e = np.arange(MAX_PARTS - split_min + 1, dtype=np.float64)
    logp = -PARTS_ZIPF * np.log2(e + 1)
    return logp - np.log2(np.exp2(logp).sum())


@functools.lru_cache(maxsize=8)
def _parts_model(split_min: int):
    return constriction.stream.model.Categorical(np.exp2(_parts_log2(split_min)), perfect=False)


def _flag_model(m: int, c: int):
    return constriction.stream.model.Categorical(np.array([1.0 - m / c, m / c]), perfect=False)


@dataclass
class StepSymbols:
    """What one coded step puts in the stream."""

    n_chunks: int  # the chunk count sent (the plan may hold fewer non-empty chunks)
    indices: np.ndarray  # int32 [plan chunks after splitting]
    parts: np.ndarray | None = None  # int32 [plan chunks before splitting], >= 1; None = no splitting

    @property
    def n_split(self) -> int:
        return 0 if self.parts is None else int((np.asarray(self.parts) > 1).sum())


@dataclass
class StreamCost:
    """Ideal code lengths in bits, split by kind."""

    side_bits: float = 0.0
    index_bits: float = 0.0
    per_step: list[tuple[float, float]] = field(default_factory=list)


def laplace_bits(x: int, mean: float, scale: float) -> float:
    """-log2 of the quantized Laplace mass of integer x (unbounded support; ideal code length)."""
    cdf = lambda v: 0.5 * math.exp((v - mean) / scale) if v < mean else 1 - 0.5 * math.exp(-(v - mean) / scale)
    return -math.log2(max(cdf(x + 0.5) - cdf(x - 0.5), MIN_PROBABILITY))


@functools.lru_cache(maxsize=8)
def _zipf_log2(num_candidates: int, chunk_bits: float) -> np.ndarray:
    return np.log2(zipf_probabilities(num_candidates, chunk_bits))


def step_bits(st: StepSymbols, prev: StepSymbols | None, num_candidates: int, chunk_bits: float,
              split_min: int = 0) -> tuple[float, float]:
    """Ideal code lengths in bits (side, indices) of one step that follows step ``prev`` (None: the first)."""
    mean, scale = _count_params(prev.n_chunks if prev else FIRST_COUNT)
    side = laplace_bits(st.n_chunks, mean[0], scale[0])
    if split_min:
        parts = np.asarray(st.parts)
        c, m = parts.size, st.n_split
        mean, scale = _count_params(prev.n_split if prev else FIRST_SPLIT_COUNT)
        side += laplace_bits(m, mean[0], scale[0])
        if 0 < m < c:
            side -= m * math.log2(m / c) + (c - m) * math.log2(1 - m / c)
        side -= float(_parts_log2(split_min)[parts[parts > 1] - split_min].sum())
    return side, float(-_zipf_log2(num_candidates, chunk_bits)[np.asarray(st.indices)].sum())


class PayloadEncoder:
    """constriction's range encoder with a byte-granular final flush (``sealed``).

    constriction writes 32-bit words, the last one the top word of a point in the coder's final
    interval [lower, lower + range); the decoder reads zeros past the end of its words. The payload
    is the words big-endian (the last word's low-order bytes last), and ``sealed`` drops the last
    word's k = 3, 2, 1 low-order bytes, rounding the kept part up by one unit (the point rises from
    the sealed one, so it stays >= lower) when the decoder, fed the shorter stream (zero-padded,
    ``payload_decoder``), reads back every symbol encoded: checked by replaying the recorded
    ``encode`` calls through a decoder, so a payload is only ever cut where the decoder provably
    reads exactly what was encoded. Saves 0..3 bytes per file (on average about 1.5, what whole
    words wasted). ``encode`` takes constriction's arguments (symbols, model, model parameters...)."""

    def __init__(self):
        self._enc = constriction.stream.queue.RangeEncoder()
        self._calls: list[tuple] = []

    def encode(self, symbols: np.ndarray, model, *params: np.ndarray) -> None:
        symbols = np.asarray(symbols, dtype=np.int32)
        self._enc.encode(symbols, model, *params)
        self._calls.append((symbols, model, params))

    def min_bytes(self) -> int:
        """A lower bound of the sealed payload's length (no sealing): the last word keeps >= 1 byte,
        and more symbols never shorten it. A decoder that re-codes what it reads refuses a payload
        shorter than this as soon as it is (``PfrChannel.receive``): a forged header's step count
        then costs work in proportion to the payload, not to the claim."""
        words = self._enc.num_words()
        return 4 * (words - 1) + 1 if words else 0

    def _reads_back(self, payload: bytes) -> bool:
        dec = payload_decoder(payload)
        try:
            for symbols, model, params in self._calls:
                out = dec.decode(model, *params) if params else dec.decode(model, symbols.size)
                if not np.array_equal(np.asarray(out, dtype=np.int32).reshape(-1), symbols.reshape(-1)):
                    return False
        except (AssertionError, RuntimeError, ValueError):
            return False
        return True

    def sealed(self) -> bytes:
        """The shortest payload (whole words, then the last word cut to 3, 2 or 1 bytes) that
        decodes to every symbol encoded so far; the encoder keeps running."""
        words = self._enc.clone().get_compressed().astype(">u4")
        full = words.tobytes()
        if not words.size:
            return full
        head, last = full[:-4], int(words[-1])
        best = full
        for cut in (1, 2, 3):  # bytes dropped from the last word, most kept first: stop at the first that fails
            kept = (last >> (8 * cut)) + 1
            if kept >> (8 * (4 - cut)):
                break  # rounding up overflows the word
            candidate = head + kept.to_bytes(4 - cut, "big")
            if not self._reads_back(candidate):
                break
            best = candidate
        return best


def payload_decoder(payload: bytes) -> constriction.stream.queue.RangeDecoder:
    """A range decoder over a payload: big-endian 32-bit words, the last one zero-padded when the
    payload is not whole words (``PayloadEncoder.sealed``)."""
    padded = bytes(payload) + bytes(-len(payload) % 4)
    return constriction.stream.queue.RangeDecoder(np.frombuffer(padded, dtype=">u4").astype(np.uint32))


class StepEncoder:
    """Range-codes steps one at a time; ``seal`` gives the stream of the steps pushed so far
    (a sealed copy of the running coder: O(stream size), no re-encoding), so a progressive
    encoder gets every prefix's bytes, and exact file sizes for rate targets, in one pass."""

    def __init__(self, num_candidates: int, chunk_bits: float, max_chunks: int = MAX_CHUNKS, split_min: int = 0):
        self.num_candidates, self.chunk_bits = num_candidates, chunk_bits
        self.max_chunks, self.split_min = max_chunks, split_min
        self._enc = PayloadEncoder()
        self._cost = StreamCost()
        self._prev: StepSymbols | None = None

    def push(self, st: StepSymbols) -> None:
        """Append one step's symbols (chunk count, split side information, indices)."""
        max_chunks, split_min, prev, enc = self.max_chunks, self.split_min, self._prev, self._enc
        if not 1 <= st.n_chunks <= min(max_chunks, MAX_CHUNKS):
            raise ValueError(f"chunk count {st.n_chunks} outside 1..{min(max_chunks, MAX_CHUNKS)}")
        if split_min:
            parts = np.asarray(st.parts, dtype=np.int32)
            split = parts > 1
            if parts.size > max_chunks or (split & (parts < split_min)).any() or (parts > MAX_PARTS).any():
                raise ValueError(f"split parts must be 1 or {split_min}..{MAX_PARTS}, for at most {max_chunks} chunks")
        mean, scale = _count_params(prev.n_chunks if prev else FIRST_COUNT)
        enc.encode(np.array([st.n_chunks], dtype=np.int32), _count_model(max_chunks), mean, scale)
        if split_min:
            m, c = st.n_split, parts.size
            mean, scale = _count_params(prev.n_split if prev else FIRST_SPLIT_COUNT)
            enc.encode(np.array([m], dtype=np.int32), _split_count_model(max_chunks), mean, scale)
            if 0 < m < c:
                enc.encode(split.astype(np.int32), _flag_model(m, c))
            if m:
                enc.encode(parts[split] - split_min, _parts_model(split_min))
        enc.encode(np.asarray(st.indices, dtype=np.int32), _index_model(self.num_candidates, self.chunk_bits))
        sb, ib = step_bits(st, prev, self.num_candidates, self.chunk_bits, split_min)
        self._cost.side_bits += sb
        self._cost.index_bits += ib
        self._cost.per_step.append((sb, ib))
        self._prev = st

    def min_bytes(self) -> int:
        """``PayloadEncoder.min_bytes`` of the steps pushed so far."""
        return self._enc.min_bytes()

    def seal(self) -> tuple[bytes, StreamCost]:
        """(bytes, ideal cost split) of the steps pushed so far; the coder keeps running."""
        c = self._cost
        return self._enc.sealed(), StreamCost(c.side_bits, c.index_bits, list(c.per_step))


class StepDecoder:
    """Decodes steps one at a time from a payload (the decoder needs step s before it can plan s+1)."""

    def __init__(self, payload: bytes, num_candidates: int, chunk_bits: float, split_min: int = 0):
        self._dec = payload_decoder(payload)
        self._model = _index_model(num_candidates, chunk_bits)
        self._prev = FIRST_COUNT
        self._split_min = split_min
        self._prev_split = FIRST_SPLIT_COUNT

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

    def next_parts(self, n_chunks: int, max_chunks: int) -> np.ndarray:
        """Parts per chunk of the plan's ``n_chunks`` chunks (all ones when splitting is off)."""
        parts = np.ones(n_chunks, dtype=np.int64)
        if not self._split_min:
            return parts
        mean, scale = _count_params(self._prev_split)
        m = int(self._decode(_split_count_model(max_chunks), mean, scale)[0])
        if not 0 <= m <= n_chunks:
            raise ValueError(f"decoded split count {m} outside 0..{n_chunks}")
        split = (np.ones(n_chunks, dtype=bool) if m == n_chunks else np.zeros(n_chunks, dtype=bool) if m == 0
                 else np.asarray(self._decode(_flag_model(m, n_chunks), n_chunks), dtype=bool))
        if int(split.sum()) != m:
            raise ValueError(f"decoded {int(split.sum())} split flags, expected {m}")
        if m:
            parts[split] = np.asarray(self._decode(_parts_model(self._split_min), m), dtype=np.int64) + self._split_min
        self._prev_split = m
        return parts

    def next_indices(self, n_chunks: int) -> np.ndarray:
        return np.asarray(self._decode(self._model, n_chunks), dtype=np.int64)
