#!/usr/bin/env bash
# The prepared GPU check: everything a fresh GPU machine should run, in one call of at most
# 8 minutes, with every log and table written into OUTDIR.
#
#   tools/gpu_check.sh OUTDIR             run it (steps that need CUDA are skipped, with a
#                                         message, where there is none)
#   tools/gpu_check.sh --dry-run OUTDIR   only write the plan (steps, limits, commands)
#
# Steps, in order of importance, each under its own time limit and all under one deadline
# ($GPU_CHECK_BUDGET seconds, default 470): a step that would start with less than 15 s left
# is skipped, and says so. A step that fails does not stop the ones after it.
#   env        GPU, driver, torch and CUDA versions, CPU count
#   wheels     pip install --no-deps --no-index .whl/*.whl (carried: the machine has no network;
#              pycocotools for the tests, ninja for a parallel build)
#   build      the extension for this GPU's architecture (MRCNN_FORCE_CUDA=1)
#   pytest     pytest -k cuda (with -n auto when pytest-xdist is installed), junit XML
#   memcheck   compute-sanitizer memcheck over tools/ops_smoke.py (every op, dtype, odd sizes,
#              every bad-argument case)
#   racecheck  compute-sanitizer racecheck over the NMS part of tools/ops_smoke.py
#   ops        benchmarks/ops.py --device cuda (ours, plain PyTorch, torchvision if installed)
#   inference  benchmarks/inference.py: R50 and R101 at 512 and 1024, exact, tf32 and bf16
#   batch      benchmarks/inference.py: R101 at 1024, 8 images per call, exact and bf16
#   video      a generated 1280x720 test video (tools/make_video.py), in $TMPDIR
#   realtime   realtime_demo.py on that video, in its default size and precision
# Then the sections the benchmarks added to benchmarks/RESULTS.md go to OUTDIR/RESULTS_new.md,
# and the table of steps to OUTDIR/summary.md. The exit status is 1 when a step failed.
# Environment: PYTHON (default python), GPU_CHECK_BUDGET, GPU_CHECK_STEPS (the names of the
# steps to run, default all), GPU_CHECK_VIDEO_FRAMES (default 300).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: tools/gpu_check.sh [--dry-run] OUTDIR" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "error: cannot create $1" >&2; exit 2; }
export PY=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET:-470}
export FRAMES=${GPU_CHECK_VIDEO_FRAMES:-300}
export OUT SCRATCH=${TMPDIR:-/tmp}/mrcnn-gpu-check
mkdir -p "$SCRATCH"
START=$(date +%s)
SUMMARY="$OUT/summary.md"
RESULTS_LINES=$(wc -l < benchmarks/RESULTS.md)
WEIGHTS="${XDG_CACHE_HOME:-$HOME/.cache}/mrcnn/bench/synthetic_resnet101_nc81_seed1.h5"
export WEIGHTS
FAILED=0

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  HAVE_CUDA=1
else
  HAVE_CUDA=0
fi

# The steps. Each runs in its own bash under `timeout`, its output in OUTDIR/<name>.log.
step_env() {
  nvidia-smi || echo "nvidia-smi: not available"
  echo "CPUs $(nproc)"; command -v nvcc && nvcc --version | tail -1
  "$PY" - <<'PYTHON'
import sys
from importlib import metadata
import torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("torchvision", "numpy", "pycocotools", "pytest", "pytest-xdist", "opencv-python",
             "ninja"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "not installed")
PYTHON
}
step_wheels() {
  shopt -s nullglob
  local wheels=(.whl/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then echo "no .whl/*.whl carried: nothing to install"; return 0; fi
  "$PY" -m pip install --no-deps --no-index "${wheels[@]}"
}
step_build() {
  local arch
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || return 1
  echo "TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc)"
  MRCNN_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) \
    "$PY" -m pip install --no-deps --no-build-isolation -e .
}
step_pytest() {
  local parallel=()
  if "$PY" -c "import xdist" 2>/dev/null; then parallel=(-n auto); fi
  "$PY" -m pytest -q -k cuda "${parallel[@]}" --junitxml="$OUT/pytest.xml"
}
sanitizer() {
  local tool
  tool=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null)
  if [ -z "$tool" ]; then echo "compute-sanitizer not found (PATH, \$CUDA_HOME/bin)"; return 1; fi
  "$tool" --error-exitcode 1 "$@"
}
step_memcheck() { sanitizer --tool memcheck "$PY" tools/ops_smoke.py --device cuda; }
step_racecheck() { sanitizer --tool racecheck "$PY" tools/ops_smoke.py --device cuda --only nms; }
step_ops() { "$PY" benchmarks/ops.py --device cuda --repeat 20; }
step_inference() {
  "$PY" benchmarks/inference.py --device cuda --backbones resnet50 resnet101 --sizes 512 1024 \
    --precision exact tf32 bf16 --repeat 20 --note "tools/gpu_check.sh"
}
step_batch() {
  "$PY" benchmarks/inference.py --device cuda --backbones resnet101 --sizes 1024 --batch 8 \
    --precision exact bf16 --repeat 5 --note "tools/gpu_check.sh"
}
step_video() {
  "$PY" tools/make_video.py "$SCRATCH/clip_1280x720.mp4" --size 1280x720 --frames "$FRAMES"
}
step_realtime() {
  if [ ! -f "$WEIGHTS" ]; then
    "$PY" -c "from convert_weights.synthetic import write_synthetic_weights as w; import sys; w('mrcnn_resnet101_nc81', 1, sys.argv[1])" "$WEIGHTS" || return 1
  fi
  "$PY" realtime_demo.py --source "$SCRATCH/clip_1280x720.mp4" --output "$SCRATCH/annotated.mp4" \
    --no-display --device cuda --weights "$WEIGHTS"
}
export -f step_env step_wheels step_build step_pytest sanitizer step_memcheck step_racecheck \
  step_ops step_inference step_batch step_video step_realtime

