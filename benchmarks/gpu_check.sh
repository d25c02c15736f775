#!/usr/bin/env bash
# The checks that need a GPU, as one bounded script for a lent CUDA machine (no internet there: random
# real-size weights only, built from configs). Run from anywhere with a Python that has torch (a CUDA
# build) and this project's dependencies (diffusers, omegaconf, hydra-core...; carry them as wheels):
#   bash benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]
# Each check writes OUT_DIR/NAME.log (default OUT_DIR: $OUT, else outputs/gpu_check) under its own
# timeout (on a GPU their sum stays under 8 minutes: 470 s); the last JSON line of every log is gathered into
# OUT_DIR/gpu_check.json: {"checks": {NAME: {"rc", "seconds", "result"}}, "dry_run", "device"}.
#   tests            tests/test_dtypes.py + the meta-device test with DIFFC_TEST_DEVICE=cuda: fp16 / bf16 and
#                    cpu_offload round trips of every tiny twin (compile, traced: tiny-sd15), bit-exact on the GPU
#   warn_ops         the ops that warn under deterministic mode (warn_only) in a CUDA encode/decode
#   backbone_step    sd15 / sdxl / flux-dev, float32 then half (fp16 UNets, bf16 Flux): s per step
#   gpu_readiness    benchmarks/gpu_readiness.py --device cuda (ms per search step, eager and compiled), if present
#   full_size        one 768x512 Kodak encode + decode on the SD 1.5 architecture: seconds, bit-exact or drift
#   decode_drift     the CUDA fp16 -> CPU float32 drift case (decode_drift.py --half-only)
# --dry-run: the same checks at CPU sizes (device cpu, tiny-sd15 in place of the SD 1.5 architecture,
# backbone_step only builds the architectures on the meta device), so this script is tested without
# a GPU (tests/test_gpu_check.py); exits 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-outputs/gpu_check}}"
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.rc
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUBLAS_WORKSPACE_CONFIG=:4096:8 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ $DRY = 1 ]; then DEV=cpu; else DEV=cuda; fi
FAILED=0
run() {  # name timeout_s command...
  local name=$1 limit=$2 t0=$SECONDS rc; shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  echo "$rc $((SECONDS - t0))" >"$OUT_DIR/$name.rc"
  [ $rc = 0 ] || FAILED=1
  echo "rc=$rc ($name, $((SECONDS - t0)) s)"; tail -n 1 "$OUT_DIR/$name.log" | cut -c1-400
}
[ $DRY = 1 ] || run nvidia-smi 10 nvidia-smi
run tests 80 env DIFFC_TEST_DEVICE=$DEV "$PY" -m pytest -q -p no:cacheprovider tests/test_dtypes.py \
  tests/test_meta_device.py -k "half or offload or meta or (traced and sd15)"
run warn_ops 30 "$PY" -c "
import json, sys, warnings, torch
from diffc.codec import DiffcCodec
from pipelines.common import build_codec, compose
ops = {}
for name in ('tiny-sd15', 'tiny-sdxl', 'tiny-flux', 'tiny-sd35-medium', 'tiny-ddpm'):
    codec = build_codec(compose('compress', [f'model={name}', 'codec.schedule=linspace-8']), {'device': '$DEV'})
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        p = codec.encode(img, stop_timesteps=[codec.timesteps[4]], caption='a kite').points[-1]
        codec.decode(p.data)
    ops[name] = sorted({str(w.message).split(chr(10))[0][:200] for w in seen if 'determinis' in str(w.message)})
print(json.dumps({'bench': 'warn_ops', 'device': '$DEV', 'ops_that_warn': ops}))"
if [ $DRY = 1 ]; then
  run backbone_step 60 "$PY" benchmarks/backbone_step.py --dry-run
else
  run backbone_step 95 "$PY" benchmarks/backbone_step.py --quick --device cuda --dtype float32 --budget 80 \
    --backbones sd15 sdxl flux-dev
  run backbone_step_half 65 "$PY" benchmarks/backbone_step.py --quick --device cuda --dtype half --budget 50 \
    --backbones sd15 sdxl flux-dev
fi
# its identity checks run on the CPU either way (~100 s on 2 cores; the dry run's limit is for such a machine)
if [ $DRY = 1 ]; then
  run gpu_readiness 240 "$PY" benchmarks/gpu_readiness.py --device cpu --quick
else
  run gpu_readiness 80 "$PY" benchmarks/gpu_readiness.py --device cuda --quick
fi
if [ $DRY = 1 ]; then
  run full_size 40 "$PY" benchmarks/decode_drift.py --full-size tiny --device cpu --quick
else
  run full_size 50 "$PY" benchmarks/decode_drift.py --full-size sd15-arch --device cuda --stop-t 700
fi
# the half-precision drift case: fp16 on the GPU (dry run: on the CPU, fewer steps) -> float32 on the CPU
if [ $DRY = 1 ]; then
  run decode_drift 60 "$PY" benchmarks/decode_drift.py --quick --device cpu --half-only --stop-t 900
else
  run decode_drift 60 "$PY" benchmarks/decode_drift.py --quick --device cuda --half-only
fi
"$PY" - "$OUT_DIR" $DRY $DEV <<'EOF'
import json, sys
from pathlib import Path
out, dry, dev = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
checks = {}
for rc_file in sorted(out.glob("*.rc")):
    rc, seconds = (int(v) for v in rc_file.read_text().split())
    lines = [ln for ln in (out / f"{rc_file.stem}.log").read_text(errors="replace").splitlines() if ln.startswith("{")]
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    tail = (out / f"{rc_file.stem}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
    checks[rc_file.stem] = {"rc": rc, "seconds": seconds, "result": result if result is not None else tail[0][:400]}
(out / "gpu_check.json").write_text(json.dumps({"dry_run": dry, "device": dev, "checks": checks}, indent=1))
print(f"wrote {out / 'gpu_check.json'}: " + ", ".join(f"{k} rc={v['rc']}" for k, v in checks.items()))
EOF
exit $FAILED
