"""Datasets: the real pooch fetch path on a pre-seeded cache, transforms, clear errors."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import datasets as ds

SHARED_KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"
# Connection refused at once: the "no network" case without waiting for a timeout.
UNREACHABLE = "http://127.0.0.1:9/"


@pytest.fixture
def kodak_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh DIFFC_CACHE seeded like `make seed-data` does."""
    if not SHARED_KODAK.is_dir():
        pytest.skip(f"no shared Kodak copy at {SHARED_KODAK}")
    cache = tmp_path / "cache"
    (cache / "kodak").mkdir(parents=True)
    for f in SHARED_KODAK.glob("kodim*.png"):
        shutil.copy(f, cache / "kodak" / f.name)
    monkeypatch.setenv("DIFFC_CACHE", str(cache))
    return cache


def test_hashes_match_shared_sums() -> None:
    sums = SHARED_KODAK / "SHA256SUMS"
    if not sums.exists():
        pytest.skip("no shared SHA256SUMS")
    listed = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    assert listed == ds.KODAK_SHA256


def test_kodak_from_seeded_cache(kodak_cache: Path) -> None:
    data = ds.load_dataset("kodak", base_url=UNREACHABLE)  # every file verified, none fetched
    assert [i for i, _ in data] == [f"kodim{k:02d}" for k in range(1, 25)]
    shapes = {img.shape for _, img in data}
    assert shapes == {(512, 768, 3), (768, 512, 3)}
    assert all(img.dtype == np.uint8 for _, img in data)
    first = dict(data)["kodim01"]
    raw = (kodak_cache / "kodak" / "kodim01.png").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == ds.KODAK_SHA256["kodim01.png"]
    assert np.array_equal(first, np.asarray(Image.open(kodak_cache / "kodak" / "kodim01.png")))


def test_tampered_file_is_one_clear_error(kodak_cache: Path) -> None:
    f = kodak_cache / "kodak" / "kodim05.png"
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ds.DatasetError) as err:
        ds.load_dataset("kodak", ids=["kodim05"], base_url=UNREACHABLE)
    msg = str(err.value)
    assert "\n" not in msg
    assert "kodim05.png" in msg and "sha256" in msg and "could not fetch" in msg


def test_missing_file_without_network(kodak_cache: Path) -> None:
    (kodak_cache / "kodak" / "kodim07.png").unlink()
    with pytest.raises(ds.DatasetError, match=r"could not fetch .*kodim07\.png"):
        ds.load_dataset("kodak", ids=["kodim07"], base_url=UNREACHABLE)


