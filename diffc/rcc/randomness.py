"""Counter-based shared randomness: standard normals with random access, exact on every device.

Every random number of the codec is a pure function of (seed, stream, row, column):

    P[col] = h(col + key),   R[row] = h(h(row + key) ^ ROW_SALT),   entry(row, col) = N(h(P[col] ^ R[row]))

with ``h`` the 32-bit "lowbias32" integer hash (two xorshift-multiply rounds), ``key`` the
stream key (``stream_key``: seed + labels), ROW_SALT = 0x5BD1E995 a fixed constant that makes
the row hash a different function from the column hash (R[i] is not P[i]), and N the
integer-exact inverse normal CDF below. A candidate of PFR is a *row*, a latent entry is a
*column*. Nothing depends on call order, tensor shape or thread count, so the decoder regenerates
one candidate of a chunk (its columns only) without producing the K-1 others, and it gets exactly
the entries the encoder scored. Rows and columns enter through separate hashes, never through
``row * n_cols + col``: no index product can overflow (the reference's 32-bit-offset bug cannot
happen by construction).

Integer-exact normal N(x) of a 32-bit hash x: the top bit is the sign, the other 31 bits v give
the tail probability p = (v + 1/2) / 2^32 in (0, 1/2), and |z| = Phi^-1(1 - p) is read from a
table of Phi^-1 in fixed point (``NORMAL_FRAC_BITS`` = 28 fraction bits, int32) with linear
interpolation in integers:

    sh = bit length of (v >> 9)           (0..22; v < 512: sh = 0, the table holds v itself)
    i  = sh * 256 + (v >> sh),  f = v mod 2^sh
    |z| = round((T[i] * 2^sh + (T[i+1] - T[i]) * f) / 2^sh) * 2^-28

i.e. octaves of p (v in [2^e, 2^(e+1))) cut into 256 equal sub-intervals, whose end points are
the table's 6,145 nodes; T[i] = round(2^28 Phi^-1(1 - (node + 1/2) / 2^32)), computed once with
mpmath at 40 digits (``build_normal_table``) and shipped as package data
(``diffc/rcc/data/normal_icdf.i32``, sha256 pinned in tests/test_randomness.py). The bit length is
read from the exponent of float32(v >> 9) (exact: below 2^24); the sign is applied to the
integer; the one rounding is int32 -> float32 (round to nearest even, IEEE, the same on every
CPU and GPU), then an exact scaling by 2^-28. So a normal's bits are the same on the CPU and
CUDA, in torch and in the fused CPU kernels (``diffc.rcc.fused``), whatever the thread count, and
files are portable between device types: candidates are bit-identical everywhere (the backbone's
float ops are what still differ, ``diffc.determinism``). Accuracy: |z - Phi^-1| <= 1e-6
(linear interpolation; measured 8.7e-7), |z| <= 6.35 (the 2^-33 tail is cut).

Integer work is int32 with two's-complement wrap-around (as on CPU and CUDA); right shifts are
made logical by masking. Uniforms (``uniforms``, the encoder's arrival times) keep 24 bits.
"""
from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import numpy as np
import torch

_C1 = 0x7FEB352D
_C2 = 0x846CA68B - (1 << 32)  # as signed int32
_INV24 = 1.0 / (1 << 24)
#: xored into h(row + key) before the second hash, so that the row hash is a different function
#: from the column hash (MurmurHash2's multiplier, used here only as a fixed constant).
#: Part of the format: changing it changes every candidate and every bitstream.
ROW_SALT = 0x5BD1E995
#: fraction bits of the inverse-CDF table's fixed-point values (|z| < 8 < 2^3: int32 holds them)
NORMAL_FRAC_BITS = 28
#: table nodes: v = 0..511, then 256 per octave of v for bit lengths 10..31, and v = 2^31
NORMAL_TABLE_SIZE = 23 * 256 + 257
NORMAL_TABLE_FILE = Path(__file__).with_name("data") / "normal_icdf.i32"


