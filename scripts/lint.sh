#!/usr/bin/env bash
# Formatting and lint, with pinned tools in their own venv (.venv-lint):
# clang-format for C++/CUDA, ruff check and ruff format for Python.
#   scripts/lint.sh          check; exits non-zero on any finding (CI runs this)
#   scripts/lint.sh --fix    rewrite the files instead
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG_FORMAT=clang-format==21.1.8
RUFF=ruff==0.17.6
VENV=${RA_LINT_VENV:-$PWD/.venv-lint}

if ! "$VENV/bin/python" -m pip freeze 2>/dev/null | grep -qx "$CLANG_FORMAT" ||
   ! "$VENV/bin/python" -m pip freeze 2>/dev/null | grep -qx "$RUFF"; then
  echo "== installing $CLANG_FORMAT and $RUFF into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet "$CLANG_FORMAT" "$RUFF"
fi

fix=0
[[ ${1:-} == --fix ]] && fix=1
mapfile -t cpp < <(git ls-files --cached --others --exclude-standard -- '*.h' '*.cpp' '*.cu')

status=0
if ((fix)); then
  "$VENV/bin/clang-format" -i "${cpp[@]}"
  "$VENV/bin/ruff" check --fix . || true # what it cannot fix, the check reports
  "$VENV/bin/ruff" format .
else
  echo "== clang-format (${#cpp[@]} files)"
  "$VENV/bin/clang-format" --dry-run --Werror "${cpp[@]}" || status=1
  echo "== ruff check"
  "$VENV/bin/ruff" check . || status=1
  echo "== ruff format --check"
  "$VENV/bin/ruff" format --check . || status=1
fi
exit $status
