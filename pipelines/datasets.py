"""Evaluation datasets as lists of ``(image_id, image [H, W, 3])``: uint8 for 8-bit files, float32
in [0, 1] for 16-bit or float ones (``read_image``, the one image reader of every command).

Datasets (``load_dataset(name, protocol, **options)``; the options are the keys of
conf/dataset/NAME.yaml):

- ``kodak``: the 24 Kodak images at native 768x512 / 512x768, fetched with pooch from
  r0k.us and verified against the sha256 hashes below. Offline machines pre-seed the cache
  (``make seed-data`` copies a local Kodak folder, ``SHARED_KODAK``, into ``$DIFFC_CACHE/kodak``): the same
  fetch code then only verifies the hashes.
- ``kodak-small``: a few Kodak images (default kodim01, 05, 15, 23), center-cropped to a square
  and downscaled with Lanczos to 64x64 -- for demos and fast tests.
- ``folder``: every PNG/JPEG of a directory, sorted by file name (the id is the file stem).
- ``div2k``: the DIV2K validation (or training) HR set, the official zip (sha256 + size pinned,
  pipelines/archives.py), full resolution (2040 px on the long side).
- ``clic2020``: CLIC 2020, professional and/or mobile, test (250 + 178 images) or valid, the
  official zips (pinned like DIV2K's), full resolution.

Then the evaluation protocol (``PROTOCOLS``, conf/protocol/*.yaml, docs/datasets.md) turns each
image into what the codec sees: ``native`` (as loaded), ``paper`` (the DiffC paper: above 1 MP
resized to about 1 MP in multiples of 64), ``crop512`` (CoD: short edge to 512, center crop),
``square512`` / ``square768`` / ``square1024`` (DDCM, Turbo-DDCM, PerCo: resized to the square).

The cache directory is ``$DIFFC_CACHE`` or pooch's per-user cache (``pooch.os_cache('diffc')``).
Every failure (missing network, a hash mismatch, a missing folder) raises ``DatasetError`` with
one line naming the problem.
"""
from __future__ import annotations

import inspect
import math
import os
import re
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import imagecodecs
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from analysis.errors import describe
from diffc import format as fmt
from diffc.checks import checked_int

from .archives import ARCHIVES, ETHZ_URL, Archive, DatasetError, archive_files, fetch_file
from .archives import cache_dir  # noqa: F401  (the cache root, re-exported: pipelines/captions.py, fit_gaussian.py)

Sample = tuple[str, np.ndarray]

