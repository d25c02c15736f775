"""Convert published rate-distortion numbers into one tidy table (run once; the CSV is shipped).

    python -m analysis.make_published src=DIR [out=analysis/data/published_points.csv]

(a Hydra app: ``analysis/conf/make_published.yaml``; reading the DiffEIC sheet needs openpyxl,
``pip install -e '.[published]'``; the shipped CSV needs nothing.)

``src`` holds the files listed in docs/published.md (MS-ILLM's results.csv, DiffEIC's
results.xlsx, StableCodec's results.txt, CompressAI's Kodak JSON); the table has one row per
published point: ``COLUMNS`` (NaN where a source gives no value). ``protocol`` is what the images
became, in this project's vocabulary (conf/protocol, docs/datasets.md): ``native`` (full
resolution), ``crop512`` (CoD's), ... or ``unstated``: points of different datasets or protocols are
never comparable, and ``analysis.rd_curves reference_points=true`` overlays only the points of the
figure's dataset and protocol. ``setting`` is the source's label of the point (quality level, QP).
"""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from omegaconf import DictConfig

from . import cli
from .errors import UsageError, one_line_errors

COLUMNS = ("method", "dataset", "protocol", "setting", "bpp", "psnr", "ms_ssim", "lpips", "dists", "fid",
           "kid", "source")
METRIC_COLUMNS = ("bpp", "psnr", "ms_ssim", "lpips", "dists", "fid", "kid")
#: the shipped table
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "published_points.csv"

ILLM = "facebookresearch/NeuralCompression@5be7844:projects/illm/results.csv"
DIFFEIC = "huai-chang/DiffEIC@9c21915:indicators/results.xlsx"
STABLECODEC = "LuizScarlet/StableCodec@e7994cf:results/results.txt"
COMPRESSAI = "InterDigitalInc/CompressAI@128f003:results/image/kodak/{}.json"
COD = "microsoft/GenCodec:CoD/README.md"

#: (source's dataset name) -> (dataset, protocol). Kodak: the 24 images at native 768x512 (the
#: sources' MS-ILLM Kodak points agree to 3 digits, so DiffEIC's Kodak is the native one too);
#: MS-ILLM and StableCodec: DIV2K validation (0801-0900) and CLIC 2020 (test) at full resolution;
#: DiffEIC's Tecnick and CLIC sheets do not state the resolution ("unstated": matches no run).
PROTOCOLS = {
    ("illm", "kodak"): ("kodak", "native"),
    ("illm", "div2k"): ("div2k", "native"),
    ("illm", "clic2020"): ("clic2020", "native"),
    ("diffeic", "Kodak"): ("kodak", "native"),
    ("diffeic", "Tecnick"): ("tecnick", "unstated"),
    ("diffeic", "CLIC2020"): ("clic2020", "unstated"),
    ("stablecodec", "Kodak"): ("kodak", "native"),
    ("stablecodec", "CLIC 2020 Test"): ("clic2020", "native"),
    ("stablecodec", "DIV2K Val"): ("div2k", "native"),
    ("cod", "Kodak"): ("kodak", "crop512"),
}
#: CoD's README (Jia et al., CVPR 2026; microsoft/GenCodec CoD/README.md), Kodak center-cropped to
#: 512x512 (protocol crop512), transcribed (docs/datasets.md): (method, setting, values). DiffC as
#: CoD ran it: recon timestep -> bpp and PSNR as the README rounds them.
COD_POINTS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("CoD (pixel)", "0.0039 bpp", {"bpp": 0.0039, "psnr": 16.21, "lpips": 0.434, "dists": 0.186, "fid": 46.0}),
    ("CoD (latent)", "0.0039 bpp", {"bpp": 0.0039, "psnr": 15.03, "lpips": 0.415, "dists": 0.188, "fid": 45.7}),
    ("CoD (latent)", "0.00024 bpp", {"bpp": 0.00024, "psnr": 10.09, "lpips": 0.686, "dists": 0.288, "fid": 69.5}),
    *(("DiffC (CoD's run)", f"t={t}", {"bpp": bpp, "psnr": psnr}) for t, bpp, psnr in (
        (900, 0.005, 20.0), (500, 0.020, 28.0), (200, 0.090, 34.0), (100, 0.220, 37.0), (50, 0.500, 40.0),
        (20, 1.47, 44.0))),
)
#: the sources' metric names -> ours
RENAME = {"bpp": "bpp", "psnr": "psnr", "ms-ssim": "ms_ssim", "msssim": "ms_ssim", "ms_ssim": "ms_ssim",
          "lpips": "lpips", "dists": "dists", "fid": "fid", "kid": "kid"}


