"""Dataset files fetched once and verified every time: single files (Kodak) and zip archives
(DIV2K, CLIC 2020), all through pooch, in the cache ``$DIFFC_CACHE/DATASET/``.

Archives are pinned by sha256 **and** byte size (:data:`ARCHIVES`, as the TensorFlow Datasets
registry lists them; docs/datasets.md). ``archive_files`` does, per archive:

1. fetch: a cached zip is checked (size first, then sha256) and refused in one line naming the
   expected and found sha256 and the file to delete, never replaced behind the user's back; a
   missing one is downloaded by ``pooch.retrieve`` with the known hash (pooch streams it to a
   temporary file and moves it into the cache only when the hash matches), then its size is checked;
2. extract, once and atomically: into a temporary folder beside the final one, then ``os.replace``
   (under a file lock), so the folder either holds the whole archive or does not exist; a failed
   extraction (a CRC error, a full disk) leaves nothing;
3. every file taken from the folder is checked against the verified zip's own directory (size and
   CRC-32) before it is read, so a file changed after extraction is refused too.

Per-file sha256s are not pinned: the zip's sha256 alone anchors every extracted file (through the
CRC-32s and sizes of its directory).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
import pooch
from filelock import FileLock

from analysis.errors import UsageError, describe, shorten

#: the ETH Zurich Computer Vision Lab server of DIV2K and CLIC (the archives' canonical URLs)
ETHZ_URL = "https://data.vision.ee.ethz.ch/cvl/"


class DatasetError(UsageError):
    """A dataset could not be loaded (one line: what and why)."""


@dataclass(frozen=True)
class Archive:
    """One pinned zip: its path under the base URL, byte size and sha256."""

    path: str
    size: int
    sha256: str

    @property
    def fname(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.path).stem


#: (dataset, part) -> the pinned archive. Source: tensorflow/datasets,
#: tensorflow_datasets/datasets/div2k/checksums.tsv and tensorflow_datasets/url_checksums/clic.txt
#: (docs/datasets.md). CLIC 2020 test = 250 professional + 178 mobile images.
ARCHIVES: dict[tuple[str, str], Archive] = {
    ("div2k", "valid"): Archive("DIV2K/DIV2K_valid_HR.zip", 448993893,
                                "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc"),
    ("div2k", "train"): Archive("DIV2K/DIV2K_train_HR.zip", 3530603713,
                                "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335"),
    ("clic2020", "professional/valid"): Archive(
        "clic/professional_valid_2020.zip", 134834429,
        "00be38092ade2ab5163b65f7f6523d46c7bca147007f559adbb02c0afc236b7d"),
    ("clic2020", "mobile/valid"): Archive(
        "clic/mobile_valid_2020.zip", 236556531,
        "ff0280382eeb32fdceb28c81a7f47ac9ad86d933ebe901680845635d04e47a10"),
    ("clic2020", "professional/test"): Archive(
        "clic/test/CLIC2020Professional_test.zip", 891643809,
        "857df244fc2bfa5da28d4c66bf0db16ee99bfc79eb807be8afa89cd507852884"),
    ("clic2020", "mobile/test"): Archive(
        "clic/test/CLIC2020Mobile_test.zip", 721789976,
        "2025f07a6c652270e534640de4271feef3b3dd3260beed4ac4821064837aa732"),
}


#: the checkout's seeded cache (``make seed-data`` fills it; the Makefile's ``DIFFC_CACHE``)
CHECKOUT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "diffc"
#: how to point a command at a cache, for the errors of a failed fetch
CACHE_HINT = ("set DIFFC_CACHE to a folder holding the files, or run `make seed-data` in the checkout "
              "(it fills .cache/diffc)")


def cache_dir() -> Path:
    """Root of the dataset cache, as the Makefile finds it: ``$DIFFC_CACHE``; else the checkout's
    ``.cache/diffc`` when it exists (what ``make seed-data`` fills); else pooch's per-user cache
    for 'diffc' (``~/.cache/diffc`` on Linux)."""
    env = os.environ.get("DIFFC_CACHE")
    if env:
        return Path(env)
    return CHECKOUT_CACHE if CHECKOUT_CACHE.is_dir() else Path(pooch.os_cache("diffc"))


def _downloader() -> pooch.HTTPDownloader:
    return pooch.HTTPDownloader(progressbar=False, timeout=60)


def fetch_file(name: str, fname: str, base_url: str, sha256: str) -> Path:
    """Fetch one file of dataset ``name`` through pooch (download, or verify the cached copy)."""
    path = cache_dir() / name
    repo = pooch.create(path=path, base_url=base_url, registry={fname: f"sha256:{sha256}"})
    cached = path / fname
    tampered = cached.exists() and pooch.file_hash(str(cached)) != sha256
    try:
        return Path(repo.fetch(fname, downloader=_downloader()))
    except Exception as exc:  # network errors (requests), hash mismatch (ValueError), disk...
        why = f"cached copy {cached} fails its sha256 check and " if tampered else ""
        raise DatasetError(f"{name}: {why}could not fetch {base_url}{fname} into {path} ({describe(exc, 200)}); "
                           f"offline, {CACHE_HINT}") from exc


def _check_archive(name: str, archive: Archive, path: Path, hashed: bool = True) -> None:
    """Refuse ``path`` unless it has the archive's size and (``hashed``) sha256: one line naming
    both hashes and the file to delete."""
    size = path.stat().st_size
    found = pooch.file_hash(str(path)) if hashed or size != archive.size else archive.sha256
    if size != archive.size or found != archive.sha256:
        raise DatasetError(f"{name}: {path} is not {archive.fname}: expected sha256 {archive.sha256} "
                           f"({archive.size} bytes), found {found} ({size} bytes); delete {path} and run again")


def fetch_archive(name: str, archive: Archive, base_url: str = ETHZ_URL) -> Path:
    """The verified zip in ``$DIFFC_CACHE/NAME/`` (downloaded when missing)."""
    folder = cache_dir() / name
    cached = folder / archive.fname
    if cached.exists():
        _check_archive(name, archive, cached)
        known = None  # verified just now: pooch only hands the cached path back
    else:
        known = f"sha256:{archive.sha256}"  # pooch checks the download before it enters the cache
    url = base_url + archive.path
    try:
        path = Path(pooch.retrieve(url, known_hash=known, fname=archive.fname, path=folder,
                                   downloader=_downloader(), progressbar=False))
    except Exception as exc:  # network errors (requests), hash mismatch (ValueError), disk...
        # pooch's hash-mismatch message spans lines and names both hashes: keep it whole, on one line
        why = shorten(" ".join(f"{type(exc).__name__}: {exc}".split()), 400)
        raise DatasetError(f"{name}: could not fetch {url} into {folder} ({why}); offline, {CACHE_HINT}") from exc
    if known is not None:
        _check_archive(name, archive, path, hashed=False)  # pooch checked the sha256; the size too
    return path


def extract(name: str, zip_path: Path, folder: Path) -> Path:
    """``zip_path`` extracted into ``folder`` (once; atomic: a temporary folder beside it, then
    ``os.replace``; another process's temporaries are waited for by the lock, a killed one's removed)."""
    if folder.is_dir():
        return folder
    with FileLock(folder.with_name(f".{folder.name}.lock")):
        if folder.is_dir():  # another process extracted it while we waited
            return folder
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)  # zipfile checks each member's CRC-32 as it reads it
            os.replace(tmp, folder)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(f"{name}: cannot extract {zip_path} ({describe(exc, 200)}); nothing was "
                               f"extracted: delete {zip_path} and run again") from exc
    return folder


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


@dataclass(frozen=True)
class ArchiveFile:
    """An extracted member of a verified archive: where it is and what the zip says it holds."""

    path: Path
    info: zipfile.ZipInfo

    def checked(self, name: str) -> Path:
        """``path``, after checking its size and CRC-32 against the zip's directory."""
        if not self.path.is_file() or self.path.stat().st_size != self.info.file_size \
                or _crc32(self.path) != self.info.CRC:
            folder = self.path.parents[len(PurePosixPath(self.info.filename).parts) - 1]
            raise DatasetError(f"{name}: {self.path} differs from {self.info.filename} of its verified "
                               f"archive (size or CRC-32); delete {folder} to extract it again")
        return self.path


def archive_files(name: str, archive: Archive, suffixes: tuple[str, ...],
                  base_url: str = ETHZ_URL) -> list[ArchiveFile]:
    """The files of ``archive`` with one of ``suffixes`` (lower case), sorted by member name, from
    its verified zip extracted in ``$DIFFC_CACHE/NAME/STEM/`` (macOS resource forks left out)."""
    zip_path = fetch_archive(name, archive, base_url)
    folder = extract(name, zip_path, zip_path.with_name(archive.stem))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{name}: cannot read {zip_path} ({describe(exc, 200)})") from exc
    out = []
    for info in sorted(infos, key=lambda i: i.filename):
        member = PurePosixPath(info.filename)
        if member.is_absolute() or ".." in member.parts:
            raise DatasetError(f"{name}: {zip_path} has a member outside its folder: {info.filename}")
        if info.is_dir() or member.suffix.lower() not in suffixes or member.name.startswith("._") \
                or "__MACOSX" in member.parts:
            continue
        out.append(ArchiveFile(folder.joinpath(*member.parts), info))
    return out