# name, time limit (s), needs (cpu or gpu)
STEPS=(
  "env 60 cpu" "wheels 60 cpu" "build 180 gpu" "pytest 150 gpu" "memcheck 120 gpu"
  "racecheck 60 gpu" "ops 60 gpu" "inference 120 gpu" "batch 60 gpu" "video 40 cpu"
  "realtime 90 gpu"
)
if [ -n "${GPU_CHECK_STEPS:-}" ]; then
  chosen=()
  for entry in "${STEPS[@]}"; do
    for name in $GPU_CHECK_STEPS; do [ "${entry%% *}" = "$name" ] && chosen+=("$entry"); done
  done
  STEPS=("${chosen[@]}")
fi

echo "# tools/gpu_check.sh $(date '+%Y-%m-%d %H:%M')" > "$SUMMARY"
echo "" >> "$SUMMARY"
echo "Budget ${BUDGET} s; CUDA device: $([ $HAVE_CUDA = 1 ] && echo yes || echo no)." >> "$SUMMARY"
echo "" >> "$SUMMARY"
echo "| step | limit s | result | seconds | log |" >> "$SUMMARY"
echo "|---|---|---|---|---|" >> "$SUMMARY"

for entry in "${STEPS[@]}"; do
  read -r name limit needs <<< "$entry"
  if [ $DRY_RUN = 1 ]; then
    echo "| $name | $limit | planned ($needs) | | |" >> "$SUMMARY"
    continue
  fi
  if [ "$needs" = gpu ] && [ $HAVE_CUDA = 0 ]; then
    echo "skipped $name: needs a CUDA device, and torch sees none here"
    echo "| $name | $limit | skipped: no CUDA device | | |" >> "$SUMMARY"
    continue
  fi
  left=$((START + BUDGET - $(date +%s)))
  if [ $left -lt 15 ]; then
    echo "skipped $name: ${left} s left of the ${BUDGET} s budget"
    echo "| $name | $limit | skipped: out of time | | |" >> "$SUMMARY"
    continue
  fi
  allowed=$(( limit < left - 5 ? limit : left - 5 ))
  echo "== $name (at most ${allowed} s)"
  began=$(date +%s)
  timeout -k 5 "$allowed" bash -c "step_$name" > "$OUT/$name.log" 2>&1
  status=$?
  took=$(( $(date +%s) - began ))
  case $status in
    0) result="ok" ;;
    124|137) result="**timed out**"; FAILED=1 ;;
    *) result="**failed (exit $status)**"; FAILED=1 ;;
  esac
  echo "   $result in ${took} s; log: $OUT/$name.log"
  echo "| $name | $limit | $result | $took | $name.log |" >> "$SUMMARY"
done

if [ $DRY_RUN = 1 ]; then
  for entry in "${STEPS[@]}"; do declare -f "step_${entry%% *}"; done > "$OUT/plan.sh"
  echo "" >> "$SUMMARY"
  echo "Dry run: nothing was run; the steps' commands are in plan.sh." >> "$SUMMARY"
  cat "$SUMMARY"
  exit 0
fi
tail -n +$((RESULTS_LINES + 1)) benchmarks/RESULTS.md > "$OUT/RESULTS_new.md"
grep -h "frames in" "$OUT/realtime.log" >> "$SUMMARY" 2>/dev/null || true
echo "" >> "$SUMMARY"
echo "Total $(( $(date +%s) - START )) s. New benchmark tables: RESULTS_new.md." >> "$SUMMARY"
cat "$SUMMARY"
exit $FAILED