def number(value: Any) -> float:
    """A cell as a float: NaN for empty cells and placeholders such as '/'."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def point(method: str, key: tuple[str, str], setting: Any, values: dict[str, Any], source: str) -> dict[str, Any]:
    dataset, protocol = PROTOCOLS[key]
    row = {"method": method, "dataset": dataset, "protocol": protocol,
           "setting": "" if setting is None else str(setting), "source": source}
    for name, v in values.items():
        if name.lower() in RENAME:
            row[RENAME[name.lower()]] = number(v)
    return row


def read_illm(path: Path) -> list[dict[str, Any]]:
    """MS-ILLM and its No-GAN ablation; setting = the point's rank in rate within its curve."""
    df = pd.read_csv(path)
    out = []
    for (model, dataset), grp in df.groupby(["model", "dataset"], sort=False):
        for k, r in enumerate(grp.sort_values("bpp").to_dict("records"), 1):
            out.append(point(str(model), ("illm", str(dataset)), f"point {k}", r, ILLM))
    return out


def read_diffeic(path: Path) -> list[dict[str, Any]]:
    """The DiffEIC workbook: per sheet, a header row (index, bpp, LPIPS, ...) and blocks of rows:
    a method's name alone in the first cell, then one row per point (first cell = its setting)."""
    try:
        import openpyxl
    except ImportError:
        raise UsageError("reading the DiffEIC .xlsx needs openpyxl: pip install -e '.[published]'") from None
    out = []
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    for ws in wb.worksheets:
        header: list[str] | None = None
        method = None
        for cells in ws.iter_rows(values_only=True):
            cells = list(cells)
            if all(c is None for c in cells):
                continue
            if header is None and any(isinstance(c, str) and c.lower() == "bpp" for c in cells):
                header = [str(c).strip() if c is not None else "" for c in cells]
                continue
            if all(c is None for c in cells[1:]):
                method = str(cells[0]).strip()
                continue
            if header is None or method is None:
                raise UsageError(f"{path.name} sheet {ws.title}: a data row before the header or a method name")
            values = {h: c for h, c in zip(header[1:], cells[1:]) if h}
            out.append(point(method, ("diffeic", ws.title), cells[0], values, DIFFEIC))
    return out


def read_stablecodec(path: Path) -> list[dict[str, Any]]:
    """``# Dataset`` headings, then ``metric = [..]`` Python lists."""
    out = []
    blocks = re.split(r"^#\s*", path.read_text(), flags=re.M)
    for block in filter(str.strip, blocks):
        title, _, body = block.partition("\n")
        title = re.sub(r"^StableCodec on ", "", title.strip())
        lists = {m[1]: ast.literal_eval(m[2]) for m in re.finditer(r"^(\w+)\s*=\s*(\[.*?\])", body, flags=re.M | re.S)}
        n = len(lists["bpp"])
        if any(len(v) != n for v in lists.values()):
            raise UsageError(f"{path.name} {title}: lists of different lengths")
        for k in range(n):
            out.append(point("StableCodec", ("stablecodec", title), f"point {k + 1}",
                             {name: v[k] for name, v in lists.items()}, STABLECODEC))
    return out


def read_compressai(path: Path) -> list[dict[str, Any]]:
    """CompressAI's results JSON: name, results.{bpp, psnr, ms-ssim}."""
    data = json.loads(path.read_text())
    res = data["results"]
    stem = path.stem.removeprefix("compressai_kodak_")
    source = COMPRESSAI.format({"bpg444": "bpg_444_x265_ycbcr"}.get(stem, stem))
    name = {"bpg444": "BPG 4:4:4"}.get(stem, data["name"])
    return [point(f"{name} (CompressAI)", ("stablecodec", "Kodak"), f"point {k + 1}",
                  {m: v[k] for m, v in res.items()}, source) for k in range(len(res["bpp"]))]


def read_cod() -> list[dict[str, Any]]:
    """CoD's README rows (``COD_POINTS``; no file to read)."""
    return [point(method, ("cod", "Kodak"), setting, values, COD) for method, setting, values in COD_POINTS]


