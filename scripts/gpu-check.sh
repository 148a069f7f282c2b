#!/usr/bin/env bash
# One script for a lent GPU machine (torch, CMake, Ninja, pybind11 and nvcc
# there; no apt, no network): builds against that machine's torch, runs the
# CUDA tests and the GPU rotary benchmark, and writes everything under $OUT.
# On a machine without a GPU it still runs: the CUDA tests skip with a reason
# and the benchmark says there is nothing to measure.
#   OUT=/tmp/out PYTHON=python3 scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
PY=$(command -v "${PYTHON:-python3}")
[[ $PY == /* ]] || PY=$PWD/$PY
BUILD=${RA_GPU_BUILD_DIR:-$PWD/build-gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

echo "== build against this machine's torch"
prefix=$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)")
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$(command -v "$PY")" \
  -DRA_BUILD_TESTS=OFF -DRA_BUILD_EXAMPLES=ON -DRA_BUILD_PYTHON=ON \
  -DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" || exit 1
cmake --build "$BUILD" -j "$(nproc)" || exit 1

# The package from the source tree plus the freshly built _C and library.
pkg="$BUILD/pkg"
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r python/rotary_attention "$pkg/"
cp "$BUILD"/python/rotary_attention/_C*.so "$pkg/rotary_attention/"
cp -P "$BUILD"/librotary_attention.so* "$pkg/rotary_attention/"
export PYTHONPATH="$pkg" RA_BUILD_DIR="$BUILD"

echo "== CUDA tests"
status=0
(cd tests/python && "$PY" -m pytest -q -p no:cacheprovider -rs test_cuda.py) || status=$?

echo "== GPU rotary benchmark"
"$PY" benchmarks/bench_rotary.py --device cuda | tee "$OUT/bench_rotary_cuda.txt" || status=$?
echo "== done (exit $status); results in $OUT"
exit $status
