"""Target quality (``compress psnr=X``): the bisection over the rate points of one encode
(``pipelines.target``) and the command on a 64x64 Kodak crop, checked on the decoded PNG."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.compress import compress
from pipelines.decompress import decompress
from pipelines.metrics import psnr
from pipelines.target import best, smallest_reaching

from test_cli import run_task


def counted(values: list[float]):
    calls: list[int] = []

    def quality(i: int) -> float:
        calls.append(i)
        return values[i]

    return quality, calls


@pytest.mark.parametrize("n", [1, 2, 3, 27, 100])
def test_bisection_finds_the_smallest_point_of_a_monotone_curve_in_log_calls(n: int) -> None:
    values = [10.0 + 0.5 * i for i in range(n)]
    for target in (values[0], values[n // 2] - 0.1, values[-1]):
        quality, calls = counted(values)
        search = smallest_reaching(n, quality, target, "psnr")
        assert search.index == min(i for i, v in enumerate(values) if v >= target)
        assert len(calls) == len(set(calls)) == search.evaluations <= 1 + math.ceil(math.log2(n))


def test_bisection_lower_is_better_and_unreachable() -> None:
    lpips = [0.6, 0.5, 0.4, 0.3, 0.2]  # falls with the rate
    search = smallest_reaching(5, counted(lpips)[0], 0.35, "lpips")
    assert search.index == 3
    missed = smallest_reaching(5, counted(lpips)[0], 0.1, "lpips")
    assert missed.index is None and missed.scores == {4: 0.2}  # the highest-rate point only
    assert best(missed.scores, "lpips") == (4, 0.2)


def test_bisection_on_a_dip_returns_a_scored_point_that_reaches() -> None:
    """Quality is monotone only approximately: a dip can cost rate, never the target."""
    values = [10, 12, 19, 14, 15, 16, 21, 22]  # index 2 reaches 18, then dips below
    search = smallest_reaching(len(values), counted(values)[0], 18.0, "psnr")
    assert values[search.index] >= 18 and search.scores[search.index] == values[search.index]
    assert search.index - 1 in search.scores and search.scores[search.index - 1] < 18


@pytest.fixture(scope="module")
def crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kodim23 as kodak-small has it: a 64x64 center crop."""
    from pipelines.datasets import load_dataset

    path = tmp_path_factory.mktemp("target") / "kodim23.png"
    Image.fromarray(dict(load_dataset("kodak-small"))["kodim23"]).save(path)
    return path


def test_compress_psnr_target_writes_the_smallest_file_reaching_it(crop: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    ref = np.asarray(Image.open(crop).convert("RGB"))
    sizes = {}
    for target in (18, 22):
        out, png, scored = (tmp_path / f"p{target}.{ext}" for ext in ("diffc", "png", "scored.png"))
        code, stdout, err = run_task(compress, "compress", ["model=gaussian", f"input={crop}", f"output={out}",
                                                            f"psnr={target}", f"recon_output={scored}"], capsys)
        assert code == 0, err
        runs = int(stdout.split(f"psnr={target}: ")[1].split(" reconstruction")[0])
        assert 1 <= runs <= 1 + math.ceil(math.log2(27))  # the gaussian model's 27-step schedule
        code, _, err = run_task(decompress, "decompress", [f"input={out}", f"output={png}"], capsys)
        assert code == 0, err
        assert psnr(ref, np.asarray(Image.open(png).convert("RGB"))) >= target
        assert png.read_bytes() == scored.read_bytes()  # the image the search scored is the decoder's
        sizes[target] = out.stat().st_size
    assert sizes[22] > sizes[18]


def test_compress_unreachable_target_exits_2_one_line_no_file(crop: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p99.diffc"
    code, _, err = run_task(compress, "compress", ["model=gaussian", f"input={crop}", f"output={out}", "psnr=99"],
                            capsys)
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "unreachable" in err and "best reconstruction reaches psnr" in err


def test_compress_lpips_target_says_what_is_missing(crop: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    try:
        import lpips  # noqa: F401
    except ImportError:
        out = tmp_path / "l.diffc"
        code, _, err = run_task(compress, "compress", ["model=gaussian", f"input={crop}", f"output={out}",
                                                        "lpips=0.3"], capsys)
        assert code == 2 and not out.exists() and len(err.strip().splitlines()) == 1
        assert "lpips=X needs the lpips metric" in err and "lpips" in err
    else:
        pytest.skip("lpips is installed here: its weights decide the outcome (tests marked weights)")
