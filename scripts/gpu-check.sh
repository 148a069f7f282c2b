#!/usr/bin/env bash
# One script for a lent GPU machine (torch, CMake, Ninja, pybind11 and nvcc
# there; no apt, no network): builds against that machine's torch through
# setup.py (the same configure path as scripts/test.sh and pip), runs the CUDA
# tests and the GPU rotary benchmark, and writes everything under $OUT.
# It fails when the CUDA kernel was not built, when a CUDA test fails, or when
# one skipped on a machine that has a GPU. Without a GPU the CUDA tests skip
# with a reason and the benchmark says there is nothing to measure.
#   OUT=/tmp/out PYTHON=python3 scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$PWD/gpu-check-out}
PY=$(command -v "${PYTHON:-python3}")
[[ $PY == /* ]] || PY=$PWD/$PY
export RA_BUILD_DIR=${RA_BUILD_DIR:-$PWD/build-gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

echo "== build against this machine's torch (setup.py, into $RA_BUILD_DIR)"
pkg="$RA_BUILD_DIR/pkg"
rm -rf "$pkg"
RA_CMAKE_ARGS="-DRA_WITH_CUDA=ON -DRA_BUILD_EXAMPLES=ON -DTORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}" \
  "$PY" -m pip install --no-build-isolation --no-deps --target "$pkg" "$ROOT" || exit 1
export PYTHONPATH="$pkg"

status=0
if ! "$PY" -c "import rotary_attention, sys; sys.exit(0 if rotary_attention.built_with_cuda() else 1)"; then
  echo "FAIL: the CUDA kernel was not built into the library"
  status=1
fi

echo "== CUDA tests (every test parametrised by device, CUDA cases)"
(cd tests/python && "$PY" -m pytest -q -p no:cacheprovider -rs -k cuda . | tee "$OUT/cuda-tests.txt") || status=1
# On a machine with a GPU, a skipped CUDA test is a test that did not run.
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" &&
   grep -Eq "[0-9]+ skipped" "$OUT/cuda-tests.txt"; then
  echo "FAIL: CUDA tests were skipped on a machine that has a GPU"
  status=1
fi

echo "== a CUDA AOTInductor package, run from C++ (examples/run_aoti.cpp, decode_aoti.cpp)"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  aoti="$OUT/aoti"
  if "$PY" tests/aoti/make_packages.py --out "$aoti" --device cuda; then
    "$RA_BUILD_DIR/examples/run_aoti" "$aoti/block.pt2" "$aoti/block_cases.pt" cuda || status=1
    "$RA_BUILD_DIR/examples/decode_aoti" "$aoti/decode.pt2" "$aoti/decode_cases.pt" cuda || status=1
  else
    echo "FAIL: exporting or compiling the CUDA packages"
    status=1
  fi
else
  echo "skipped: no CUDA device on this machine"
fi

echo "== GPU rotary benchmark"
"$PY" benchmarks/bench_rotary.py --device cuda | tee "$OUT/bench_rotary_cuda.txt" || status=$?
echo "== done (exit $status); results in $OUT"
exit $status
