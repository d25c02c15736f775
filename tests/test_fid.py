"""Dataset-level FID / KID on patches (pipelines.metrics.fid_kid, extract_patches) and the per-job
FID table (pipelines.evaluate.dataset_fid), offline.

The Inception network is replaced, through ``fid_kid``'s ``feature=`` hook, by a small fixed
random network (a strided convolution, tanh, global mean: 8 features), so the numbers are real
FID / KID values in that feature space. They are checked against an independent computation
(numpy + scipy.linalg.sqrtm for FID, the unbiased MMD^2 with the cubic polynomial kernel for KID)
and for the properties a distance must have: ~0 between identical sets, growing with the damage.
"""
from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from pipelines import evaluate
from pipelines.metrics import extract_patches, fid_kid

PATCH = 32
#: docs/design.md §2: the dataset-level table carries at least these columns
FID_TABLE_COLUMNS = ["model", "dataset", "recon_timestep", "bpp_mean", "fid", "kid", "n_patches"]


class RandomFeatures(torch.nn.Module):
    """A fixed random feature network: 4x4/4 convolution -> tanh -> spatial mean (8 features)."""

    num_features = 8  # torchmetrics reads it instead of probing with a 299x299 dummy image

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, self.num_features, 4, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # float [B, 3, H, W] in [0, 1]
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def net() -> RandomFeatures:
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared machine
    return RandomFeatures().eval()


def images(n: int, seed: int, h: int = 96, w: int = 128) -> list[np.ndarray]:
    """Smooth random uint8 images (8x8 blocks of Gaussian colour + mild pixel noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = np.kron(rng.normal(size=(h // 8, w // 8, 3)), np.ones((8, 8, 1)))
        out.append(np.clip(128 + 40 * base + 10 * rng.normal(size=(h, w, 3)), 0, 255).astype(np.uint8))
    return out


def noisy(imgs: list[np.ndarray], sigma: float, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(i + sigma * rng.normal(size=i.shape), 0, 255).astype(np.uint8) for i in imgs]


def features(net: torch.nn.Module, imgs: list[np.ndarray], patch: int = PATCH) -> np.ndarray:
    """float64 [n_patches, d]: the network on every patch, one patch at a time."""
    with torch.no_grad():
        return np.concatenate([
            net(torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1)[None].float() / 255).double().numpy()
            for img in imgs for p in extract_patches(img, patch)])


def reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy.linalg import sqrtm

    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real))


def reference_kid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over the whole sets (KID with one subset of
    all n patches: torchmetrics' subsets of size n are permutations of the sets, same value)."""
    d, m = f1.shape[1], f1.shape[0]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    kxx, kyy, kxy = k(f1, f1), k(f2, f2), k(f1, f2)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2)


