#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer: builds the library, the C++
# tests and the Python extension instrumented, in their own folder
# (build-sanitize/, package in build-sanitize/pkg), then runs ctest and the
# Python operator, module and weight-file tests (the fuzzer included) with the
# sanitizer runtimes preloaded. Exits non-zero on any sanitizer report.
#   scripts/sanitize.sh            everything (about 7 minutes on 2 cores)
#   scripts/sanitize.sh -k fuzz    extra arguments go to pytest
#
# LibTorch and CPython are not instrumented: ASan sees every access this
# library's code makes (to its own and to torch's heap memory), not accesses
# inside torch. Options, and why:
#   LD_PRELOAD=libasan.so:libubsan.so  python is not linked with ASan, and
#       ASan's runtime must come first in the process.
#   detect_leaks=0 for Python        CPython and torch keep allocations
#       alive until exit by design; the C++ tests run with leak checking on.
#   protect_shadow_gap=0             the CUDA driver maps memory where ASan
#       keeps its shadow gap (matters on a GPU machine only).
#   max_allocation_size_mb=4096, allocator_may_return_null=1   an allocation
#       above 4 GiB fails with torch's "can't allocate" error instead of
#       aborting, so the fuzzer can report a reader that tries it.
#   -fno-sanitize-recover=undefined  the first UBSan finding aborts the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export RA_BUILD_DIR=${RA_BUILD_DIR:-$ROOT/build-sanitize}
source scripts/env.sh

ra_install_debian_packages
ra_make_venv
ra_install_clients

flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
pkg="$RA_BUILD_DIR/pkg"
rm -rf "$pkg"
echo "== instrumented build in $RA_BUILD_DIR"
RA_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DRA_BUILD_TESTS=ON -DRA_WITH_CUDA=OFF \
  '-DCMAKE_CXX_FLAGS=$flags' '-DCMAKE_SHARED_LINKER_FLAGS=$flags' '-DCMAKE_EXE_LINKER_FLAGS=$flags'" \
  ra_pip --no-build-isolation --no-deps --target "$pkg" "$ROOT"

log=$RA_BUILD_DIR/sanitize.log
: >"$log"
common="protect_shadow_gap=0:max_allocation_size_mb=4096:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

echo "== C++ tests under ASan/UBSan (leak checking on)"
cpp_status=0
ASAN_OPTIONS="$common:detect_leaks=1" \
  ctest --test-dir "$RA_BUILD_DIR" --output-on-failure -j2 -E find_package 2>&1 | tee -a "$log" || cpp_status=$?

echo "== Python tests with the sanitizer runtimes preloaded"
py_status=0
(
  cd tests/python
  PYTHONPATH="$pkg" \
    LD_PRELOAD="$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libubsan.so)" \
    ASAN_OPTIONS="$common:detect_leaks=0" \
    "$RA_PY" -m pytest -q -p no:cacheprovider \
    test_rotary_op.py test_rotary_positions_and_layouts.py test_multi_head_attention_op.py \
    test_parity.py test_decoding.py test_kv_cache.py test_decode_attention.py test_ragged_decoding.py \
    test_threads.py test_refused_inputs.py \
    test_weight_files.py test_weight_file_fuzzing.py test_checkpoint_files.py test_children_as_modules.py \
    test_whisper_fork.py test_transcribe.py test_transcribe_command.py test_word_timestamps.py \
    test_voice_activity.py test_batched_transcription.py test_dense_linear.py \
    -k "not compile and not export" "$@"
) 2>&1 | tee -a "$log" || py_status=$?

reports=$(grep -cE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$log" || true)
echo "== summary: ctest exit $cpp_status, pytest exit $py_status, sanitizer reports $reports (log: $log)"
[[ $cpp_status -eq 0 && $py_status -eq 0 && $reports -eq 0 ]]
