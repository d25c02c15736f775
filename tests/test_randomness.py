"""Counter-based shared randomness (diffc/rcc/randomness.py): an independent pure-Python reference of
the hash construction (no int32 overflow at high rows/columns) and of the integer-exact normal,
the shipped inverse-CDF table against its definition, its accuracy against scipy, the fused CPU
kernels (diffc/rcc/fused.py) bit-equal to the torch ops, random access, distribution, independence,
and invariance to thread count and call shape."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from diffc.rcc import fused, randomness as rnd

M32 = 0xFFFFFFFF


def ref_hash32(x: int) -> int:
    """lowbias32 on Python ints (unsigned, explicit 32-bit masks)."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def ref_entry_bits(key: int, row: int, col: int) -> int:
    p = ref_hash32(col + key)
    r = ref_hash32(ref_hash32(row + key) ^ 0x5BD1E995)
    return ref_hash32(p ^ r)


def ref_hash_normal(x: int) -> float:
    """The integer-exact normal of a 32-bit hash (diffc/rcc/randomness.py docstring) on Python ints:
    sign = top bit, v = the other 31 bits, bit length by int.bit_length, interpolation exact then
    rounded half up, one float32 rounding (numpy) of the integer."""
    table = rnd.normal_table()
    v = x & 0x7FFFFFFF
    sh = (v >> 9).bit_length()
    i, f = (sh << 8) + (v >> sh), v & ((1 << sh) - 1)
    q = (int(table[i]) * (1 << sh) + (int(table[i + 1]) - int(table[i])) * f + ((1 << sh) >> 1)) >> sh
    return float(np.float32(-q if x >> 31 else q)) * 2.0 ** -28


def ref_normal(key: int, row: int, col: int) -> float:
    return ref_hash_normal(ref_entry_bits(key, row, col))


#: sha256 of diffc/rcc/data/normal_icdf.i32 (6,145 int32, little-endian): the table is part of the format
TABLE_SHA256 = "db7e27cd9b51ec7247d9a10b576f2ac0f0b27a5d66c0104ffc0c2a175eaf52d2"