KODAK_URL = "https://r0k.us/graphics/kodak/kodak/"
KODAK_SHA256: dict[str, str] = {
    "kodim01.png": "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd",
    "kodim02.png": "4f4b74a79237e311d72cad958237b5f7088d8bce1c82305ebefe1a70e3022dfd",
    "kodim03.png": "e25ca1ff2f0c0cb5fdfd5f9b0a0bb21ac4c3de3c84a67f35b09a85d3306249db",
    "kodim04.png": "e3b946107c5d3441c022f678d0c3caf1e224d81b1604ba840a4f88e562de61aa",
    "kodim05.png": "10349e963c5c813d327852f82c1795fa4148d69fedffc4c589bee458e3ac3d53",
    "kodim06.png": "363510303b715d4cbc384e1ce227e466b613a09e1b71ae985882bf8e7fbd9b18",
    "kodim07.png": "b77d3f006f42414bb242222e0482e750c0fb9e5ee8d4bed2f6f11c5605fe54a4",
    "kodim08.png": "ba23983c76b4832ee0e8af0592664756841a16779acd69f792e268fb6d13d6e7",
    "kodim09.png": "6a4361c2fc194feb4edaa9f9a4a0620fb9943e460ac7fdf037fb0f6dd6607a7d",
    "kodim10.png": "9dfb70f5867c29ff9ed6313683f19b3d867849e40fbc0c4c54a4a89df341cf23",
    "kodim11.png": "7936814b58b5387fce2e4e2488b4ec830dadd95fa9520f358ddb30990b50f2b6",
    "kodim12.png": "d78c37c2f04f23761ed2367dd77e2db584ddd4c3950833fecf89f199a8126980",
    "kodim13.png": "bc34a3ce58dea09dce1704c997171602de90cb34d0c8503a988b77f473d39b08",
    "kodim14.png": "55a94550ff18f3246c4074fd32b77b0c74447c26b6ad274d564d999c0450ba6e",
    "kodim15.png": "7538cbb80cb9103606c48b806eae57d56c885c7f90b9b3be70a41160f9cbb683",
    "kodim16.png": "a89c7268ccd4718ba424a99fc4643c572cf692ca6eae887185ceb4e9f11d2e54",
    "kodim17.png": "37afcc89fbdcb76d9518e04b2fc011027e2f4cd14b3b2f83cefd721641a47c5b",
    "kodim18.png": "1a9258c365988961d87a0598725b609139c303ad48a5aad6c503c3b1a87849aa",
    "kodim19.png": "b7450b264b1b0a411390d8931b112c27905a992520fc90569dc4b920aa32bbdc",
    "kodim20.png": "3b46c71e3b92a563820ba32936be8330c586c41f938efd94be938386aae4328a",
    "kodim21.png": "ac958597c82073f6bb65129c68f72b651db5b9efd82e11547d07350214bc268b",
    "kodim22.png": "1cee58eb1f2d9c7ebb254d208a03c783ce6cf2c4d8c2cf45e235dd23b4ce1b29",
    "kodim23.png": "e3111a2fd4da24af15d6459ef9eacfe54106b38e27b4a21821b75c3f5d2d5baf",
    "kodim24.png": "1071c68372cc5a01435c2c225a5cf7d4bb803846ec08bb6b3d6721b156d7cb96",
}
KODAK_SMALL_IDS: tuple[str, ...] = ("kodim01", "kodim05", "kodim15", "kodim23")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: ``alpha=``: what ``read_image`` does with transparent pixels (None = refuse the image)
ALPHA_MODES = (None, "drop", "white")
#: a Pillow raw mode of 16-bit samples ('RGB;16B', 'I;16', 'LA;16B', ...)
SIXTEEN_BIT = re.compile(r";16[BLN]?$")


def _header_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the header of an image Pillow's decompression-bomb check refused (its
    check off for this one header read: no pixel is decoded)."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            return im.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _open(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """Open ``path`` (header only) and refuse it when it holds more than ``max_pixels`` pixels,
    before any pixel is decoded (``fmt.check_pixels``, as a ``DatasetError``). Pillow's
    decompression-bomb check (warning above ``Image.MAX_IMAGE_PIXELS``, error above twice that,
    both far above ``fmt.MAX_PIXELS``) becomes the same one-line size error, with no warning printed."""
    im = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        w, h = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        w, h = _header_size(path)  # above Pillow's limits, so above fmt.MAX_PIXELS: refused below
    try:
        fmt.check_pixels(w, h, max_pixels, f"image {path}")
    except fmt.TooLarge as exc:
        if im is not None:
            im.close()
        raise DatasetError(str(exc)) from None
    return im


def _frame(im: Image.Image, path: str | os.PathLike, frame: int | None) -> None:
    """Seek ``im`` to ``frame``; an image of several frames (animation, multi-page) needs one,
    except an MPO's first image, its primary picture (CIPA DC-007; phone photos carry extra ones)."""
    n = getattr(im, "n_frames", 1)
    if frame is None:
        if n == 1 or im.format == "MPO":
            return
        raise DatasetError(f"image {path} has {n} frames (animated or multi-page): choose one with frame=0..{n - 1}")
    if not 0 <= frame < n:
        raise DatasetError(f"image {path}: frame={frame}, but it has {n} frame{'s' * (n > 1)} (0..{n - 1})")
    im.seek(frame)


def _rawmode(im: Image.Image) -> str:
    """How the file stores its samples (Pillow's raw mode, e.g. 'RGB;16B'; '' when unknown):
    read from the tile before decoding, which clears it."""
    if not im.tile:
        return ""
    args = im.tile[0][3]
    return str(args[0] if isinstance(args, tuple) else args)