# ---- extract_patches: the HiFiC protocol (an aligned grid + the grid shifted by half a patch) ----
def grid_count(h: int, w: int, size: int) -> int:
    aligned = (h // size) * (w // size)
    shifted = ((h - size // 2) // size) * ((w - size // 2) // size) if min(h, w) >= size + size // 2 else 0
    return aligned + shifted


@pytest.mark.parametrize("h,w,size,expected", [
    (512, 768, 256, 8),    # Kodak landscape: 3x2 aligned + 2x1 shifted
    (768, 512, 256, 8),    # Kodak portrait
    (832, 1216, 256, 20),  # the paper's div2k-1024 size: 4x3 aligned + 4x2 shifted
    (256, 256, 256, 1),    # one aligned patch, no room for the shifted grid
    (383, 383, 256, 1),    # a shifted patch needs 128 + 256 = 384 px
    (384, 384, 256, 2),
    (255, 1000, 256, 0),   # too small: no patch
    (64, 96, 32, 8),       # the size the tests below use
])
def test_patch_counts(h: int, w: int, size: int, expected: int) -> None:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    patches = extract_patches(img, size)
    assert len(patches) == expected == grid_count(h, w, size)
    assert all(p.shape == (size, size, 3) and p.dtype == np.uint8 for p in patches)


def test_patches_are_the_two_grids() -> None:
    h, w, size = 96, 160, 32
    img = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    got = extract_patches(img, size)
    want = [img[t:t + size, l:l + size] for off in (0, size // 2)
            for t in range(off, h - size + 1, size) for l in range(off, w - size + 1, size)]
    assert len(got) == len(want) == 3 * 5 + 2 * 4
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    # the shifted grid starts half a patch in, on both axes
    assert np.array_equal(got[15], img[16:48, 16:48])


# ---- fid_kid ---------------------------------------------------------------------------------------
def test_matches_an_independent_computation(net: RandomFeatures) -> None:
    """108 patches (several batches of 32) per side: FID and KID equal numpy/scipy's."""
    refs, recs = images(6, seed=0), noisy(images(6, seed=0), 30)
    r = fid_kid(refs, recs, patch=PATCH, feature=net)
    assert (r.n_patches, r.reason) == (6 * grid_count(96, 128, PATCH), "")
    f_ref, f_rec = features(net, refs), features(net, recs)
    assert r.fid == pytest.approx(reference_fid(f_ref, f_rec), rel=1e-4)
    assert r.kid == pytest.approx(reference_kid(f_ref, f_rec), rel=1e-3)


def test_identical_sets_are_at_distance_zero(net: RandomFeatures) -> None:
    refs = images(6, seed=0)
    same = fid_kid(refs, [i.copy() for i in refs], patch=PATCH, feature=net)
    damaged = fid_kid(refs, noisy(refs, 60), patch=PATCH, feature=net)
    assert damaged.fid > 0.01 and damaged.kid > 0.01
    assert abs(same.fid) < 1e-9 * damaged.fid + 1e-12
    # unbiased KID of a set against itself: -2 (mean kernel diagonal - mean off-diagonal) / n,
    # a small negative number
    assert abs(same.kid) < 0.02 * damaged.kid


def test_distance_grows_with_the_damage(net: RandomFeatures) -> None:
    refs = images(6, seed=0)
    res = [fid_kid(refs, noisy(refs, s), patch=PATCH, feature=net) for s in (10, 30, 60)]
    fids, kids = [r.fid for r in res], [r.kid for r in res]
    assert fids == sorted(fids) and fids[0] * 10 < fids[-1], fids
    assert kids == sorted(kids) and kids[-1] > 0.01, kids
    # other images from the same distribution are closer than heavily damaged copies
    other = fid_kid(refs, images(6, seed=5), patch=PATCH, feature=net)
    assert 0 < other.fid < fids[-1] / 5


def test_symmetric(net: RandomFeatures) -> None:
    a, b = images(6, seed=0), noisy(images(6, seed=0), 30)
    ab, ba = fid_kid(a, b, patch=PATCH, feature=net), fid_kid(b, a, patch=PATCH, feature=net)
    assert ab.fid == pytest.approx(ba.fid, rel=1e-6)
    assert ab.kid == pytest.approx(ba.kid, rel=1e-4)


@pytest.mark.parametrize("size,n", [((24, 48), 3), ((40, 40), 1)])
def test_too_few_patches_give_nan_with_a_reason(net: RandomFeatures, size: tuple[int, int], n: int) -> None:
    imgs = images(n, seed=0, h=size[0], w=size[1])
    r = fid_kid(imgs, imgs, patch=PATCH, feature=net)
    assert r.n_patches == n * grid_count(*size, PATCH) < 2
    assert math.isnan(r.fid) and math.isnan(r.kid) and "patches" in r.reason


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None,
                    reason="torch-fidelity installed: the Inception path would try to load its weights")
def test_inception_unavailable_gives_nan_with_a_reason() -> None:
    imgs = images(2, seed=0)
    r = fid_kid(imgs, imgs, patch=PATCH)
    assert math.isnan(r.fid) and math.isnan(r.kid)
    assert r.n_patches == 2 * grid_count(96, 128, PATCH) and r.reason.startswith("unavailable")


def test_unequal_patch_counts_use_n_patches_each(net: RandomFeatures) -> None:
    refs, recs = images(6, seed=0), noisy(images(5, seed=0), 30)  # 108 vs 90 patches
    r = fid_kid(refs, recs, patch=PATCH, feature=net)
    assert r.n_patches == 90
    f_ref, f_rec = features(net, refs)[:90], features(net, recs)
    assert r.fid == pytest.approx(reference_fid(f_ref, f_rec), rel=1e-4)


# ---- dataset_fid: the per-job FID table -------------------------------------------------------------
def test_dataset_fid_table(net: RandomFeatures, tmp_path, monkeypatch) -> None:
    """One row per rate point and for the VAE, from the PNGs saved under job_dir/recon/IMAGE/."""
    monkeypatch.setattr(evaluate, "fid_kid", functools.partial(fid_kid, feature=net))
    h, w = 64, 96
    ids = ["a", "b", "c", "d"]
    refs = images(len(ids), seed=0, h=h, w=w)
    recons = {  # (kind, recon_timestep, target_bpp) -> reconstructions (None: PNGs not saved)
        ("codec", 700, math.nan): noisy(refs, 60),
        ("codec", 100, math.nan): [i.copy() for i in refs],
        ("codec", 300, math.nan): None,
        ("codec", 500, 0.1): noisy(refs, 30),  # a bpp-target point (file bpp0.1.png)
        ("vae", None, math.nan): noisy(refs, 10),
    }
    rows = []
    for (kind, t, target), recs in recons.items():
        label = evaluate.point_label(t, target)
        for k, (image_id, bpp) in enumerate(zip(ids, (0.1, 0.2, 0.3, 0.4))):
            rows.append({"kind": kind, "recon_timestep": t, "target_bpp": target, "target_metric": None,
                         "target_quality": math.nan, "image": image_id, "bpp": bpp * (1 + (t or 0) / 1000)})
            if recs is not None:
                (tmp_path / "recon" / image_id).mkdir(parents=True, exist_ok=True)
                Image.fromarray(recs[k]).save(tmp_path / "recon" / image_id / f"{label}.png")
    rows = pd.DataFrame(rows).astype({"recon_timestep": "Int64", "kind": "string", "image": "string"})
    cfg = OmegaConf.create({"model": {"name": "gaussian"}, "dataset": {"name": "kodak-small"},
                            "metrics": {"fid": True, "fid_patch": PATCH}, "device": "cpu"})

    table = evaluate.dataset_fid(cfg, tmp_path, list(zip(ids, refs)), rows)

    assert set(FID_TABLE_COLUMNS) <= set(table.columns)
    assert len(table) == len(recons)
    assert set(table["model"]) == {"gaussian"} and set(table["dataset"]) == {"kodak-small"}
    key = lambda kind, t, target: (kind, None if pd.isna(t) else int(t), None if pd.isna(target) else float(target))
    by_point = {key(r.kind, r.recon_timestep, r.target_bpp): r for r in table.itertuples()}
    per_image = grid_count(h, w, PATCH)
    for (kind, t, target), recs in recons.items():
        row = by_point[key(kind, t, target)]
        assert row.bpp_mean == pytest.approx(np.mean([b * (1 + (t or 0) / 1000) for b in (0.1, 0.2, 0.3, 0.4)]))
        if recs is None:
            assert math.isnan(row.fid) and math.isnan(row.kid) and row.n_patches == 0
            assert "missing" in row.reason
            continue
        direct = fid_kid(refs, recs, patch=PATCH, feature=net)  # the PNG round trip is lossless
        assert row.n_patches == len(ids) * per_image
        assert row.fid == pytest.approx(direct.fid, rel=1e-6, abs=1e-12)
        assert row.kid == pytest.approx(direct.kid, rel=1e-4, abs=1e-6)  # float32 kernel sums
    fid = {k[:2]: r.fid for k, r in by_point.items()}
    assert fid[("codec", 100)] < 1e-9 < fid[("vae", None)] < fid[("codec", 700)]
    assert str(table["recon_timestep"].dtype) == "Int64"  # the VAE row's timestep is <NA>, not NaN
