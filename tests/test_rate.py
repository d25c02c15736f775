"""One rate target (issue 25): ``diffc.rate.RateTarget`` validated once, ``within`` the one "highest-rate
point within a budget", ``DiffcCodec.encode`` keying its points by the request, and the ``bitrate``
group that compress (through its shorthands) and evaluate share (``pipelines.target.request``),
quality targets in evaluate included."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.results import load_results
from diffc.rcc.spec import PfrSpec
from diffc.codec import CodecParams, DiffcCodec
from diffc.checks import InvalidValue
from diffc.rate import RateTarget, within
from pipelines.common import PipelineError, compose
from pipelines.compress import compress
from pipelines.target import request

from test_cli import run_task
from test_pipeline import run_job_one_thread
from test_target import crop  # noqa: F401  (the fixture: kodim23 as kodak-small has it)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = CodecParams("linspace-8", channel=PfrSpec(chunk_bits=4, padding_bits=1))


# ---- the value ----------------------------------------------------------------------------------
def test_a_rate_target_is_validated_and_ordered_once() -> None:
    r = RateTarget((100, 700, 300, 700), (0.4, 0.1, 0.4))
    assert r.timesteps == (700, 300, 100) and r.bpp == (0.1, 0.4)  # increasing rate, no repeats
    assert r.keys([1000, 900, 500]) == (0.1, 0.4) and r.max_bits(1000) == pytest.approx(400.0)
    assert RateTarget().keys([1000, 900, 500]) == (900, 500)  # None = every step of the schedule
    assert RateTarget((300,)).keys([1000, 900]) == (300,) and RateTarget((300,)).max_bits(10) is None
    for bad in [dict(timesteps=()), dict(timesteps=(0,)), dict(timesteps=(300.5,)), dict(timesteps=(True,)),
                dict(bpp=(0,)), dict(bpp=(-1.0,)), dict(bpp=(math.inf,)), dict(bpp=(math.nan,)), dict(bpp=(True,))]:
        with pytest.raises(ValueError):
            RateTarget(**bad)


class Point:
    def __init__(self, bpp: float):
        self.bpp = bpp


def test_within_is_the_highest_rate_point_within_the_budget() -> None:
    points = [Point(b) for b in (0.1, 0.2, 0.2, 0.5)]
    assert within(points, 0.2) is points[2] and within(points, 0.49) is points[2]
    assert within(points, 0.5) is points[3] and within(points, 9) is points[3]
    assert within(points, 0.09) is None and within([], 1.0) is None


# ---- the encode ---------------------------------------------------------------------------------
def test_encode_keys_its_points_by_the_request(gaussian_backbone, kodak64: torch.Tensor) -> None:
    codec = DiffcCodec(gaussian_backbone, PARAMS)
    full = codec.encode(kodak64, RateTarget())  # every step: the reference for every pick
    assert [p.step_index for p in full.points] == list(range(1, 9))
    assert list(full.by_target) == codec.timesteps[1:]
    sizes = sorted({p.bpp for p in full.points})
    budgets = (sizes[0] / 2, sizes[2], (sizes[4] + sizes[5]) / 2)
    res = codec.encode(kodak64, RateTarget(bpp=budgets))
    assert list(res.by_target) == sorted(budgets)
    assert res.by_target[budgets[0]] is None  # no file is that small
    for b in budgets[1:]:  # the same bytes as the pick among a full encode's files
        assert res.by_target[b].data == within(full.points, b).data and res.by_target[b].bpp <= b
    fit = sum(p.bpp <= budgets[-1] for p in full.points)
    assert len(res.points) == fit + 1 and res.points[-1].bpp > budgets[-1]  # it stopped at the first file over
    # two stop timesteps that reach the same step: both keys, one point
    t = codec.timesteps[3]
    res = codec.encode(kodak64, RateTarget((t, t + 1, codec.timesteps[1])))
    assert list(res.by_target) == [codec.timesteps[1], t + 1, t]
    assert res.by_target[t] is res.by_target[t + 1] and res.by_target[t].data == full.points[2].data
    # the API's short paths: the end of the schedule, and stop_timesteps= for RateTarget(timesteps=)
    assert codec.encode(kodak64).points[-1].data == full.points[-1].data
    short = codec.encode(kodak64, stop_timesteps=[t])
    assert list(short.by_target) == [t] and short.by_target[t].data == full.points[2].data
    with pytest.raises(TypeError):
        codec.encode(kodak64, RateTarget((t,)), stop_timesteps=[t])


# ---- the group ----------------------------------------------------------------------------------
def test_the_group_composes_for_compress_and_evaluate() -> None:
    need = ["input=x.png", "output=x.diffc"]
    assert request(compose("compress", [*need, "timestep=300"]).bitrate).rate == RateTarget((300,))
    assert request(compose("compress", [*need, "bpp=0.25"]).bitrate).rate == RateTarget(bpp=(0.25,))
    psnr = request(compose("compress", [*need, "psnr=24"]).bitrate)
    assert (psnr.metric, psnr.quality, psnr.rate) == ("psnr", (24.0,), RateTarget())
    grouped = request(compose("compress", [*need, "bitrate=bpp", "bitrate.bpp=0.25"]).bitrate)
    assert grouped.rate.bpp == (0.25,) and grouped.rate.timesteps[0] == 900  # the group's candidates
    assert request(compose("config", []).bitrate).rate == RateTarget((700, 300, 100))
    assert request(compose("config", ["bitrate=compress"]).bitrate).rate == RateTarget()  # every step
    q = request(compose("config", ["bitrate=psnr", "bitrate.psnr=[30,20]"]).bitrate)
    assert (q.kind, q.quality) == ("psnr", (20.0, 30.0))
    lp = request(compose("config", ["bitrate=quick", "bitrate.lpips=[0.2,0.4]"]).bitrate)
    assert (lp.quality, lp.rate.timesteps) == ((0.4, 0.2), (700, 300, 100))  # lower is better: 0.4 first


@pytest.mark.parametrize("node, needle", [
    ({"stop_timesteps": [0]}, "positive integers"),
    ({"stop_timesteps": ["a"]}, "bitrate.stop_timesteps must be an integer >= 0, got 'a'"),
    ({"bpp": [0.1], "psnr": [20]}, "give one kind of target"),
    ({"bpp": [-1]}, "bpp targets must be positive"),
    ({"psnr": [float("nan")]}, "bitrate.psnr must be a number"),
    ({"lpips": []}, "non-empty"),
    ({"mode": "bpp"}, "unknown bitrate option(s) ['mode']"),
])
def test_bad_group_values_are_one_line(node: dict, needle: str) -> None:
    with pytest.raises((PipelineError, InvalidValue)) as exc:  # checked_int's, for an integer
        request(node)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_a_bpp_request_and_a_timestep_request_write_the_same_file(crop: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """compress bpp=B keeps the file of the highest-rate step within B: the very file that
    timestep=(that step's timestep) writes, and the one the group's spelling writes."""
    files = {}
    for name, args in {"bpp": ["bpp=0.5"], "group": ["bitrate=compress", "bitrate.bpp=0.5"]}.items():
        files[name] = tmp_path / f"{name}.diffc"
        code, out, err = run_task(compress, "compress", ["model=gaussian", f"input={crop}",
                                                         f"output={files[name]}", *args], capsys)
        assert code == 0, err
    t = int(re.search(r" at t=(\d+) ", out).group(1))
    files["timestep"] = tmp_path / "t.diffc"
    code, _, err = run_task(compress, "compress", ["model=gaussian", f"input={crop}", f"output={files['timestep']}",
                                                   f"timestep={t}"], capsys)
    assert code == 0, err
    data = {k: f.read_bytes() for k, f in files.items()}
    assert data["bpp"] == data["timestep"] == data["group"] and 8 * len(data["bpp"]) <= 0.5 * 64 * 64


@pytest.mark.parametrize("overrides, needle", [
    (["bpp=-1"], "bpp targets must be positive"),
    (["bpp=abc"], "bpp must be a number"),
    (["psnr=nan"], "psnr must be a number"),
    (["bitrate=quick"], "compress writes one file"),
    (["bitrate=quick", "timestep=300"], "chose another bitrate option"),
    (["bitrate=bpp"], "compress writes one file"),
    (["psnr=20", "bpp=0.5"], "give exactly one of"),
    (["psnr=20", "ms_ssim=0.9"], "give one target quality"),
    (["psnr=abc"], "psnr must be a number"),
])
def test_compress_bad_targets_exit_2_one_line_no_file(overrides: list[str], needle: str, crop: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bad.diffc"
    code, _, err = run_task(compress, "compress", ["model=gaussian", f"input={crop}", f"output={out}", *overrides],
                            capsys)
    assert code == 2 and not out.exists() and len(err.strip().splitlines()) == 1 and needle in err, err


# ---- quality targets in evaluate ----------------------------------------------------------------
FAST = ["model=gaussian", "dataset=kodak-small", "dataset.options.ids=[kodim05,kodim23]", "metrics=offline",
        "progress=false"]


def test_evaluate_quality_target_rows_reach_it_or_say_why(tmp_path: Path) -> None:
    """bitrate=psnr: per image and target, the row's (decoder's) PSNR reaches the target at the
    smallest stop the bisection found, or the row is NaN with the best PSNR reached as its reason."""
    targets = [18.0, 22.0, 60.0]
    cfg = compose("config", [*FAST, "bitrate=psnr", f"bitrate.psnr=[{','.join(map(str, targets))}]",
                              "save.diffc=true"])
    run_job_one_thread(cfg, tmp_path)
    rows, _ = load_results(tmp_path)
    codec = rows[rows["kind"] == "codec"]
    assert sorted(codec["target_quality"].unique()) == targets and set(codec["target_metric"]) == {"psnr"}
    assert len(codec) == 2 * len(targets)
    for r in codec.itertuples():
        if np.isnan(r.psnr):
            assert r.target_quality == 60 and "psnr=60 is unreachable: the best reconstruction reaches psnr" \
                in r.metric_errors and np.isnan(r.bpp)
            continue
        assert r.psnr >= r.target_quality
        size = (tmp_path / "diffc" / r.image / f"psnr{r.target_quality:g}.diffc").stat().st_size
        assert r.bpp == 8 * size / (64 * 64)
    reached = codec[codec["psnr"].notna()].set_index(["image", "target_quality"])["bpp"]
    for image in ("kodim05", "kodim23"):
        assert reached[(image, 22.0)] > reached[(image, 18.0)]  # a higher target costs more bits


def test_evaluate_bad_target_exits_2_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pipelines.evaluate", *FAST, "bitrate=psnr", "bitrate.psnr=[abc]",
                        f"root={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: bitrate.psnr must be a number (the target), "
                                                                   "got ['abc']"], r.stderr
    assert not list(tmp_path.rglob("*.parquet"))
    (failed,) = tmp_path.rglob("failed.json")  # the job's folder says why, as for any failed job
    assert "bitrate.psnr" in json.loads(failed.read_text())["error"]
