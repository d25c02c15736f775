"""DIV2K and CLIC 2020 through the real fetch / verify / extract code (pipelines/archives.py),
offline: the archives are built here from the Kodak files in the real folder layouts, put in a
fresh cache (as a user would seed it) or served by a local HTTP server, and pinned for the test by
replacing their entry of ``ARCHIVES`` with the built file's sha256 and size."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import archives
from pipelines import datasets as ds

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9/"  # connection refused at once: no network
#: where the Kodak PNGs are: the seeded cache (`make seed-data`) or the shared copy
KODAK_DIRS = [Path(os.environ.get("DIFFC_CACHE", ROOT / ".cache" / "diffc")) / "kodak",
              ROOT.parent / "shared" / "datasets" / "kodak"]


@pytest.fixture(scope="module")
def kodak_png() -> dict[str, bytes]:
    """The bytes of kodim01..kodim04 (verified against the pinned Kodak hashes)."""
    folder = next((d for d in KODAK_DIRS if (d / "kodim04.png").exists()), None)
    if folder is None:
        pytest.skip("no Kodak copy (make seed-data)")
    out = {f"kodim0{k}": (folder / f"kodim0{k}.png").read_bytes() for k in range(1, 5)}
    assert all(hashlib.sha256(b).hexdigest() == ds.KODAK_SHA256[f"{n}.png"] for n, b in out.items())
    return out


def build_zip(path: Path, members: dict[str, bytes]) -> archives.Archive:
    """A zip of ``members`` (stored, as PNGs are) at ``path``; its Archive (sha256, size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = path.read_bytes()
    return archives.Archive("", len(raw), hashlib.sha256(raw).hexdigest())


def pin(monkeypatch: pytest.MonkeyPatch, key: tuple[str, str], built: archives.Archive) -> archives.Archive:
    """Replace ``ARCHIVES[key]`` by the built file's hash and size (the real path kept)."""
    pinned = archives.Archive(archives.ARCHIVES[key].path, built.size, built.sha256)
    monkeypatch.setitem(archives.ARCHIVES, key, pinned)
    return pinned


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DIFFC_CACHE", str(root))
    return root


def div2k_members(kodak_png: dict[str, bytes]) -> dict[str, bytes]:
    """DIV2K's layout: DIV2K_valid_HR/0801.png ... (here Kodak images 1-3)."""
    return {f"DIV2K_valid_HR/080{k}.png": kodak_png[f"kodim0{k}"] for k in (1, 2, 3)}


@pytest.fixture
def seeded_div2k(cache: Path, kodak_png: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Path:
    """$DIFFC_CACHE/div2k/DIV2K_valid_HR.zip, pinned."""
    zpath = cache / "div2k" / "DIV2K_valid_HR.zip"
    pin(monkeypatch, ("div2k", "valid"), build_zip(zpath, div2k_members(kodak_png)))
    return zpath


def nothing_extracted(folder: Path) -> bool:
    """No extracted folder and no temporary one beside the zip (lock files aside)."""
    return not [p for p in folder.iterdir() if p.is_dir()]


def test_pins_are_the_registry_values() -> None:
    """The pinned DIV2K / CLIC 2020 archives (sha256 + bytes as tensorflow/datasets lists them),
    and docs/datasets.md states each."""
    a = archives.ARCHIVES
    assert a["div2k", "valid"] == archives.Archive(
        "DIV2K/DIV2K_valid_HR.zip", 448993893, "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc")
    assert a["clic2020", "professional/test"].size == 891643809
    assert a["clic2020", "mobile/test"].sha256.startswith("2025f07a6c65")
    assert {k for k in a if k[0] == "clic2020"} == {("clic2020", f"{s}/{p}") for s in ("professional", "mobile")
                                                   for p in ("valid", "test")}
    doc = (ROOT / "docs" / "datasets.md").read_text()
    for arc in a.values():
        assert re.search(rf"`{re.escape(arc.path)}` \| {arc.size} \| `{arc.sha256}`", doc), arc.path


def test_div2k_from_the_seeded_cache(seeded_div2k: Path, kodak_png: dict[str, bytes]) -> None:
    data = ds.load_dataset("div2k", base_url=UNREACHABLE)  # verified, extracted, nothing fetched
    assert [i for i, _ in data] == ["0801", "0802", "0803"]
    for k, (_, img) in enumerate(data, 1):
        want = np.asarray(Image.open(seeded_div2k.parent / "DIV2K_valid_HR" / "DIV2K_valid_HR" / f"080{k}.png"))
        assert img.dtype == np.uint8 and np.array_equal(img, want)
    assert data[0][1].shape == (512, 768, 3)  # kodim01 at native size
    folder = seeded_div2k.parent / "DIV2K_valid_HR"
    assert sorted(p.name for p in (folder / "DIV2K_valid_HR").iterdir()) == ["0801.png", "0802.png", "0803.png"]
    assert not list(seeded_div2k.parent.glob(".DIV2K_valid_HR.tmp-*"))
    again = ds.load_dataset("div2k", ids=["0802"], protocol="crop512", base_url=UNREACHABLE)
    assert [(i, im.shape) for i, im in again] == [("0802", (512, 512, 3))]
    assert np.array_equal(again[0][1], data[1][1][:, 128:640])  # Kodak's crop512 = its center crop
    assert [i for i, _ in ds.load_dataset("div2k", limit=2, base_url=UNREACHABLE)] == ["0801", "0802"]
    with pytest.raises(ds.DatasetError, match=r"ids not in the dataset: \['0900'\]"):
        ds.load_dataset("div2k", ids=["0801", "0900"], base_url=UNREACHABLE)


def test_download_through_pooch_from_a_local_server(cache: Path, tmp_path: Path, kodak_png: dict[str, bytes],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing zip is downloaded by pooch.retrieve (verified before it enters the cache); a
    served file with the wrong hash never enters it."""
    served = tmp_path / "server"
    built = build_zip(served / "DIV2K" / "DIV2K_valid_HR.zip", div2k_members(kodak_png))
    with local_server(served) as url:
        pin(monkeypatch, ("div2k", "valid"), built)
        data = ds.load_dataset("div2k", ids=["0801"], base_url=url)
        assert data[0][1].shape == (512, 768, 3)
        assert (cache / "div2k" / "DIV2K_valid_HR.zip").read_bytes() == (served / "DIV2K" / "DIV2K_valid_HR.zip").read_bytes()
        other = cache.parent / "cache2"
        monkeypatch.setenv("DIFFC_CACHE", str(other))
        monkeypatch.setitem(archives.ARCHIVES, ("div2k", "valid"),
                            archives.Archive("DIV2K/DIV2K_valid_HR.zip", built.size, "0" * 64))
        with pytest.raises(ds.DatasetError) as err:
            ds.load_dataset("div2k", base_url=url)
    msg = str(err.value)
    assert "\n" not in msg and "could not fetch" in msg and "0" * 64 in msg and built.sha256 in msg
    assert not (other / "div2k" / "DIV2K_valid_HR.zip").exists()
    assert not (other / "div2k").exists() or nothing_extracted(other / "div2k")


@functools.cache
def _quiet_handler(directory: str) -> type:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=directory, **k)

        def log_message(self, *a) -> None:
            pass

    return Handler


class local_server:
    """An HTTP server on 127.0.0.1 (a free port) serving ``folder``; the context gives its URL."""

    def __init__(self, folder: Path):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _quiet_handler(str(folder)))

    def __enter__(self) -> str:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_cached_archive_is_refused_in_one_line(seeded_div2k: Path, damage: str) -> None:
    raw = bytearray(seeded_div2k.read_bytes())
    expected = hashlib.sha256(raw).hexdigest()
    if damage == "corrupt":
        raw[len(raw) // 2] ^= 0xFF  # same size, one byte flipped
    else:
        raw = raw[: len(raw) - 1000]
    seeded_div2k.write_bytes(raw)
    found = hashlib.sha256(raw).hexdigest()
    with pytest.raises(ds.DatasetError) as err:
        ds.load_dataset("div2k", base_url=UNREACHABLE)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"expected sha256 {expected}" in msg and f"found {found} ({len(raw)} bytes)" in msg
    assert f"delete {seeded_div2k}" in msg
    assert seeded_div2k.exists() and seeded_div2k.read_bytes() == bytes(raw)  # not replaced
    assert nothing_extracted(seeded_div2k.parent)


def test_an_archive_that_fails_extraction_leaves_nothing(cache: Path, kodak_png: dict[str, bytes],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash and size match (pinned to the damaged file), but a member's CRC-32 does not: the
    extraction fails half way, its temporary folder goes, no folder is left."""
    zpath = cache / "div2k" / "DIV2K_valid_HR.zip"
    build_zip(zpath, div2k_members(kodak_png))
    raw = bytearray(zpath.read_bytes())
    with zipfile.ZipFile(zpath) as zf:
        second = zf.getinfo("DIV2K_valid_HR/0802.png")
    raw[second.header_offset + 30 + len(second.filename) + 100] ^= 0xFF  # inside 0802's data
    zpath.write_bytes(raw)
    pin(monkeypatch, ("div2k", "valid"), archives.Archive("", len(raw), hashlib.sha256(raw).hexdigest()))
    with pytest.raises(ds.DatasetError) as err:
        ds.load_dataset("div2k", base_url=UNREACHABLE)
    msg = str(err.value)
    assert "\n" not in msg and "cannot extract" in msg and "CRC" in msg and "nothing was extracted" in msg
    assert nothing_extracted(zpath.parent)


def test_an_extracted_file_changed_afterwards_is_refused(seeded_div2k: Path) -> None:
    ds.load_dataset("div2k", ids=["0801"], base_url=UNREACHABLE)
    folder = seeded_div2k.parent / "DIV2K_valid_HR"
    f = folder / "DIV2K_valid_HR" / "0802.png"
    raw = bytearray(f.read_bytes())
    raw[-20] ^= 0x01
    f.write_bytes(raw)
    assert [i for i, _ in ds.load_dataset("div2k", ids=["0801"], base_url=UNREACHABLE)] == ["0801"]
    with pytest.raises(ds.DatasetError, match=rf"0802.png differs from DIV2K_valid_HR/0802.png .*delete {folder} to extract it again$"):
        ds.load_dataset("div2k", ids=["0802"], base_url=UNREACHABLE)


def test_missing_archive_without_network(cache: Path) -> None:
    with pytest.raises(ds.DatasetError) as err:
        ds.load_dataset("clic2020", subsets=["mobile"], base_url=UNREACHABLE)
    msg = str(err.value)
    assert "\n" not in msg and f"could not fetch {UNREACHABLE}clic/test/CLIC2020Mobile_test.zip" in msg


@pytest.fixture
def seeded_clic(cache: Path, kodak_png: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The four CLIC 2020 zips in their layouts (test: professional/, mobile/; valid: valid/)."""
    names = {"professional": ["zeta-photo", "alpha-photo"], "mobile": ["IMG_0002", "IMG_0001"]}
    pngs = iter(kodak_png.values())
    test_png = {s: {n: next(pngs) for n in names[s]} for s in names}
    for subset in names:
        stem = {"professional": "CLIC2020Professional_test", "mobile": "CLIC2020Mobile_test"}[subset]
        built = build_zip(cache / "clic2020" / f"{stem}.zip",
                          {f"{subset}/{n}.png": b for n, b in test_png[subset].items()})
        pin(monkeypatch, ("clic2020", f"{subset}/test"), built)
        valid = {f"valid/{subset}-valid.png": test_png[subset][names[subset][0]]}
        built = build_zip(cache / "clic2020" / f"{subset}_valid_2020.zip", valid)
        pin(monkeypatch, ("clic2020", f"{subset}/valid"), built)
    return cache / "clic2020"


def test_clic2020_splits_and_subsets(seeded_clic: Path, kodak_png: dict[str, bytes]) -> None:
    data = ds.load_dataset("clic2020", base_url=UNREACHABLE)
    assert [i for i, _ in data] == ["alpha-photo", "zeta-photo", "IMG_0001", "IMG_0002"]  # professional first
    for (_, img), kodim in zip(data, ["kodim02", "kodim01", "kodim04", "kodim03"]):  # as the fixture stored them
        assert np.array_equal(img, np.asarray(Image.open(io.BytesIO(kodak_png[kodim]))))
    assert data[2][1].shape == (768, 512, 3)  # kodim04: portrait
    mobile = ds.load_dataset("clic2020", subsets=["mobile"], limit=1, base_url=UNREACHABLE)
    assert [i for i, _ in mobile] == ["IMG_0001"] and np.array_equal(mobile[0][1], dict(data)["IMG_0001"])
    valid = ds.load_dataset("clic2020", split="valid", protocol="square768", base_url=UNREACHABLE)
    assert [(i, im.shape) for i, im in valid] == [("professional-valid", (768, 768, 3)), ("mobile-valid", (768, 768, 3))]
    assert sorted(p.name for p in seeded_clic.iterdir() if p.is_dir()) == [
        "CLIC2020Mobile_test", "CLIC2020Professional_test", "mobile_valid_2020", "professional_valid_2020"]
    with pytest.raises(ds.DatasetError, match="clic2020: unknown split 'train'"):
        ds.load_dataset("clic2020", split="train")
    with pytest.raises(ds.DatasetError, match="subsets must be some of professional, mobile"):
        ds.load_dataset("clic2020", subsets=["phone"])


def test_clic2020_ids_must_be_unique(cache: Path, kodak_png: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    png = kodak_png["kodim01"]
    pin(monkeypatch, ("clic2020", "professional/test"),
        build_zip(cache / "clic2020" / "CLIC2020Professional_test.zip", {"professional/same.png": png}))
    pin(monkeypatch, ("clic2020", "mobile/test"),
        build_zip(cache / "clic2020" / "CLIC2020Mobile_test.zip", {"mobile/same.png": png}))
    with pytest.raises(ds.DatasetError, match=r"two images named same \(mobile/same.png is the second\)"):
        ds.load_dataset("clic2020", base_url=UNREACHABLE)


def test_dataset_archives_lists_the_pins_without_fetching(cache: Path) -> None:
    assert ds.dataset_archives("div2k") == [archives.ARCHIVES["div2k", "valid"]]
    assert [a.fname for a in ds.dataset_archives("clic2020", split="valid", subsets=["mobile"], limit=3)] == \
        ["mobile_valid_2020.zip"]
    assert ds.dataset_archives("kodak", ids=["kodim01"]) == []
    assert not cache.exists()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.evaluate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1", **env})


def test_dry_run_of_paper_div2k_resolves_the_pinned_hash(tmp_path: Path) -> None:
    out = run_cli("experiment=paper_div2k", "dry_run=true", f"root={tmp_path}", env={"DIFFC_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("job ")]
    assert len(lines) == 4
    pinned = archives.ARCHIVES["div2k", "valid"]
    assert pinned.sha256 == "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc"
    for ln in lines:
        assert f" protocol=paper archive=DIV2K_valid_HR.zip:sha256={pinned.sha256}:bytes=448993893 " in ln
    assert not list(tmp_path.rglob("*.zip"))  # nothing fetched


def test_evaluate_refuses_a_corrupt_archive_in_one_line(tmp_path: Path, kodak_png: dict[str, bytes]) -> None:
    """Through the command line: exit 2, one line on stderr, no traceback, nothing extracted.
    (The real pin: the seeded zip is not DIV2K's, which is the case of a wrong or damaged file.)"""
    zpath = tmp_path / "cache" / "div2k" / "DIV2K_valid_HR.zip"
    build_zip(zpath, div2k_members(kodak_png))
    out = run_cli("dataset=div2k", f"+dataset.options.base_url={UNREACHABLE}", f"root={tmp_path / 'out'}",
                  env={"DIFFC_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 2
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "expected sha256 20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc (448993893 bytes)" in err
    assert f"delete {zpath}" in err
    assert nothing_extracted(zpath.parent)
