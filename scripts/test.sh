#!/usr/bin/env bash
# Builds everything and runs every test (Catch2 through ctest, then pytest).
# Idempotent; installs what it needs: Debian packages, a .venv with pinned torch.
#   scripts/test.sh            all tests
#   scripts/test.sh -k parity  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/env.sh

ra_install_debian_packages
ra_make_venv
ra_configure_and_build

echo "== C++ tests (ctest)"
cpp_status=0
ctest --test-dir "$RA_BUILD_DIR" --output-on-failure -j2 || cpp_status=$?

echo "== Python package (pip install --no-build-isolation .)"
ra_pip --no-build-isolation --no-deps "$ROOT"

export RA_BUILD_DIR
echo "== Python tests (pytest)"
py_status=0
(cd "$ROOT/tests/python" && "$RA_PY" -m pytest -q -p no:cacheprovider "$@") || py_status=$?

echo "== summary: ctest exit ${cpp_status}, pytest exit ${py_status}"
[[ $cpp_status -eq 0 && $py_status -eq 0 ]]