def to_signed(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


EDGE = [0, 1, 2, 0x7FFF, 0x8000, 0xFFFF, 0x10000, (1 << 24) - 1, 1 << 24, 0x7FFFFFFF, -1, -(1 << 31), 123456789]


def test_hash32_matches_reference() -> None:
    rng = np.random.default_rng(0)
    vals = EDGE + [int(v) for v in rng.integers(-(1 << 31), 1 << 31, 2000)]
    got = rnd.hash32(torch.tensor(vals, dtype=torch.int32)).tolist()
    assert got == [to_signed(ref_hash32(v)) for v in vals]


@pytest.mark.parametrize("key", [0, 1, 0x5BD1E995 & 0x7FFFFFFF, 2**31 - 1])
def test_entries_match_reference_at_high_rows_and_columns(key) -> None:
    """(row, col) up to (2^24 - 1, 2^31 - 1): the product row x n_cols would be ~2^55, far past
    int32/int64 offsets; the construction never forms it. Integer bits and normals are exact
    (equal to the pure-Python reference, in torch and in the fused kernel)."""
    rows = [0, 1, 65535, 65536, (1 << 24) - 2, (1 << 24) - 1, (1 << 31) - 1]
    cols = [0, 1, 4095, 65535, 65536, (1 << 24) - 1, (1 << 31) - 1]  # col + key wraps past 2^31
    r = torch.tensor(rows, dtype=torch.int64)[:, None]
    c = torch.tensor(cols, dtype=torch.int64)[None, :]
    bits = rnd.entry_hashes(rnd.column_hashes(key, c), rnd.row_hashes(key, r))
    z = rnd.normals(key, r, c)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            assert int(bits[i, j]) == to_signed(ref_entry_bits(key, row, col)), (row, col)
            assert float(z[i, j]) == ref_normal(key, row, col), (row, col)
    zf = fused.normals_block(rnd.column_hashes(key, c).flatten(), rnd.row_hashes(key, r).flatten())
    assert torch.equal(zf, z.T)


def test_normal_table_is_its_definition() -> None:
    """The shipped table is pinned (sha256) and equals its definition recomputed with mpmath."""
    data = rnd.NORMAL_TABLE_FILE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == TABLE_SHA256
    assert np.array_equal(rnd.build_normal_table(), np.frombuffer(data, "<i4"))
    nodes = rnd.normal_table_nodes()
    assert nodes.size == rnd.NORMAL_TABLE_SIZE and np.all(np.diff(nodes) > 0) and nodes[-1] == 1 << 31
    i = np.arange(nodes.size - 1)  # each node's own index: i = sh 256 + (v >> sh)
    sh = np.array([(int(v) >> 9).bit_length() for v in nodes[:-1]])
    assert np.array_equal((sh << 8) + (nodes[:-1] >> sh), i)


EDGE_HASHES = [0, 1, 255, 256, 511, 512, 513, 1023, 1024, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, (1 << 32) - 1,
               0x12345678, 0x9ABCDEF0] + [(1 << e) + d for e in range(9, 31) for d in (-1, 0, 1, 1 << (e - 9))]


def test_integer_exact_normal_equals_the_reference_in_torch_and_fused() -> None:
    """Segment edges, both signs, the extremes and 10^5 random hashes: torch ops, the fused CPU
    kernel (``fused.normals_block``) and the pure-Python reference give the same float32 bits;
    float64 output keeps the fixed point exactly."""
    rng = np.random.default_rng(0)
    vals = EDGE_HASHES + [(v | (1 << 31)) for v in EDGE_HASHES] + [int(v) for v in rng.integers(0, 1 << 32, 100_000)]
    h = torch.tensor([to_signed(v & M32) for v in vals], dtype=torch.int32)
    z = rnd.hash_to_normal(h)
    assert z.tolist() == [ref_hash_normal(v & M32) for v in vals]
    r = torch.tensor([to_signed(ref_hash32(0))], dtype=torch.int32)
    assert torch.equal(fused.normals_block(h, r).flatten(), rnd.hash_to_normal(rnd.hash32(h ^ r)))
    z64 = rnd.hash_to_normal(h, torch.float64)
    assert torch.equal(z64.float(), z) and torch.equal(torch.round(z64 * 2**28), z64 * 2**28)


def test_wide_form_equals_the_int32_form() -> None:
    """The torch search's wide form (int64 hashes in 0..2^32-1, the normal read from float64 bits,
    diffc/rcc/randomness.py docstring): hashes equal the int32 ones read unsigned, and the
    workspace normal (``wide_normal_``) equals the pure-Python reference on both ends of every
    table cell, both signs, and on 10^5 random hashes."""
    rng = np.random.default_rng(1)
    nodes = [int(v) for v in rnd.normal_table_nodes()[:-1]]
    ends = sorted({v for n in nodes for v in (n, n - 1, n + 1) if 0 <= v < 1 << 31})
    vals = ends + [v | (1 << 31) for v in ends] + [int(v) for v in rng.integers(0, 1 << 32, 100_000)]
    x = torch.tensor(vals, dtype=torch.int64)
    n = x.numel()
    z = rnd.wide_normal_(x.clone(), torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int32))
    assert z.dtype == torch.float32 and z.tolist() == [ref_hash_normal(v) for v in vals]
    assert torch.equal(rnd.hash_to_normal(x), z)
    cols = torch.tensor(EDGE[:10] + [int(v) for v in rng.integers(0, 1 << 31, 1000)], dtype=torch.int64).abs()
    for key in (0, 2**31 - 1):
        for fn in (rnd.column_hashes, rnd.row_hashes):
            assert torch.equal(fn(key, cols, wide=True), fn(key, cols).to(torch.int64) & M32)
    c, r = rnd.column_hashes(3, cols, True)[:, None], rnd.row_hashes(3, cols[:40], True)[None, :]
    wide = rnd.entry_hashes(c, r)
    assert wide.dtype == torch.int64 and torch.equal(wide, rnd.entry_hashes(c.int(), r.int()).to(torch.int64) & M32)
    assert torch.equal(rnd.hash_to_uniform(wide), rnd.hash_to_uniform(wide.int()))


def test_integer_exact_normal_accuracy() -> None:
    """|z - Phi^-1(p)| <= 1e-6 (linear interpolation between the table's nodes; measured 8.6e-7)
    on every table node's neighbourhood and 10^6 random hashes; the extreme is Phi^-1(2^-33) and
    the law is symmetric."""
    rng = np.random.default_rng(1)
    nodes = rnd.normal_table_nodes()[:-1]
    v = np.concatenate([nodes, np.minimum(nodes + (nodes >> 1), (1 << 31) - 1), np.maximum(nodes - 1, 0),
                        rng.integers(0, 1 << 31, 1_000_000)]).astype(np.int64)
    for sign in (0, 1 << 31):
        h = torch.from_numpy((v | sign).astype(np.uint32).view(np.int32))
        z = rnd.hash_to_normal(h, torch.float64).numpy()
        ref = -special.ndtri((v + 0.5) / 2**32) * (-1 if sign else 1)
        assert np.abs(z - ref).max() <= 1e-6
    zmax = float(rnd.hash_to_normal(torch.tensor([0], dtype=torch.int32), torch.float64))
    assert zmax == pytest.approx(-special.ndtri(0.5 / 2**32), abs=1e-8) and 6.33 < zmax < 6.34


def test_random_access_equals_block_generation() -> None:
    """One entry, one row, one column or a whole block: the same numbers (no call-order state)."""
    key = rnd.stream_key(7, 2, 3)
    rows = torch.arange(0, 64, dtype=torch.int32)
    cols = torch.arange(1000, 1300, dtype=torch.int32)
    block = rnd.normals(key, rows[:, None], cols[None, :])
    assert block.shape == (64, 300) and block.dtype == torch.float32
    for i, j in [(0, 0), (17, 123), (63, 299)]:
        assert torch.equal(rnd.normals(key, rows[i:i + 1], cols[j:j + 1]), block[i:i + 1, j])
    assert torch.equal(rnd.normals(key, rows[5:6, None], cols[None, :])[0], block[5])
    assert torch.equal(rnd.normals(key, rows[:, None], cols[None, 40:41])[:, 0], block[:, 40])
    # the same columns in another order: the same values, permuted
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rnd.normals(key, rows[:, None], cols[perm][None, :]), block[:, perm])
    # int64 inputs give the same as int32
    assert torch.equal(rnd.normals(key, rows.long()[:, None], cols.long()[None, :]), block)
    # float64 output: the same fixed point, without the float32 rounding
    assert torch.allclose(rnd.normals(key, rows[:, None], cols[None, :], torch.float64), block.double(), atol=1e-5)


