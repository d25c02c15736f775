"""What one progressive encode saves over one encode per bitrate (the evaluation sweep's design).

For B rate points (stop timesteps), the pipeline encodes each image ONCE with every stop timestep
(``DiffcCodec.encode(stop_timesteps=[...])``: the bitstream of a lower timestep extends the one of
a higher timestep) instead of B separate encodes. Same run, same images, same codec:

  progressive  one ``encode(x, stop_timesteps=all B)``;
  separate     B calls ``encode(x, stop_timesteps=[t])``, one per rate point.

Counted by wrapping the backbone instance: ``predict_x0`` calls (one per encoding step = the model
evaluations; ``network`` calls are counted too when the backbone has a network) and wall time.
Every separate file must be byte-identical to the progressive encode's file for the same stop
(``files_identical``): the progressive stream costs no rate.

A separate encode to stop step k_i costs k_i evaluations, the progressive one max k_i, so
eval_ratio = sum k_i / max k_i: B when every rate point sits at the end of the schedule, less when
the high-noise points stop early (``ideal_eval_ratio`` = that formula, from the plan alone). Decoding
is not part of the comparison: the pipeline decodes every file either way (sum k_i evaluations,
``evals_decode_each``), to check the decoder reproduces the encoder's x_t.

The paper sweep, per image (``paper_evals_per_image`` vs ``paper_evals_before``), counted on the
first image with the paper's settings (``bitrate=paper``: 18 rate points, the reference's Flux
schedule ``paper-flux``, 152 steps to t=10; evaluation counts do not depend on the network, so the
Gaussian backbone counts them for every backbone):

  before  one progressive encode + one from-scratch decode per rate point (sum k_i) + a 50-step
          uniform ODE reconstruction (51 evaluations) per rate point;
  now     one progressive encode + ONE progressive decode that yields every rate point's x_t
          (``DiffcCodec.decode_prefixes``, what ``pipelines.evaluate`` runs) + DDIM on the
          reference's denoising timesteps below each point (``recon_grid=reference``).

    python benchmarks/sweep_cost.py [--quick] [--model gaussian] [--bitrate paper] [--images N]

--quick: the Gaussian backbone on one kodak-small image, central 32x32 crop. Default: all four
kodak-small images at 64x64. ``--model tiny-sd15`` (etc.) runs a diffusers backbone (random weights).
The last stdout line is one JSON object {"bench": "sweep_cost", ...}.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import _common as C  # noqa: I001  (puts the repo on sys.path)
import torch
from omegaconf import OmegaConf

from pipelines.common import CONF_DIR, build_codec, compose
from pipelines.target import request


def counted(obj: Any, name: str, counter: dict[str, int]) -> None:
    """Replace ``obj.name`` by a wrapper that counts its calls in ``counter[name]``."""
    fn: Callable = getattr(obj, name)

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        counter[name] += 1
        return fn(*a, **kw)

    setattr(obj, name, wrapper)


def paper_evals(x: torch.Tensor, counter: dict[str, int], schedule: str = "paper-flux") -> tuple[int, int]:
    """(now, before) model evaluations of one image of the paper sweep (see the module doc).

    Counts do not depend on the chunk size or the image size: the codec's own chunking is used on
    a 16 x 16 crop (the paper's 14-bit chunks only slow the count down)."""
    codec = build_codec(compose("config", ["model=gaussian", "parity=reference", f"codec.schedule={schedule}",
                                           "codec.recon.mode=ode"]))
    assert codec.params.recon.grid == "reference", "parity=reference sets the reference grid"
    counted(codec.backbone, "predict_x0", counter)
    stops = sorted({int(t) for t in OmegaConf.load(CONF_DIR / "bitrate" / "paper.yaml").stop_timesteps}, reverse=True)
    x = x[:, :16, :16]

    def evals(run: Callable[[], Any]) -> tuple[int, Any]:
        counter["predict_x0"] = 0
        out = run()
        return counter["predict_x0"], out

    encode, res = evals(lambda: codec.encode(x, stop_timesteps=stops))
    last = max(res.points, key=lambda pt: pt.step_index)
    decode_now, _ = evals(lambda: list(codec.decode_prefixes(last.data, [pt.step_index for pt in res.points])))
    decode_before, _ = evals(lambda: [codec.decode(pt.data, recon_grid="uniform", recon_steps=50)
                                      for pt in res.points])
    C.log(f"paper sweep, one image, {len(res.points)} rate points: encode {encode} + one progressive decode with "
          f"reference-grid reconstructions {decode_now} = {encode + decode_now} evaluations; before: encode "
          f"{encode} + a decode and a 50-step reconstruction per point {decode_before} = {encode + decode_before}")
    return encode + decode_now, encode + decode_before


def main() -> None:
    p = C.parser(__doc__.strip().splitlines()[0])
    p.add_argument("--model", default="gaussian", help="conf/model/NAME.yaml (offline ones: gaussian, tiny-*)")
    p.add_argument("--bitrate", default="paper", help="conf/bitrate/NAME.yaml with stop timesteps and no target")
    p.add_argument("--images", type=int, default=None, help="how many kodak-small images (default: 1 quick, 4)")
    args = p.parse_args()
    C.setup(args)
    started = time.perf_counter()

    codec = build_codec(compose("config", [f"model={args.model}"]),
                        None if args.model == "gaussian" else {"device": args.device})
    backbone = codec.backbone
    counter = {"predict_x0": 0, "network": 0}
    counted(backbone, "predict_x0", counter)
    if hasattr(backbone, "network"):
        counted(backbone, "network", counter)

    req = request(OmegaConf.load(CONF_DIR / "bitrate" / f"{args.bitrate}.yaml"))
    if req.kind != "stop_timesteps" or req.rate.timesteps is None:
        raise SystemExit(f"--bitrate {args.bitrate}: need a config of stop timesteps without targets")
    # distinct rate points: requested timesteps that land on the same schedule step are one file
    by_step = {k: t for t, k in codec.stop_steps(req.rate).items()}  # the lowest t per step (last)
    stops = [by_step[k] for k in sorted(by_step)]  # decreasing timestep = increasing rate
    steps = sorted(by_step)
    n_images = args.images or (1 if args.quick else 4)
    images = C.kodak_small(args.quick)[:n_images]
    C.log(f"sweep_cost: {args.model} ({codec.params.schedule}, {len(codec.timesteps) - 1} steps), "
          f"{len(stops)} rate points {stops} -> steps {steps}, {len(images)} image(s) "
          f"{tuple(images[0][1].shape[1:])}")

    # warm-up (first-call costs: lazy imports, allocator) outside both timings
    codec.encode(images[0][1], stop_timesteps=[stops[0]])

    rows, identical = [], True
    totals = {"progressive": [0, 0, 0.0], "separate": [0, 0, 0.0]}  # predict_x0, network, seconds
    for image_id, x in images:
        counter.update(predict_x0=0, network=0)
        t0 = time.perf_counter()
        prog = codec.encode(x, stop_timesteps=stops)
        dt = time.perf_counter() - t0
        totals["progressive"][0] += counter["predict_x0"]
        totals["progressive"][1] += counter["network"]
        totals["progressive"][2] += dt
        files = {pt.step_index: pt.data for pt in prog.points}
        row = {"image": image_id, "evals_progressive": counter["predict_x0"], "s_progressive": dt}
        counter.update(predict_x0=0, network=0)
        t0 = time.perf_counter()
        for t in stops:
            sep = codec.encode(x, stop_timesteps=[t])
            (pt,) = sep.points
            identical &= files.get(pt.step_index) == pt.data
        dt = time.perf_counter() - t0
        totals["separate"][0] += counter["predict_x0"]
        totals["separate"][1] += counter["network"]
        totals["separate"][2] += dt
        row |= {"evals_separate": counter["predict_x0"], "s_separate": dt}
        rows.append(row)
    C.table(rows)

    paper_now, paper_before = paper_evals(images[0][1], {"predict_x0": 0})
    ev_p, net_p, s_p = totals["progressive"]
    ev_s, net_s, s_s = totals["separate"]
    ideal = sum(steps) / max(steps)
    figures = {
        "model": args.model, "schedule": codec.params.schedule, "images": len(images),
        "image_size": list(images[0][1].shape[1:]), "stop_timesteps": stops, "stop_steps": steps,
        "bitrates": len(stops),
        "evals_progressive": ev_p, "evals_separate": ev_s, "eval_ratio": ev_s / ev_p,
        "ideal_eval_ratio": ideal,
        "network_calls_progressive": net_p, "network_calls_separate": net_s,
        "time_progressive_s": s_p, "time_separate_s": s_s, "time_ratio": s_s / s_p,
        "files_identical": bool(identical),
        "evals_decode_each": sum(steps) * len(images),
        "paper_evals_per_image": paper_now, "paper_evals_before": paper_before,
        "paper_eval_ratio": paper_before / paper_now,
    }
    C.log(f"B = {len(stops)} rate points: {ev_s} vs {ev_p} model evaluations ({ev_s / ev_p:.2f}x, "
          f"ideal {ideal:.2f}x), {s_s:.1f} s vs {s_p:.1f} s ({s_s / s_p:.2f}x); files identical: {identical}")
    if not identical:
        C.log("ERROR: a separate encode's file differs from the progressive encode's file")
    C.emit("sweep_cost", args, figures, started)
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
