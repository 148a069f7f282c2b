#!/usr/bin/env bash
# The edit-compile-test loop: rebuilds what changed in the existing build
# (after one scripts/test.sh), puts the rebuilt library, extension and Python
# sources into the venv's installed package, and runs the tests named.
#   scripts/dev.sh test_decode_attention.py          pytest arguments (tests/python)
#   scripts/dev.sh -k "decode and causal"
#   RA_CTEST='decode' scripts/dev.sh                 also ctest -R 'decode' (C++ tests)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/env.sh
if [[ ! -f $RA_BUILD_DIR/build.ninja || ! -x $RA_PY ]]; then
  echo "no build in $RA_BUILD_DIR yet: run scripts/test.sh once" >&2
  exit 1
fi
# The C++ tests need every program relinked; pytest only the library and _C.
if [[ -n ${RA_CTEST:-} ]]; then
  cmake --build "$RA_BUILD_DIR"
else
  targets=(rotary_attention rotary_attention_python)
  # (the Whisper fork's command, when the build has it: RA_BUILD_WHISPER)
  grep -q "bin/rotary-whisper:" "$RA_BUILD_DIR/build.ninja" && targets+=(rotary_whisper_command)
  cmake --build "$RA_BUILD_DIR" --target "${targets[@]}"
fi
installed=$("$RA_PY" -c "import os, rotary_attention; print(os.path.dirname(rotary_attention.__file__))")
mkdir -p "$installed/bin"
while read -r built; do
  case $built in
    "") ;;
    */rotary-whisper) cp "$built" "$installed/bin/" ;;
    *) cp "$built" "$installed/" ;;
  esac
done <"$RA_BUILD_DIR/python_package_files.txt"
cp python/rotary_attention/*.py "$installed/"
cp python/rotary_whisper_launcher.py "$(dirname "$installed")/"
if [[ -n ${RA_CTEST:-} ]]; then
  ctest --test-dir "$RA_BUILD_DIR" --output-on-failure -j2 -R "$RA_CTEST"
fi
if (($#)); then
  cd tests/python && "$RA_PY" -m pytest -q -p no:cacheprovider "$@"
fi