def tidy(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    df[list(METRIC_COLUMNS)] = df[list(METRIC_COLUMNS)].astype("float64")
    return df


def convert(src: Path) -> pd.DataFrame:
    """Every published point of the files in ``src``."""
    need = ["illm_results.csv", "diffeic_results.xlsx", "stablecodec_results.txt"]
    missing = [n for n in need if not (src / n).exists()]
    if missing:
        raise UsageError(f"{src}: missing {', '.join(missing)}")
    rows = read_illm(src / "illm_results.csv") + read_diffeic(src / "diffeic_results.xlsx")
    rows += read_stablecodec(src / "stablecodec_results.txt")
    for p in sorted(src.glob("compressai_kodak_*.json")):
        rows += read_compressai(p)
    return tidy(rows + read_cod())


def load_published(path: str | Path = DEFAULT_OUT) -> pd.DataFrame:
    """The shipped table (pandas only)."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return tidy(df.to_dict("records"))


@one_line_errors(OSError)
def make_published(cfg: DictConfig) -> Path:
    cli.require(cfg, "src")
    out = Path(cfg.out) if cfg.out else DEFAULT_OUT
    df = convert(Path(cfg.src))
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.10g")
    print(f"{out}: {len(df)} points, {df['method'].nunique()} methods, protocols "
          f"{', '.join(sorted(df['protocol'].unique()))}")
    return out


if __name__ == "__main__":
    cli.main(make_published, "make_published", verbatim=("src", "out"), config_dir=cli.ANALYSIS_CONF_DIR)


# ---- overlaying the points on this project's figures ---------------------------------------------
KODAK_NATIVE = {(768, 512), (512, 768)}
#: (dataset, protocol) whose images are another protocol's: paper keeps images of at most 1 MP as
#: they are (conf/protocol/paper.yaml), so Kodak under paper is Kodak native
SAME_AS = {("kodak", "paper"): "native"}


def figure_protocol(dataset: str, rows: pd.DataFrame) -> str:
    """The protocol of this project's rows of ``dataset``, in the published table's vocabulary:
    the rows' ``protocol`` column (``SAME_AS`` applied; ``mixed`` when the rows have several). Rows
    written before the column existed (null) get it from their sizes (columns image, width, height):
    Kodak at 768x512 / 512x768 is ``native``, DIV2K at about 1 MP in multiples of 64 ``paper``,
    the DIV2K validation images at full size ``native``; anything else ``WxH`` (or ``mixed``),
    which no published point has."""
    named = set(rows["protocol"].dropna()) if "protocol" in rows else set()
    if len(named) > 1:
        return "mixed"
    if named:
        (name,) = named
        return SAME_AS.get((dataset, name), name)
    sizes = set(zip(rows["width"].astype(int), rows["height"].astype(int)))
    if dataset == "kodak" and sizes and sizes <= KODAK_NATIVE:
        return "native"
    if dataset == "div2k" and sizes:
        if all(w % 64 == 0 and h % 64 == 0 and 0.8e6 <= w * h <= 1.25e6 for w, h in sizes):
            return "paper"
        ids = set(rows["image"].astype(str))
        if all(max(w, h) == 2040 for w, h in sizes) and all("0801" <= i <= "0900" for i in ids):
            return "native"
    if len(sizes) == 1:
        (w, h), = sizes
        return f"{w}x{h}"
    return "mixed"


def matching_points(published: pd.DataFrame, protocol: str, metric: str,
                    methods: list[str] | None = None, dataset: str | None = None) -> pd.DataFrame:
    """The published points of ``protocol`` (and, if given, of ``dataset`` and ``methods`` only)
    that give ``metric``: columns method, protocol, setting, source, bpp (NaN for a ceiling), value."""
    if metric not in published.columns:
        return pd.DataFrame(columns=["method", "protocol", "setting", "source", "bpp", "value"])
    sel = published[(published["protocol"] == protocol) & published[metric].notna()]
    if dataset is not None:
        sel = sel[sel["dataset"] == dataset]
    if methods:
        sel = sel[sel["method"].isin(methods)]
    sel = sel.assign(value=sel[metric].astype(float))
    return sel[["method", "protocol", "setting", "source", "bpp", "value"]].sort_values(
        ["method", "source", "bpp"], ignore_index=True)
