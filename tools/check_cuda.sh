#!/usr/bin/env bash
# Compiles every csrc/*.cu to an object file with nvcc against the installed torch's headers, and
# the host files that register the CUDA entry points (csrc/*_common.cpp with MRCNN_WITH_CUDA),
# then checks that every mrcnn function those entry points call is defined by the CUDA objects.
# For machines with nvcc but a CPU-only torch (no GPU): it catches compile errors in the CUDA
# kernels and mismatched launcher declarations without linking or running them.
# Usage: tools/check_cuda.sh [file.cu ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NVCC=${NVCC:-nvcc}
CXX=${CXX:-c++}
inc=$($PY -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))")
pyinc=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
abi=$($PY -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(csrc/*.cu)
for f in "${files[@]}"; do
  echo "nvcc $f"
  "$NVCC" -c "$f" -o "$out/$(basename "$f").o" -std=c++20 -O1 -arch=sm_90 \
    -Itools/cuda-stubs $inc -I"$pyinc" -D_GLIBCXX_USE_CXX11_ABI="$abi" \
    -DTORCH_EXTENSION_NAME=_C -Xcompiler -w --expt-relaxed-constexpr \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__
done
for f in csrc/*_common.cpp; do
  echo "$CXX -DMRCNN_WITH_CUDA $f"
  "$CXX" -c "$f" -o "$out/$(basename "$f").o" -std=c++20 -O1 -fPIC -w $inc -I"$pyinc" \
    -D_GLIBCXX_USE_CXX11_ABI="$abi" -DTORCH_EXTENSION_NAME=_C -DMRCNN_WITH_CUDA
done
# The mrcnn functions the host objects need but do not define must come from the CUDA objects.
needed=$(nm -C --undefined-only "$out"/*_common.cpp.o | grep -o 'mrcnn::[^(]*(.*)' | sort -u || true)
defined=$(nm -C --defined-only "$out"/*.o | grep -o 'mrcnn::[^(]*(.*)' | sort -u)
missing=$(comm -23 <(echo "$needed") <(echo "$defined") | sed '/^$/d')
if [ -n "$missing" ]; then
  echo "the CUDA entry points call functions no object defines:"
  echo "$missing"
  exit 1
fi
echo "all CUDA sources compile; the CUDA entry points find their $(echo "$needed" | sed '/^$/d' | wc -l) launchers"