def normal_table_nodes() -> np.ndarray:
    """The v (31-bit tail counter) of each table entry: int64 [NORMAL_TABLE_SIZE], i = sh 256 + (v >> sh)."""
    sh = np.repeat(np.arange(23, dtype=np.int64), 256)
    j = np.tile(np.arange(256, 512, dtype=np.int64), 23)
    return np.concatenate([np.arange(256, dtype=np.int64), j << sh, [1 << 31]])


def build_normal_table() -> np.ndarray:
    """The table from its definition: round(2^28 Phi^-1(1 - (v + 1/2) / 2^32)) at every node,
    in mpmath at 40 significant digits (int32; seconds). Tests compare it with the shipped file."""
    import mpmath  # a dependency of torch (through sympy)

    with mpmath.workdps(40):
        scale = mpmath.mpf(2) ** NORMAL_FRAC_BITS
        vals = [int(mpmath.nint(mpmath.sqrt(2) * mpmath.erfinv(1 - mpmath.mpf(2 * int(v) + 1) / 2 ** 32) * scale))
                for v in normal_table_nodes()]
    return np.array(vals, dtype=np.int32)


@functools.cache
def normal_table() -> np.ndarray:
    """The shipped table (``NORMAL_TABLE_FILE``): int64 [NORMAL_TABLE_SIZE], read-only."""
    t = np.frombuffer(NORMAL_TABLE_FILE.read_bytes(), dtype="<i4").astype(np.int64)
    if t.size != NORMAL_TABLE_SIZE:
        raise RuntimeError(f"{NORMAL_TABLE_FILE} holds {t.size} entries, expected {NORMAL_TABLE_SIZE}")
    t.flags.writeable = False
    return t


#: the table as an int64 tensor per device (a plain dict: ``torch.compile`` reads it as a constant)
_TABLES: dict[torch.device, torch.Tensor] = {}


def _table(device: torch.device) -> torch.Tensor:
    """The table as an int64 tensor on ``device`` (one copy per device)."""
    table = _TABLES.get(device)
    if table is None:
        table = _TABLES[device] = torch.from_numpy(normal_table().copy()).to(device)
    return table


@torch.library.custom_op("diffc::aten_log", mutates_args=())
def _aten_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x)


_aten_log.register_fake(torch.empty_like)


def exact_log(x: torch.Tensor) -> torch.Tensor:
    """torch.log by aten's kernel, also under ``torch.compile``: there the call is an opaque custom
    op, since inductor's own CPU kernels may round differently, and a compiled search must score
    exactly the candidates (and arrival times) the eager one does."""
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
    """Standard normal from a 32-bit hash by the integer-exact inverse CDF (module docstring):
    bit-identical on every device and thread count. float32 by default; float64 keeps the fixed
    point's 28 fraction bits exactly (no float32 rounding). ``out`` (a ``dtype`` tensor of h's
    shape) receives the result; ``h`` is left alone."""
    table = _table(h.device)
    v = h.bitwise_and(0x7FFFFFFF)
    sh = torch.bitwise_right_shift(v, 9).to(torch.float32).view(torch.int32)
    sh = torch.bitwise_right_shift(sh, 23).sub_(126).clamp_min_(0).to(torch.int64)  # bit length of v >> 9
    v = v.to(torch.int64)
    i = torch.bitwise_left_shift(sh, 8).add_(torch.bitwise_right_shift(v, sh))
    one = torch.bitwise_left_shift(torch.ones_like(sh), sh)
    t0, t1 = table[i], table[i.add_(1)]
    x = torch.bitwise_left_shift(t0, sh).add_(t1.sub_(t0).mul_(v.bitwise_and_(one - 1))).add_(one >> 1)
    x = torch.bitwise_right_shift(x, sh).to(torch.int32)
    x = torch.where(h < 0, x.neg(), x)
    z = x.to(dtype).mul_(2.0 ** -NORMAL_FRAC_BITS)
    return z if out is None else out.copy_(z)


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