def _samples(im: Image.Image, path: str | os.PathLike, rawmode: str) -> np.ndarray:
    """The decoded samples [H, W, C] in their own precision: C = 1 or 3, with alpha 2 or 4; uint8
    (8-bit files, palettes, CMYK... through Pillow's conversions), uint16 (16-bit), or float32
    (float files, which must lie in [0, 1])."""
    mode, sixteen = im.mode, bool(SIXTEEN_BIT.search(rawmode))
    if mode in ("RGB", "RGBA", "LA") and sixteen and im.format in ("PNG", "TIFF"):
        # 16-bit colour: Pillow has no such mode and keeps only the high bytes; imagecodecs reads
        # all 16 bits
        if im.tell():
            raise DatasetError(f"image {path}: 16-bit colour is read from the first frame only")
        return np.atleast_3d(imagecodecs.imread(os.fspath(path), codec=im.format.lower()))
    if mode.startswith("I;16"):
        return np.atleast_3d(np.asarray(im, dtype=np.uint16))
    if mode == "I":  # 32-bit integers; 16-bit files in older Pillow
        a = np.asarray(im)
        if not (sixteen and a.min() >= 0 and a.max() <= 65535):
            raise DatasetError(f"image {path}: integer samples in [{a.min()}, {a.max()}] ({rawmode or 'I'}); "
                               f"only 8- and 16-bit images are read")
        return np.atleast_3d(a.astype(np.uint16))
    if mode == "F":
        a = np.atleast_3d(np.asarray(im, dtype=np.float32))
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise DatasetError(f"image {path}: float samples in [{a.min():g}, {a.max():g}]; a float image "
                               f"must lie in [0, 1]")
        return a
    return np.asarray(im.convert("RGBA" if im.has_transparency_data else "RGB"))


def _full_scale(a: np.ndarray) -> float:
    """The value of a sample at full intensity: 255, 65535, 1.0 (float)."""
    return float(np.iinfo(a.dtype).max) if a.dtype.kind == "u" else 1.0


def _flatten_alpha(a: np.ndarray, path: str | os.PathLike, alpha: str | None) -> np.ndarray:
    """[H, W, C] without its alpha channel (C = 2 or 4): an opaque alpha goes, any other needs
    ``alpha``: 'drop' ignores it, 'white' composites on white (c a + 1 - a, float32)."""
    if a.shape[-1] not in (2, 4):
        return a
    color, opacity = a[..., :-1], a[..., -1:]
    full = _full_scale(a)
    if alpha == "drop" or (opacity == full).all():
        return color
    if alpha == "white":
        o = opacity.astype(np.float32) / full
        return color.astype(np.float32) / full * o + (1 - o)
    raise DatasetError(f"image {path} has transparent pixels: say what to do with its alpha channel, "
                       f"alpha=drop (ignore it) or alpha=white (composite on white)")


def _upright(a: np.ndarray, orientation: int) -> np.ndarray:
    """[H, W, C] turned as its EXIF orientation (1..8) says, by ``ImageOps.exif_transpose`` per
    channel (Pillow has no mode for every sample type with 3 channels)."""
    if orientation == 1:
        return a

    def turn(plane: np.ndarray) -> np.ndarray:
        im = Image.fromarray(np.ascontiguousarray(plane))
        im.getexif()[ExifTags.Base.Orientation] = orientation
        return np.asarray(ImageOps.exif_transpose(im))

    return np.stack([turn(a[..., c]) for c in range(a.shape[-1])], axis=-1)