def test_normals_are_standard_normal() -> None:
    """KS against N(0, 1) at alpha = 1e-3 on 10^7 draws (fixed key, deterministic; KS resolves CDF
    errors of ~4e-4 there), moments up to the fourth, the 2^-33 truncation."""
    z = fused.normals_block(rnd.column_hashes(rnd.stream_key(1, 2), torch.arange(1 << 14)),
                            rnd.row_hashes(rnd.stream_key(1, 2), torch.arange(611))).double().flatten()
    n = z.numel()
    assert n > 10**7
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert float(z.std()) == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert float(((z - z.mean()) ** 3).mean()) == pytest.approx(0.0, abs=5 * math.sqrt(15 / n))
    assert float((z ** 4).mean()) == pytest.approx(3.0, abs=5 * math.sqrt(96 / n))
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    assert float(z.abs().max()) <= -special.ndtri(0.5 / 2**32) + 1e-6
    u = rnd.uniforms(3, torch.arange(512)[:, None], torch.arange(512)[None, :]).flatten()
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_rows_and_columns_are_uncorrelated() -> None:
    key = rnd.stream_key(5, 9)
    z = rnd.normals(key, torch.arange(2000)[:, None], torch.arange(64)[None, :]).double()
    c = torch.corrcoef(z.T)  # 64 columns x 2000 samples
    off = c[~torch.eye(64, dtype=torch.bool)]
    assert float(off.abs().max()) < 5 / math.sqrt(2000)
    r = torch.corrcoef(z[:64])  # adjacent candidates (rows) over the same 64 columns
    assert float(r[~torch.eye(64, dtype=torch.bool)].abs().mean()) < 0.15
    # neighbouring rows/columns (counters differing by 1 bit) are decorrelated too
    a = rnd.normals(key, torch.arange(0, 100000, 2), torch.tensor([0])).double().flatten()
    b = rnd.normals(key, torch.arange(1, 100001, 2), torch.tensor([0])).double().flatten()
    assert abs(float((a * b).mean())) < 5 / math.sqrt(a.numel())


def test_stream_keys_and_noise() -> None:
    keys = {rnd.stream_key(s, lab, k) for s in range(4) for lab in range(3) for k in range(50)}
    assert len(keys) == 600 and all(0 <= k < 2**31 for k in keys)
    assert rnd.stream_key(0, 2, 5) == rnd.stream_key(0, 2, 5)
    x = rnd.noise_like(3, 0, (3, 16, 24))
    assert x.shape == (3, 16, 24) and x.dtype == torch.float32
    assert torch.equal(x, rnd.noise_like(3, 0, (3, 16, 24)))
    assert torch.equal(x.flatten(), rnd.noise_like(3, 0, (3 * 16 * 24,)))  # layout-independent values
    assert not torch.equal(x, rnd.noise_like(4, 0, (3, 16, 24)))
    assert not torch.equal(x, rnd.noise_like(3, 1, (3, 16, 24)))


def test_bit_identical_across_thread_counts() -> None:
    key = rnd.stream_key(11, 2, 1)
    before = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append((rnd.normals(key, torch.arange(64)[:, None], torch.arange(1 << 15)[None, :]),
                        rnd.uniforms(key, torch.arange(64)[:, None], torch.arange(4096)[None, :]),
                        rnd.noise_like(11, 0, (4, 128, 128))))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_stream_normals_equal_the_torch_entries() -> None:
    """``fused.stream_normals`` (hashes and normal in one CPU pass: the decoder's selected candidates,
    the prior sample of skipped entries) = ``normals`` of the same (row, column) pairs, also near
    2^31 and with one row for every column; ``pfr.stream_entries`` is it on the CPU."""
    from diffc.rcc.pfr import stream_entries

    g = torch.Generator().manual_seed(3)
    key = rnd.stream_key(5, 1)
    cols = torch.cat([torch.randint(0, 1 << 31, (5000,), generator=g), torch.arange((1 << 31) - 100, 1 << 31)])
    rows = torch.cat([torch.randint(0, 1 << 24, (5000,), generator=g), torch.arange((1 << 31) - 100, 1 << 31)])
    ref = rnd.normals(key, rows, cols)
    assert torch.equal(fused.stream_normals(key, rows.int(), cols.int()), ref)
    assert torch.equal(stream_entries(key, rows, cols), ref)
    one = torch.tensor([7], dtype=torch.int32)
    assert torch.equal(fused.stream_normals(key, one, cols.int()), rnd.normals(key, one, cols))
