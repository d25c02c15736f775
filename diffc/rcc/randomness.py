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

Wide form (the torch search's blocks: CUDA, meta, ``compile``): the same numbers with fewer
tensor ops, each a kernel launch on a GPU (benchmarks/gpu_readiness.py). Hashes are held as int64
in 0..2^32-1 (``wide=True``), so shifts need no mask (10 ops per hash instead of 15; C2 enters as
the negative int32 constant, so every product stays below 2^63 in magnitude). The normal reads its
table index and fraction from the bits b of float64(v) (exact: v < 2^31): with L the bit length of
v and sh = max(L - 9, 0), b >> 44 = j is the exponent and top 8 mantissa bits (one j per table
cell, J = ``WIDE_TABLE_SIZE`` values) and b >> 22 = j 2^22 + f 2^(22 - sh) (sh <= 22). So

    q = (T[i] 2^22 + 2^21 + dT (f 2^(22 - sh))) >> 22 = (A[j] + D[j] (b >> 22)) >> 22,
    A[j] = T[i] 2^22 + 2^21 - D[j] j 2^22,  D[j] = T[i + 1] - T[i] (0 for i < 512)

is the module's interpolation exactly (the same floor of the same rational, scaled by 2^(22 - sh);
for v < 512, f = 0 and the low 44 bits of b are 0); a negative hash reads a second half of the
tables that gives -q the same way. ``wide_normal_tables`` derives (A, D) from the shipped table;
tests/test_randomness.py checks the wide form against the int32 one on every table cell's ends and
on random hashes.
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
_M32 = 0xFFFFFFFF
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


#: the wide normal's table index: bits 44.. of float64(v), v < 2^31 (module docstring)
WIDE_INDEX_SHIFT = 44
#: ... and its fraction's scale: bits 22.. of float64(v)
WIDE_FRAC_SHIFT = 22
#: j of float64(2^31 - 1), plus one
WIDE_TABLE_SIZE = (1022 + 31) * 256 + 256
#: where the negative half of the wide tables starts (j + s WIDE_SIGN_OFFSET, s = the hash's bit 31)
WIDE_SIGN_OFFSET = 1 << 19


@functools.cache
def wide_normal_tables() -> np.ndarray:
    """(A, D) of the wide normal (module docstring): int64 [2, WIDE_SIGN_OFFSET + WIDE_TABLE_SIZE],
    derived from the shipped table, at j for a positive hash and at WIDE_SIGN_OFFSET + j for a
    negative one (A' = 2^22 - 1 - A, D' = -D: floor((2^22 - 1 - n) / 2^22) = -floor(n / 2^22));
    entries no hash reaches are 0. Read-only."""
    t = normal_table()
    nodes = normal_table_nodes()[:-1]  # the first v of each table cell
    j = nodes.astype(np.float64).view(np.int64) >> WIDE_INDEX_SHIFT
    d = np.where(np.arange(nodes.size) >= 512, t[1:] - t[:-1], 0)
    a = (t[:-1] << WIDE_FRAC_SHIFT) + (1 << (WIDE_FRAC_SHIFT - 1)) - d * (j << WIDE_FRAC_SHIFT)
    out = np.zeros((2, WIDE_SIGN_OFFSET + WIDE_TABLE_SIZE), dtype=np.int64)
    out[:, j] = a, d
    out[:, WIDE_SIGN_OFFSET + j] = (1 << WIDE_FRAC_SHIFT) - 1 - a, -d
    out.flags.writeable = False
    return out


#: the wide tables (A, D) as int64 tensors per device, one copy each (a plain dict: ``torch.compile``
#: reads it as a constant)
_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def wide_tables(device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, D) of ``wide_normal_tables`` as int64 tensors on ``device`` (one host-to-device copy per
    device and process)."""
    device = torch.device(device)
    tables = _TABLES.get(device)
    if tables is None:
        both = torch.from_numpy(wide_normal_tables().copy()).to(device)
        tables = _TABLES[device] = (both[0], both[1])
    return tables


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


def hash32_wide_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """lowbias32 in place on int64 ``x`` holding 32-bit values (0..2^32-1), the same values as
    ``hash32_`` (read unsigned) in 10 ops (module docstring, wide form); ``scratch`` int64 of x's shape."""
    t = scratch
    for shift, mult in ((16, _C1), (15, _C2), (16, None)):
        torch.bitwise_right_shift(x, shift, out=t)
        x.bitwise_xor_(t)
        if mult is not None:
            x.mul_(mult).bitwise_and_(_M32)
    return x


def _hash(x: torch.Tensor, wide: bool) -> torch.Tensor:
    return hash32_wide_(x, torch.empty_like(x)) if wide else hash32(x)


def column_hashes(key: int, cols: torch.Tensor, wide: bool = False) -> torch.Tensor:
    """P[col] for int columns (any int dtype, values < 2^31): int32, or int64 in 0..2^32-1 (``wide``)."""
    return _hash(cols.to(torch.int64 if wide else torch.int32) + key, wide)