def read_image(path: str | os.PathLike, alpha: str | None = None, frame: int | None = None,
               max_pixels: int = fmt.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as RGB [H, W, 3]: uint8 when its samples are 8-bit, else float32 in [0, 1]
    (16-bit samples / 65535, float samples as they are), upright by its EXIF orientation.

    Palette, gray, CMYK... become RGB through Pillow. Refused in one line (``DatasetError``; a
    ``frame`` or ``max_pixels`` that is not an integer in range: ``diffc.checks.InvalidValue``):
    more than ``max_pixels`` pixels (from the header, before any pixel is decoded; default
    ``fmt.DEFAULT_MAX_PIXELS`` = 4096^2, at most ``fmt.MAX_PIXELS`` = 8192^2: a decoded pixel
    costs 12 bytes as float32 RGB here and hundreds in the codec, so the default keeps an
    8192^2 input from taking gigabytes before the size is said); transparent
    pixels unless ``alpha`` is 'drop' or 'white' (an all-opaque alpha is dropped); several frames
    (animated GIF/APNG, multi-page TIFF) unless ``frame`` picks one (0-based); float samples
    outside [0, 1]; 32-bit integer samples. ``as_uint8`` quantises for what needs 8 bits.
    """
    if alpha not in ALPHA_MODES:
        raise DatasetError(f"alpha must be null (refuse transparent images), drop or white; got {alpha!r}")
    if frame is not None:
        checked_int("frame", frame, 0)
    fmt.pixel_limit(max_pixels)  # before the file is opened (its errors read as "cannot read image")
    try:
        with _open(path, max_pixels) as im:
            _frame(im, path, frame)
            rawmode = _rawmode(im)
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
            a = _flatten_alpha(_samples(im, path, rawmode), path, alpha)
    except (OSError, ValueError, EOFError, RuntimeError) as exc:  # unreadable, truncated, no codec (imagecodecs: RuntimeError)
        raise DatasetError(f"cannot read image {path}: {describe(exc, 200)}") from exc
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype == np.uint16:
        a = a.astype(np.float32) / np.float32(65535)
    return _upright(a, orientation if orientation in range(1, 9) else 1)


def as_uint8(img: np.ndarray) -> np.ndarray:
    """An image of ``read_image`` as uint8 [H, W, 3] (float: round(255 x)), for what needs 8 bits
    (metrics, captions, classic codecs)."""
    return img if img.dtype == np.uint8 else to_uint8(to_tensor(img))


def center_crop_square(img: np.ndarray) -> np.ndarray:
    """The largest centered square of an [H, W, 3] image."""
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize of an [H, W, 3] image to (width, height): uint8 as RGB; float32 (16-bit or
    float files, in [0, 1]) channel by channel in Pillow's 32-bit float mode, clipped to [0, 1]."""
    if img.shape[:2] == (height, width):
        return img
    size, lanczos = (width, height), Image.Resampling.LANCZOS
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize(size, lanczos))
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], np.float32), "F").resize(size, lanczos))
              for c in range(img.shape[-1])]
    return np.clip(np.stack(planes, axis=-1), 0, 1)


