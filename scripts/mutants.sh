#!/usr/bin/env bash
# Mutation testing (not part of CI: it rebuilds once per C++ mutant, ~20 min
# on 2 cores). Applies each deliberate bug listed in scripts/mutants.py to a
# scratch copy, rebuilds, runs the tests that should catch it, prints which
# mutants the tests killed and exits non-zero if any survives.
#   scripts/mutants.sh                      all mutants
#   scripts/mutants.sh --only "kernel:"     those whose name contains a string
# RA_MUTANTS_DIR: the scratch folder (default /tmp/rotary_attention-mutants).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/env.sh
ra_install_debian_packages
ra_make_venv
ra_install_clients
exec "$RA_PY" scripts/mutants.py --scratch "${RA_MUTANTS_DIR:-/tmp/rotary_attention-mutants}" "$@"
