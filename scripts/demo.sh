#!/usr/bin/env bash
# The main job, end to end: the original PyTorch MultiHeadAttention with random
# weights is saved from Python (torch.save(model.state_dict())), the C++ port
# loads them, runs the same input, decodes tokens with a KVCache and prints the
# largest difference from Python's outputs and both timings.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/env.sh
ra_install_debian_packages
ra_make_venv
ra_build_and_install -DRA_BUILD_EXAMPLES=ON

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$RA_PY" scripts/demo_prepare.py "$work"
"$RA_BUILD_DIR/examples/mha_from_python" "$work"
