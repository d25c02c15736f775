"""Counter-based shared randomness: standard normals with random access.

Every random number of the codec is a pure function of (seed, stream, row, column):

    P[col] = h(col + key),   R[row] = h(h(row + key) ^ ROW_SALT),   entry(row, col) = N(h(P[col] ^ R[row]))

with ``h`` the 32-bit "lowbias32" integer hash (two xorshift-multiply rounds), ``key`` the
stream key (``stream_key``: seed + labels), ROW_SALT = 0x5BD1E995 a fixed constant that makes
the row hash a different function from the column hash (R[i] is not P[i]), and
N(u) = sqrt(2) erfinv(2u - 1) applied to the top 24 bits of the hash. A candidate of PFR is
a *row*, a latent entry is a *column*. Nothing depends on call order, tensor shape or thread
count, so the decoder regenerates one candidate of a chunk (its columns only) without producing
the K-1 others, and it gets exactly the entries the encoder scored. Rows and columns enter
through separate hashes, never through ``row * n_cols + col``: no index product can overflow
(the reference's 32-bit-offset bug cannot happen by construction).

Integer work is int32 with two's-complement wrap-around (as on CPU and CUDA); right shifts are
made logical by masking. Normals are truncated at |z| ~ 5.4 (24-bit uniforms): a 1e-7 tail.
Floating point (erfinv) may differ between device types, so files are portable between
machines of the same device type (CPU<->CPU, CUDA<->CUDA).
"""
from __future__ import annotations

import hashlib
import math

import torch

_C1 = 0x7FEB352D
_C2 = 0x846CA68B - (1 << 32)  # as signed int32
_SQRT2 = math.sqrt(2.0)
_INV24 = 1.0 / (1 << 24)
#: xored into h(row + key) before the second hash, so that the row hash is a different function
#: from the column hash (MurmurHash2's multiplier, used here only as a fixed constant).
#: Part of the format: changing it changes every candidate and every bitstream.
ROW_SALT = 0x5BD1E995


@torch.library.custom_op("diffc::aten_erfinv", mutates_args=())
def _aten_erfinv(x: torch.Tensor) -> torch.Tensor:
    return torch.erfinv(x)


@torch.library.custom_op("diffc::aten_log", mutates_args=())
def _aten_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x)


_aten_erfinv.register_fake(torch.empty_like)
_aten_log.register_fake(torch.empty_like)


def exact_erfinv_(x: torch.Tensor) -> torch.Tensor:
    """erfinv of ``x`` (in place when eager) by aten's kernel, also under ``torch.compile``: there
    the call is an opaque custom op, since inductor's own CPU erfinv rounds differently (measured:
    23% of float32 outputs differ in the last bit) and a compiled search must score exactly the
    candidates the eager one does."""
    return _aten_erfinv(x) if torch.compiler.is_compiling() else x.erfinv_()


def exact_log(x: torch.Tensor) -> torch.Tensor:
    """torch.log by aten's kernel, also under ``torch.compile`` (as ``exact_erfinv_``)."""
    return _aten_log(x) if torch.compiler.is_compiling() else torch.log(x)


def stream_key(seed: int, *labels: int) -> int:
    """A 31-bit stream key from the seed and integer labels (step index, purpose, ...)."""
    h = hashlib.blake2b(repr((int(seed),) + tuple(int(v) for v in labels)).encode(), digest_size=4)
    return int.from_bytes(h.digest(), "little") >> 1


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on an int32 tensor (wrapping multiplies, logical shifts); ``x`` is not modified."""
    return hash32_(x.clone(), torch.empty_like(x))


def hash32_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """lowbias32 in place on ``x`` with a same-shape int32 ``scratch`` (overwritten); returns ``x``.

    x ^= x >>> 16; x *= C1; x ^= x >>> 15; x *= C2; x ^= x >>> 16, with >>> made logical by masking.
    No allocation: the encoder hashes every candidate block into the same two buffers (fresh
    multi-MB tensors per op cost page faults, measured ~3x the arithmetic on CPU).
    """
    t = scratch
    for shift, mult in ((16, _C1), (15, _C2), (16, None)):
        torch.bitwise_right_shift(x, shift, out=t).bitwise_and_((1 << (32 - shift)) - 1)
        x.bitwise_xor_(t)
        if mult is not None:
            x.mul_(mult)
    return x


def column_hashes(key: int, cols: torch.Tensor) -> torch.Tensor:
    """P[col] for int columns (any int dtype, values < 2^31)."""
    return hash32(cols.to(torch.int32) + key)


def row_hashes(key: int, rows: torch.Tensor) -> torch.Tensor:
    """R[row] for int rows (values < 2^31)."""
    return hash32(hash32(rows.to(torch.int32) + key) ^ ROW_SALT)


def hash_to_normal(h: torch.Tensor, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal from a 32-bit hash: sqrt(2) erfinv(2u - 1), u = (top 24 bits + 1/2) / 2^24.

    2u - 1 = (2k + 1 - 2^24) / 2^24 is formed in integers first, so it is exact in float32.
    With ``out`` (a ``dtype`` tensor of h's shape) the result goes there and ``h`` is overwritten
    (no allocation); without, ``h`` is left alone.
    """
    k = torch.bitwise_right_shift(h, 8, out=h if out is not None else None)
    k.bitwise_and_(0xFFFFFF).mul_(2).add_(1 - (1 << 24))
    z = k.to(dtype) if out is None else out.copy_(k)
    return exact_erfinv_(z.mul_(_INV24)).mul_(_SQRT2)


def entry_hashes(col_h: torch.Tensor, row_h: torch.Tensor, out: torch.Tensor | None = None,
                 scratch: torch.Tensor | None = None) -> torch.Tensor:
    """h(P[col] ^ R[row]) from precomputed column and row hashes (broadcasting); into ``out``
    (int32, the broadcast shape) with ``scratch`` (same) when given, allocation-free."""
    x = torch.bitwise_xor(col_h, row_h, out=out)
    return hash32_(x, torch.empty_like(x) if scratch is None else scratch)


def normals(key: int, rows: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Entries (row, col) of the stream's infinite Gaussian matrix; rows and cols broadcast."""
    return hash_to_normal(entry_hashes(column_hashes(key, cols), row_hashes(key, rows)), dtype)


def hash_to_uniform(h: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniform in (0, 1) from a 32-bit hash: (top 24 bits + 1/2) / 2^24 (exact in float32/64)."""
    return (((h >> 8) & 0xFFFFFF).to(dtype) + 0.5) * _INV24


def uniforms(key: int, rows: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniforms in (0, 1) from the same construction (24-bit resolution)."""
    return hash_to_uniform(entry_hashes(column_hashes(key, cols), row_hashes(key, rows)), dtype)


def noise_like(seed: int, label: int, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """A reproducible N(0, I) float32 tensor of the given shape (e.g. the pure-noise start x_T)."""
    cols = torch.arange(math.prod(shape), dtype=torch.int32, device=device)
    rows = torch.zeros(1, dtype=torch.int32, device=device)
    return normals(stream_key(seed, label), rows, cols).reshape(shape)