def row_hashes(key: int, rows: torch.Tensor, wide: bool = False) -> torch.Tensor:
    """R[row] for int rows (values < 2^31): int32, or int64 in 0..2^32-1 (``wide``)."""
    x = rows.to(torch.int64 if wide else torch.int32) + key
    return _hash(_hash(x, wide) ^ ROW_SALT, wide)


def hash_to_normal(h: torch.Tensor, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal from a 32-bit hash by the integer-exact inverse CDF (module docstring):
    bit-identical on every device and thread count. ``h``: int32, or int64 in 0..2^32-1 (wide).
    float32 by default; float64 keeps the fixed point's 28 fraction bits exactly (no float32
    rounding). ``out`` (a ``dtype`` tensor of h's shape) receives the result; ``h`` is left alone.
    Computed in the wide form (module docstring)."""
    x = h if h.dtype == torch.int64 else h.to(torch.int64).bitwise_and_(_M32)
    a, d = wide_tables(h.device)
    bits = x.bitwise_and(0x7FFFFFFF).to(torch.float64).view(torch.int64)
    j = torch.bitwise_right_shift(bits, WIDE_INDEX_SHIFT).add_(torch.bitwise_right_shift(x, 31), alpha=WIDE_SIGN_OFFSET)
    q = a[j].addcmul_(d[j], bits.bitwise_right_shift_(WIDE_FRAC_SHIFT)).bitwise_right_shift_(WIDE_FRAC_SHIFT)
    z = q.to(dtype).mul_(2.0 ** -NORMAL_FRAC_BITS)
    return z if out is None else out.copy_(z)


def wide_normal_(x: torch.Tensor, bits: torch.Tensor, index: torch.Tensor,
                 bits_f64: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``hash_to_normal`` of wide hashes ``x`` (int64 [n], 0..2^32-1; overwritten) with
    preallocated scratch ``bits`` (int64 [n]) and ``index`` (int32 [n]): float32 [n] in ``index``'s
    bytes. 12 ops, no allocation (the torch search's blocks, ``diffc.rcc.pfr``); ``bits_f64`` and
    ``out`` are ``bits.view(torch.float64)`` and ``index.view(torch.float32)`` when the caller
    keeps them (a view is an op too)."""
    a, d = wide_tables(x.device)
    bits_f64 = bits.view(torch.float64) if bits_f64 is None else bits_f64
    out = index.view(torch.float32) if out is None else out
    torch.bitwise_right_shift(x, 31, out=index)  # the sign
    bits_f64.copy_(x.bitwise_and_(0x7FFFFFFF))  # exact: v < 2^31
    torch.bitwise_right_shift(bits, WIDE_FRAC_SHIFT, out=x)
    torch.add(bits.bitwise_right_shift_(WIDE_INDEX_SHIFT), index, alpha=WIDE_SIGN_OFFSET, out=index)
    x.mul_(torch.index_select(d, 0, index, out=bits))
    x.add_(torch.index_select(a, 0, index, out=bits)).bitwise_right_shift_(WIDE_FRAC_SHIFT)
    return torch.mul(x, 2.0 ** -NORMAL_FRAC_BITS, out=out)


def entry_hashes(col_h: torch.Tensor, row_h: torch.Tensor, out: torch.Tensor | None = None,
                 scratch: torch.Tensor | None = None) -> torch.Tensor:
    """h(P[col] ^ R[row]) from precomputed column and row hashes (broadcasting; both int32, or
    both wide int64: the result has their dtype); into ``out`` (the broadcast shape) with
    ``scratch`` (same) when given, allocation-free."""
    x = torch.bitwise_xor(col_h, row_h, out=out)
    scratch = torch.empty_like(x) if scratch is None else scratch
    return hash32_wide_(x, scratch) if x.dtype == torch.int64 else hash32_(x, scratch)


def wide_on(device: torch.device | str) -> bool:
    """Whether the hashes take the wide form on ``device``: off the CPU, where every op is a kernel
    launch (fewer ops; the same values, module docstring)."""
    return torch.device(device).type != "cpu"


def _entry_hashes_of(key: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    wide = wide_on(cols.device)
    return entry_hashes(column_hashes(key, cols, wide), row_hashes(key, rows, wide))


def normals(key: int, rows: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Entries (row, col) of the stream's infinite Gaussian matrix; rows and cols broadcast."""
    return hash_to_normal(_entry_hashes_of(key, rows, cols), dtype)


def hash_to_uniform(h: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniform in (0, 1) from a 32-bit hash (int32, or wide int64): (top 24 bits + 1/2) / 2^24
    (exact in float32/64)."""
    top = h >> 8 if h.dtype == torch.int64 else (h >> 8) & 0xFFFFFF
    return (top.to(dtype) + 0.5) * _INV24


def uniforms(key: int, rows: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniforms in (0, 1) from the same construction (24-bit resolution)."""
    return hash_to_uniform(_entry_hashes_of(key, rows, cols), dtype)


def noise_like(seed: int, label: int, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """A reproducible N(0, I) float32 tensor of the given shape (e.g. the pure-noise start x_T)."""
    cols = torch.arange(math.prod(shape), dtype=torch.int32, device=device)
    rows = torch.zeros(1, dtype=torch.int32, device=device)
    return normals(stream_key(seed, label), rows, cols).reshape(shape)