def test_kodak_small_is_cropped_and_downscaled(kodak_cache: Path) -> None:
    data = ds.load_dataset("kodak-small")
    assert [i for i, _ in data] == list(ds.KODAK_SMALL_IDS)
    assert all(img.shape == (64, 64, 3) for _, img in data)
    full = dict(ds.load_dataset("kodak", ids=["kodim01"]))["kodim01"]  # 512x768
    expect = np.asarray(Image.fromarray(full[:, 128:640]).resize((64, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(dict(data)["kodim01"], expect)
    wide = ds.load_dataset("kodak-small", ids=["kodim01"], size=32, crop=False)
    assert wide[0][1].shape == (32, 48, 3)


def test_unknown_ids_and_options(kodak_cache: Path) -> None:
    with pytest.raises(ds.DatasetError, match="unknown image ids"):
        ds.load_dataset("kodak", ids=["kodim99"])
    with pytest.raises(ds.DatasetError, match="unknown options"):
        ds.load_dataset("kodak-small", sise=3)
    with pytest.raises(ds.DatasetError, match="unknown dataset"):
        ds.load_dataset("imagenet")


def test_folder_sorted_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = {n: rng.integers(0, 256, (8 + i, 12, 3), dtype=np.uint8) for i, n in enumerate("cab")}
    for n, a in imgs.items():
        Image.fromarray(a).save(tmp_path / f"{n}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    data = ds.load_dataset("folder", path=str(tmp_path))
    assert [i for i, _ in data] == ["a", "b", "c"]
    for i, a in data:
        assert np.array_equal(a, imgs[i])
    with pytest.raises(ds.DatasetError, match="not a directory"):
        ds.load_dataset("folder", path=str(tmp_path / "nope"))
    with pytest.raises(ds.DatasetError, match="no path"):
        ds.load_dataset("folder")


@pytest.mark.parametrize("size,expect", [((1356, 2040), (832, 1216)), ((2040, 1356), (1216, 832)),
                                         ((1152, 2040), (768, 1344)), ((512, 768), (832, 1216))])
@pytest.mark.parametrize("fit", ["crop", "stretch"])
def test_fit_to_pixels(size: tuple[int, int], expect: tuple[int, int], fit: str) -> None:
    img = np.zeros((*size, 3), np.uint8)
    img[:, : size[1] // 2] = 200  # left half bright: its fraction survives either fit
    out = ds.fit_to_pixels(img, fit=fit)
    assert out.shape == (*expect, 3)
    assert out.shape[0] * out.shape[1] <= 1024 * 1024 * 1.1
    left = (out[:, :, 0] > 100).mean()
    assert abs(left - 0.5) < 0.02


def test_to_tensor_roundtrip() -> None:
    a = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = ds.to_tensor(a)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert t[1, 2, 3] == pytest.approx(a[2, 3, 1] / 255)
    assert np.array_equal(ds.to_uint8(t), a)


@pytest.mark.weights
def test_div2k_download() -> None:
    """Needs the network (the official zip, ~450 MB): excluded from the default run."""
    data = ds.load_dataset("div2k", limit=2)
    assert [i for i, _ in data] == ["0801", "0802"]
    assert all(img.shape[0] % 64 == 0 and img.shape[1] % 64 == 0 for _, img in data)


def test_folder_reads_every_file_with_the_reader_options(tmp_path: Path) -> None:
    """folder's alpha / frame / max_pixels reach read_image; a 16-bit file comes as float32."""
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(tmp_path / "a.png")
    g16 = rng.integers(0, 65536, (6, 8), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "b.png")
    with pytest.raises(ds.DatasetError, match="a.png has transparent pixels"):
        ds.load_dataset("folder", path=str(tmp_path))
    data = dict(ds.load_dataset("folder", path=str(tmp_path), alpha="drop"))
    assert np.array_equal(data["a"], rgba[..., :3])
    assert data["b"].dtype == np.float32 and np.abs(data["b"][..., 0] - g16 / 65535).max() < 1e-7
    with pytest.raises(ds.DatasetError, match="above max_pixels=47"):
        ds.load_dataset("folder", path=str(tmp_path), alpha="drop", max_pixels=47)


def test_float_images_to_tensor_and_back_to_uint8() -> None:
    """A float image reaches the codec as it is; ``as_uint8`` rounds it (uint8 passes through)."""
    a = np.random.default_rng(3).random((5, 7, 3), dtype=np.float32)
    t = ds.to_tensor(a)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32 and torch.equal(t.permute(1, 2, 0), torch.from_numpy(a))
    assert np.array_equal(ds.as_uint8(a), np.round(a * 255).astype(np.uint8))
    u = (a * 255).astype(np.uint8)
    assert ds.as_uint8(u) is u


def test_the_cache_is_found_as_the_makefile_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 28: without DIFFC_CACHE the checkout's .cache/diffc (what `make seed-data` fills) is the
    cache when it exists, else pooch's per-user cache; DIFFC_CACHE wins. An offline fetch says in
    one line how to point the command at the files, cut at a word boundary."""
    from pipelines import archives

    monkeypatch.delenv("DIFFC_CACHE", raising=False)
    seeded = tmp_path / "checkout" / ".cache" / "diffc"
    monkeypatch.setattr(archives, "CHECKOUT_CACHE", seeded)
    assert archives.cache_dir() != seeded  # not there: the per-user cache
    seeded.mkdir(parents=True)
    assert archives.cache_dir() == seeded
    monkeypatch.setenv("DIFFC_CACHE", str(tmp_path / "mine"))
    assert archives.cache_dir() == tmp_path / "mine"

    def offline(*args, **kwargs):
        raise ConnectionError("HTTPSConnectionPool(host='r0k.us', port=443): Max retries exceeded " + "x" * 300)

    monkeypatch.setattr(archives.pooch.Pooch, "fetch", offline)
    with pytest.raises(ds.DatasetError) as err:
        archives.fetch_file("kodak", "kodim01.png", "https://r0k.us/graphics/kodak/kodak/", "0" * 64)
    message = str(err.value)
    assert "\n" not in message and "DIFFC_CACHE" in message and "make seed-data" in message, message
    assert "Max retries exceeded…);" in message and "xxx" not in message  # cut between words, never inside one


def test_error_lines_are_cut_between_words() -> None:
    from analysis.errors import first_line, shorten

    assert shorten("Failed to resolve 'r0k.us'", 15) == "Failed to…"
    assert shorten("short", 15) == "short" and len(shorten("a" * 40, 10)) == 10
    assert first_line("one two three\nsecond", 9) == "one two…"
