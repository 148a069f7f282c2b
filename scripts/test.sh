#!/usr/bin/env bash
# Builds everything and runs every test (Catch2 through ctest, then pytest).
# Idempotent; installs what it needs: Debian packages, a .venv with pinned torch.
#   scripts/test.sh            all tests
#   scripts/test.sh -k parity  extra arguments go to pytest
#   RA_PYTEST_WORKERS=0 scripts/test.sh   pytest in one process (default: one
#                                          pytest-xdist worker per core)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/env.sh

ra_install_debian_packages
ra_make_venv
ra_install_clients
# The real weights and speech are for the tests: fetched (or found cached) while
# the library builds.
echo "== real weights and speech (scripts/real_data.py, cached), beside the build"
ra_fetch_real_data &
real_data_pid=$!
ra_build_and_install -DRA_BUILD_TESTS=ON -DRA_BUILD_EXAMPLES=ON
wait "$real_data_pid"

echo "== C++ tests (ctest)"
cpp_status=0
ctest --test-dir "$RA_BUILD_DIR" --output-on-failure -j2 || cpp_status=$?

echo "== the installed package, outside the source tree"
(cd / && "$RA_PY" -c "
import torch, rotary_attention, rotary_attention.reference
x = torch.randn(1, 3, 2, 8)
f = rotary_attention.RotaryEmbedding(8).inv_freq
assert torch.equal(rotary_attention.rotary(x, f), rotary_attention.reference.RotaryEmbedding(8).rotate_queries_or_keys(x))
print('imported from', rotary_attention.__file__, '- CPU loop', rotary_attention.cpu_kernel_capability())
")

echo "== Python tests (pytest)"
py_status=0
(cd "$ROOT/tests/python" &&
  "$RA_PY" -m pytest -q -p no:cacheprovider -n "${RA_PYTEST_WORKERS:-auto}" --dist worksteal --durations=15 "$@") || py_status=$?

echo "== summary: ctest exit ${cpp_status}, pytest exit ${py_status}"
[[ $cpp_status -eq 0 && $py_status -eq 0 ]]