def fit_to_pixels(img: np.ndarray, target_pixels: int = 1024 * 1024, multiple: int = 64,
                  fit: str = "crop") -> np.ndarray:
    """Resize to about ``target_pixels`` pixels with both sides multiples of ``multiple``.

    The output size is (floor(W s / m) m, floor(H s / m) m) with s = sqrt(target / (W H)): e.g.
    2040x1356 -> 1216x832 and 2040x1152 -> 1344x768 (SDXL resolution buckets). ``fit='crop'``
    keeps the aspect ratio: Lanczos-resize so the image covers the output, then center-crop (at
    most ``multiple`` pixels lost per side); ``fit='stretch'`` resizes straight to the output
    size (aspect changes by < multiple / side).
    """
    h, w = img.shape[:2]
    s = math.sqrt(target_pixels / (w * h))
    out_w = max(multiple, int(w * s) // multiple * multiple)
    out_h = max(multiple, int(h * s) // multiple * multiple)
    if fit == "stretch":
        return resize(img, out_w, out_h)
    if fit != "crop":
        raise DatasetError(f"unknown fit {fit!r} (crop, stretch)")
    cover = max(out_w / w, out_h / h)
    big_w, big_h = max(out_w, round(w * cover)), max(out_h, round(h * cover))
    big = resize(img, big_w, big_h)
    top, left = (big_h - out_h) // 2, (big_w - out_w) // 2
    return big[top:top + out_h, left:left + out_w]


def _kodak_files(ids: Sequence[str] | None) -> list[str]:
    if ids is None:
        return sorted(KODAK_SHA256)
    files = [i if i.endswith(".png") else f"{i}.png" for i in ids]
    unknown = [f for f in files if f not in KODAK_SHA256]
    if unknown:
        raise DatasetError(f"kodak: unknown image ids {unknown} (kodim01..kodim24)")
    return files


def load_kodak(ids: Sequence[str] | None = None, base_url: str = KODAK_URL) -> list[Sample]:
    """The Kodak images (all 24 by default, or the given ids such as 'kodim05'), native size."""
    return [(Path(f).stem, read_image(fetch_file("kodak", f, base_url, KODAK_SHA256[f])))
            for f in _kodak_files(ids)]


def load_kodak_small(ids: Sequence[str] = KODAK_SMALL_IDS, size: int = 64, crop: bool = True,
                     base_url: str = KODAK_URL) -> list[Sample]:
    """A few Kodak images, center-cropped to a square (``crop``) and Lanczos-resized to ``size``.

    Without ``crop`` the image is resized so its short side is ``size`` (aspect kept).
    """
    out = []
    for image_id, img in load_kodak(ids, base_url=base_url):
        if crop:
            img = resize(center_crop_square(img), size, size)
        else:
            h, w = img.shape[:2]
            k = size / min(h, w)
            img = resize(img, round(w * k), round(h * k))
        out.append((image_id, img))
    return out


def load_folder(path: str | os.PathLike | None = None, limit: int | None = None, alpha: str | None = None,
                frame: int | None = None, max_pixels: int = fmt.DEFAULT_MAX_PIXELS) -> list[Sample]:
    """Every PNG/JPEG directly inside ``path``, sorted by name; ids are the file stems.
    ``alpha``, ``frame``, ``max_pixels``: as in ``read_image`` (applied to every file)."""
    if path is None:
        raise DatasetError("folder: no path given (dataset.path=DIR)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"folder: {root} is not a directory")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetError(f"folder: no PNG/JPEG images in {root}")
    return [(p.stem, read_image(p, alpha, frame, max_pixels)) for p in files[:limit]]


def _select(name: str, files: list[tuple[str, Path]], ids: Sequence[str] | None,
            limit: int | None) -> list[tuple[str, Path]]:
    """(id, file) pairs with the given ids (all when None; every id must exist), at most ``limit``."""
    if ids is not None:
        wanted = {str(i) for i in ids}
        files = [f for f in files if f[0] in wanted]
        missing = wanted - {i for i, _ in files}
        if missing:
            raise DatasetError(f"{name}: ids not in the dataset: {sorted(missing)}")
    return files[:limit]


def load_archives(name: str, parts: Sequence[str], ids: Sequence[str] | None = None,
                  limit: int | None = None, base_url: str = ETHZ_URL) -> list[Sample]:
    """The PNGs of the pinned archives ``ARCHIVES[name, part]`` (pipelines/archives.py: fetched,
    verified, extracted atomically), archive by archive in ``parts`` order, sorted by file name
    within each; ids = file stems (unique over the parts). Each file is checked against its zip's
    directory right before it is read."""
    files = [(f.path.stem, f) for p in parts for f in archive_files(name, ARCHIVES[name, p], (".png",), base_url)]
    seen: set[str] = set()
    for image_id, f in files:
        if image_id in seen:
            raise DatasetError(f"{name}: two images named {image_id} ({f.info.filename} is the second)")
        seen.add(image_id)
    return [(i, read_image(f.checked(name))) for i, f in _select(name, files, ids, limit)]


def div2k_parts(split: str = "valid") -> list[str]:
    """The archives of DIV2K's ``split`` (valid: 0801-0900, train: 0001-0800)."""
    if split not in ("valid", "train"):
        raise DatasetError(f"div2k: unknown split {split!r} (valid, train)")
    return [split]


def load_div2k(split: str = "valid", ids: Sequence[str] | None = None, limit: int | None = None,
               base_url: str = ETHZ_URL) -> list[Sample]:
    """DIV2K HR images (``split`` valid: 0801-0900, train: 0001-0800) at full resolution, from the
    official zip (``DIV2K_SPLIT_HR/NNNN.png``; pinned sha256 and size)."""
    return load_archives("div2k", div2k_parts(split), ids, limit, base_url)


CLIC_SUBSETS = ("professional", "mobile")


def clic2020_parts(split: str = "test", subsets: Sequence[str] = CLIC_SUBSETS) -> list[str]:
    """The archives of CLIC 2020's ``split`` (test, valid) for ``subsets`` (professional, mobile)."""
    if split not in ("test", "valid"):
        raise DatasetError(f"clic2020: unknown split {split!r} (test, valid)")
    unknown = [s for s in subsets if s not in CLIC_SUBSETS]
    if unknown or not subsets:
        raise DatasetError(f"clic2020: subsets must be some of {', '.join(CLIC_SUBSETS)}, got {list(subsets)}")
    return [f"{s}/{split}" for s in subsets]


def load_clic2020(split: str = "test", subsets: Sequence[str] = CLIC_SUBSETS, ids: Sequence[str] | None = None,
                  limit: int | None = None, base_url: str = ETHZ_URL) -> list[Sample]:
    """CLIC 2020 (professional and/or mobile; test: 250 + 178 images, the peers' FID/KID set; or
    valid) at full resolution, from the official zips (pinned sha256 and size); professional first."""
    return load_archives("clic2020", clic2020_parts(split, subsets), ids, limit, base_url)


LOADERS: dict[str, Callable[..., list[Sample]]] = {
    "kodak": load_kodak,
    "kodak-small": load_kodak_small,
    "folder": load_folder,
    "div2k": load_div2k,
    "clic2020": load_clic2020,
}
#: the archive parts a dataset's options select (``dataset_archives``: what a dry run shows)
PARTS: dict[str, Callable[..., list[str]]] = {"div2k": div2k_parts, "clic2020": clic2020_parts}


# ---- evaluation protocols (conf/protocol/*.yaml; sources in docs/datasets.md) ---------------------
#: the DiffC paper's DIV2K ("div2k-1024"): about 1024^2 pixels, sides multiples of 64
PAPER_PIXELS, PAPER_MULTIPLE = 1024 * 1024, 64


def paper_size(img: np.ndarray) -> np.ndarray:
    """The DiffC paper's protocol: an image above ``PAPER_PIXELS`` through ``fit_to_pixels``
    (2040x1356 -> 1216x832, aspect kept, center-cropped by < 64 px); others as they are (Kodak)."""
    h, w = img.shape[:2]
    return fit_to_pixels(img, PAPER_PIXELS, PAPER_MULTIPLE, "crop") if w * h > PAPER_PIXELS else img


def short_edge_crop(img: np.ndarray, side: int) -> np.ndarray:
    """Lanczos-resize so the short edge is ``side`` (long edge round(L side / S); no resize when it
    already is), then the central ``side`` x ``side`` square (top-left offset floor((L' - side) / 2))."""
    h, w = img.shape[:2]
    k = side / min(h, w)
    return center_crop_square(resize(img, max(side, round(w * k)), max(side, round(h * k))))


def square(img: np.ndarray, side: int) -> np.ndarray:
    """Lanczos-resize to ``side`` x ``side`` (aspect not kept)."""
    return resize(img, side, side)


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: what every image of a dataset becomes before coding and scoring."""

    name: str
    transform: Callable[[np.ndarray], np.ndarray]


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("native", lambda img: img),
    Protocol("paper", paper_size),
    Protocol("crop512", partial(short_edge_crop, side=512)),
    Protocol("square512", partial(square, side=512)),
    Protocol("square768", partial(square, side=768)),
    Protocol("square1024", partial(square, side=1024)),
)}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name`` (one line naming the known ones otherwise)."""
    if name not in PROTOCOLS:
        raise DatasetError(f"unknown protocol {name!r}; available: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _check_options(name: str, options: dict[str, Any]) -> None:
    """One line for an unknown dataset or an option its loader does not take."""
    if name not in LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(sorted(LOADERS))}")
    known = inspect.signature(LOADERS[name]).parameters
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DatasetError(f"{name}: unknown options {unknown} (known: {', '.join(known)})")


def load_dataset(name: str, protocol: str = "native", **options: Any) -> list[Sample]:
    """Load dataset ``name`` (kodak, kodak-small, folder, div2k, clic2020) with its options, under
    ``protocol`` (``PROTOCOLS``; native = as the loader gives them).

    Returns ``[(image_id, image [H, W, 3]), ...]`` in a fixed order (images as ``read_image``'s).
    """
    _check_options(name, options)
    transform = get_protocol(protocol).transform  # before any download
    return [(i, transform(img)) for i, img in LOADERS[name](**options)]


def dataset_archives(name: str, **options: Any) -> list[Archive]:
    """The pinned archives that ``load_dataset(name, **options)`` reads (none for kodak, folder...),
    without fetching anything."""
    if name not in PARTS:
        return []
    _check_options(name, options)
    parts = PARTS[name]
    chosen = {k: v for k, v in options.items() if k in inspect.signature(parts).parameters}
    return [ARCHIVES[name, p] for p in parts(**chosen)]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """[H, W, 3] image -> float32 tensor [3, H, W] in [0, 1]: uint8 / 255, float as it is
    (``read_image``'s two kinds)."""
    if np.issubdtype(np.asarray(img).dtype, np.floating):
        return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Float tensor [3, H, W] in [0, 1] -> uint8 [H, W, 3] (clamped, rounded)."""
    x = image.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()
